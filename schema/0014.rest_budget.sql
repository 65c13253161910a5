-- The shared REST request budget (collector_daemon/core/rest_budget.py, issue 11): one token
-- bucket per budget key (an exchange and the IP it sees, e.g. 'bybit api.bybit.com'), taken by
-- every process calling that exchange from that IP (the collector, its workers, Dagster's
-- backfill and reconciliation runs) with one atomic INSERT ... ON CONFLICT DO UPDATE per request,
-- on the database's clock. UNLOGGED: the state is worth seconds and is rebuilt at the first
-- request after a crash (a full bucket), so it costs no WAL.
-- depends: 0012.history_candles

CREATE UNLOGGED TABLE IF NOT EXISTS rest_budget (
    budget_key  text             PRIMARY KEY,
    tokens      double precision NOT NULL,
    updated_at  timestamptz      NOT NULL
);
COMMENT ON TABLE rest_budget IS
    'Token buckets of REST requests shared by the processes calling one exchange from one IP (collector_daemon/core/rest_budget.py).';
COMMENT ON COLUMN rest_budget.tokens IS
    'Tokens left at updated_at; negative = requests reserved ahead (debt paid at the refill rate).';
COMMENT ON COLUMN rest_budget.updated_at IS
    'When tokens was computed (database clock); in the future after a ban: nobody starts a request before it.';
