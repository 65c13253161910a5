-- * universe_versions.kinds: the instrument kinds a subscription set covers, so a collector
--   configured with other kinds (or a larger top N) knows the set does not serve it.
-- * Column comments the first migration missed.
-- depends: 0008.drop_redundant_time_index
ALTER TABLE universe_versions ADD COLUMN IF NOT EXISTS kinds text[];
COMMENT ON COLUMN universe_versions.kinds IS
    'Instrument kinds the set was chosen from (e.g. {option} or {option,future}); NULL = written before this column existed (options).';

COMMENT ON COLUMN quotes.best_ask_amount IS 'Size at best ask; options: base currency (ETH).';
COMMENT ON COLUMN trades.exchange_ts IS 'Exchange timestamp of the trade (Deribit: ms since epoch, UTC).';
COMMENT ON COLUMN trades.receive_ts IS 'Local wall-clock receive time (WebSocket frame or REST response), µs precision, UTC.';
COMMENT ON COLUMN rejected_messages.raw_bytes IS 'Full size of the rejected frame in bytes (UTF-8), before raw was capped.';
