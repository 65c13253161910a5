-- Kraken (collector_daemon/venues/kraken): its WS v2 `status` channel announces the system status
-- (online, maintenance, cancel_only, post_only); the connection records each change as a
-- connection event `status` with the status in `reason` (docs/venues.md, Kraken).
-- depends: 0011.venue_streams

ALTER TABLE connection_events DROP CONSTRAINT IF EXISTS connection_events_event_check;
ALTER TABLE connection_events ADD CONSTRAINT connection_events_event_check
    CHECK (event IN ('connect', 'subscribed', 'unsubscribed', 'disconnect', 'status'));
COMMENT ON COLUMN connection_events.reason IS
    'Why (disconnect), the error of a refused subscription, or the venue''s announced status (status).';

-- Where a resumable REST history run stands (tickvault history kraken-trades): the cursor of the
-- next page, stored in the transaction that commits the page's rows, so a crash resumes there
-- and a re-run of a finished range is a no-op.
CREATE TABLE IF NOT EXISTS sync_state (
    venue           text        NOT NULL,
    instrument_name text        NOT NULL,
    stream          text        NOT NULL,
    range_start     text        NOT NULL,
    cursor          text        NOT NULL,
    pages           bigint      NOT NULL DEFAULT 0,
    rows_inserted   bigint      NOT NULL DEFAULT 0,
    rows_rejected   bigint      NOT NULL DEFAULT 0,
    done            boolean     NOT NULL DEFAULT false,
    updated_at      timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (venue, instrument_name, stream)
);
COMMENT ON TABLE sync_state IS
    'Cursor of a resumable REST history run per venue, instrument and stream (Kraken Trades: the since cursor in ns).';
COMMENT ON COLUMN sync_state.range_start IS 'Start of the synced range (venue cursor units; Kraken: ns since the epoch).';
COMMENT ON COLUMN sync_state.cursor IS 'Where the next page starts: every row from range_start up to here is stored.';
COMMENT ON COLUMN sync_state.done IS 'The last run reached the newest rows (or its end bound).';
