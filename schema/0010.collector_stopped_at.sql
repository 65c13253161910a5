-- collector_status.stopped_at: set by a collector's clean shutdown (its last heartbeat), NULL
-- while it runs. A row whose heartbeat is old and stopped_at NULL is a collector that died
-- (SIGKILL, crash, host down) or lost its database.
-- depends: 0009.universe_kinds_and_comments
ALTER TABLE collector_status ADD COLUMN IF NOT EXISTS stopped_at timestamptz;
COMMENT ON COLUMN collector_status.stopped_at IS
    'When the collector shut down cleanly (UTC); NULL while running, or when it died without shutting down (heartbeat_at then stops advancing).';
COMMENT ON TABLE collector_status IS
    'One row per collector, refreshed every few seconds (heartbeat_at) while it runs; stopped_at set at a clean shutdown.';
