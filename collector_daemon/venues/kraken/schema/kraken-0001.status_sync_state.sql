-- Kraken (collector_daemon/venues/kraken): its WS v2 `status` channel announces the system status
-- (online, maintenance, cancel_only, post_only); the connection records each change as a
-- connection event `status` with the status in `reason` (docs/venues.md, Kraken).
-- (sync_state, created here before, is venue-neutral: schema/0017.venue_neutral_tables.)
-- depends: 0011.venue_streams 0017.venue_neutral_tables

ALTER TABLE connection_events DROP CONSTRAINT IF EXISTS connection_events_event_check;
ALTER TABLE connection_events ADD CONSTRAINT connection_events_event_check
    CHECK (event IN ('connect', 'subscribed', 'unsubscribed', 'disconnect', 'status'));
COMMENT ON COLUMN connection_events.reason IS
    'Why (disconnect), the error of a refused subscription, or the venue''s announced status (status).';
