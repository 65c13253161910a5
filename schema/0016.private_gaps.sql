-- Lost windows of an account's private connection in data_gaps (issue 11): one row per account
-- and private stream (Bybit: executions, orders, positions, wallet; Venue.private_streams),
-- written by the collector when the connection is resubscribed after a drop and resolved by the
-- REST reconciliation that follows (backfilled, or unrecoverable with the reason where REST
-- cannot restore the stream, e.g. an order's intermediate states).
-- * data_gaps.account_id: the account (accounts.account_id) of a private stream's gap; NULL for
--   the venues' public streams. No foreign key: accounts is a venue migration applied after
--   schema/, and a gap outlives a deleted account.
-- * data_gaps.stream stays free text (0011): the code validates a private stream against the
--   venue's private streams (collector_daemon.core.gaps.validate).
-- depends: 0015.trades_seq_index_partial

ALTER TABLE data_gaps ADD COLUMN IF NOT EXISTS account_id bigint;
COMMENT ON COLUMN data_gaps.account_id IS
    'Account of a private stream''s gap (accounts.account_id); NULL for public streams.';
CREATE INDEX IF NOT EXISTS data_gaps_account_idx ON data_gaps (account_id, gap_start)
    WHERE account_id IS NOT NULL;
