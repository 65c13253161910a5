-- trades_seq_idx (venue, instrument_name, trade_seq) serves the sequence-gap queries, and every
-- one of them reads only rows that have a sequence number (trade_seq IS NOT NULL, or a range on
-- trade_seq, which implies it). Kraken's time-and-sales files and Bybit's trades carry none, so
-- the index now leaves those rows out: one index insert less per such row (PostgreSQL CPU per
-- row of `tickvault import kraken-trades` in docs/benchmarks.md) and a smaller index. On a
-- hypertable the new definition is applied to every chunk.
-- depends: 0012.history_candles
DROP INDEX IF EXISTS trades_seq_idx;
CREATE INDEX IF NOT EXISTS trades_seq_idx ON trades (venue, instrument_name, trade_seq)
    WHERE trade_seq IS NOT NULL;
