-- Bybit private streams besides execution (collector_daemon/venues/bybit/private.py). (The NOTIFY
-- that lets collectors follow the accounts table, created here before: schema/0017.venue_neutral_tables.)
-- * bybit_orders: append-only history of `order` updates (and /v5/order/history). Bybit may send
--   the same `Filled` update twice; an update is identified by (account, orderId, updatedTime,
--   orderStatus, cumExecQty): a repeat carries all five unchanged, while any real change moves
--   updatedTime, the status or the filled quantity. Rows repeating that key are skipped.
-- * bybit_positions: one row per position snapshot (stream event or REST /v5/position/list),
--   keyed by (account, category, symbol, positionIdx, updatedTime): the REST snapshot of a state
--   the stream already delivered is the same row.
-- * bybit_wallet: one row per coin per wallet event (stream) or REST /v5/account/wallet-balance
--   snapshot; the account-level totals repeat on each coin's row. exchange_ts is the message's
--   creationTime (stream) or the answer's time (REST).
-- Values numeric (exact decimal strings, see bybit-0001); Bybit's "" is NULL.
-- depends: bybit-0002.private 0017.venue_neutral_tables

CREATE TABLE IF NOT EXISTS bybit_orders (
    venue              text        NOT NULL,
    account_id         bigint      NOT NULL REFERENCES accounts (account_id),
    run_tag            text,
    category           text        NOT NULL,
    instrument_name    text        NOT NULL,
    order_id           text        NOT NULL,
    exchange_ts        timestamptz NOT NULL,
    receive_ts         timestamptz NOT NULL,
    created_ts         timestamptz,
    order_status       text        NOT NULL,
    side               text        NOT NULL,
    cum_exec_qty       numeric     NOT NULL,
    price              numeric,
    qty                numeric,
    avg_price          numeric,
    leaves_qty         numeric,
    leaves_value       numeric,
    cum_exec_value     numeric,
    cum_exec_fee       numeric,
    order_iv           numeric,
    trigger_price      numeric,
    take_profit        numeric,
    stop_loss          numeric,
    last_price_on_created numeric,
    order_link_id      text,
    order_type         text,
    time_in_force      text,
    cancel_type        text,
    reject_reason      text,
    stop_order_type    text,
    block_trade_id     text,
    fee_currency       text,
    create_type        text,
    reduce_only        boolean,
    position_idx       integer,
    other              jsonb,
    source             text        NOT NULL,
    CONSTRAINT bybit_orders_source_check CHECK (source IN ('ws', 'rest')),
    CONSTRAINT bybit_orders_side_check CHECK (side IN ('buy', 'sell')),
    CONSTRAINT bybit_orders_pkey PRIMARY KEY (exchange_ts, account_id, order_id, order_status, cum_exec_qty)
);
COMMENT ON TABLE bybit_orders IS 'Bybit private order stream (and /v5/order/history): every order update once per account.';
COMMENT ON COLUMN bybit_orders.exchange_ts IS 'updatedTime (ms).';
COMMENT ON COLUMN bybit_orders.created_ts IS 'createdTime (ms).';

CREATE TABLE IF NOT EXISTS bybit_positions (
    venue              text        NOT NULL,
    account_id         bigint      NOT NULL REFERENCES accounts (account_id),
    run_tag            text,
    category           text        NOT NULL,
    instrument_name    text        NOT NULL,
    position_idx       integer     NOT NULL,
    exchange_ts        timestamptz NOT NULL,
    receive_ts         timestamptz NOT NULL,
    created_ts         timestamptz,
    seq                bigint,
    side               text,
    size               numeric,
    entry_price        numeric,
    mark_price         numeric,
    leverage           numeric,
    position_value     numeric,
    position_balance   numeric,
    position_im        numeric,
    position_mm        numeric,
    liq_price          numeric,
    bust_price         numeric,
    take_profit        numeric,
    stop_loss          numeric,
    trailing_stop      numeric,
    unrealised_pnl     numeric,
    cur_realised_pnl   numeric,
    cum_realised_pnl   numeric,
    delta              numeric,
    gamma              numeric,
    vega               numeric,
    theta              numeric,
    position_status    text,
    tpsl_mode          text,
    other              jsonb,
    source             text        NOT NULL,
    CONSTRAINT bybit_positions_source_check CHECK (source IN ('ws', 'rest')),
    CONSTRAINT bybit_positions_pkey PRIMARY KEY (exchange_ts, account_id, category, instrument_name, position_idx)
);
COMMENT ON TABLE bybit_positions IS 'Bybit private position stream and /v5/position/list snapshots, per account.';
COMMENT ON COLUMN bybit_positions.exchange_ts IS 'updatedTime (ms).';
COMMENT ON COLUMN bybit_positions.side IS 'buy, sell, or NULL for an empty position (Bybit sends "").';
COMMENT ON COLUMN bybit_positions.entry_price IS 'entryPrice (stream) / avgPrice (REST).';

CREATE TABLE IF NOT EXISTS bybit_wallet (
    venue                    text        NOT NULL,
    account_id               bigint      NOT NULL REFERENCES accounts (account_id),
    run_tag                  text,
    account_type             text        NOT NULL,
    coin                     text        NOT NULL,
    exchange_ts              timestamptz NOT NULL,
    receive_ts               timestamptz NOT NULL,
    equity                   numeric,
    wallet_balance           numeric,
    available_to_withdraw    numeric,
    available_to_borrow      numeric,
    borrow_amount            numeric,
    accrued_interest         numeric,
    total_order_im           numeric,
    total_position_im        numeric,
    total_position_mm        numeric,
    unrealised_pnl           numeric,
    cum_realised_pnl         numeric,
    usd_value                numeric,
    locked                   numeric,
    spot_borrow              numeric,
    total_equity             numeric,
    total_wallet_balance     numeric,
    total_margin_balance     numeric,
    total_available_balance  numeric,
    total_initial_margin     numeric,
    total_maintenance_margin numeric,
    account_im_rate          numeric,
    account_mm_rate          numeric,
    account_ltv              numeric,
    other                    jsonb,
    source                   text        NOT NULL,
    CONSTRAINT bybit_wallet_source_check CHECK (source IN ('ws', 'rest')),
    CONSTRAINT bybit_wallet_pkey PRIMARY KEY (exchange_ts, account_id, account_type, coin)
);
COMMENT ON TABLE bybit_wallet IS 'Bybit private wallet stream and /v5/account/wallet-balance snapshots: one row per coin per event, account totals repeated.';
COMMENT ON COLUMN bybit_wallet.account_type IS 'accountType (UNIFIED, CONTRACT, ...); empty when the message does not say.';
COMMENT ON COLUMN bybit_wallet.exchange_ts IS 'creationTime of the stream message, time of the REST answer (ms).';

DO $$
BEGIN
    IF EXISTS (SELECT 1 FROM pg_extension WHERE extname = 'timescaledb') THEN
        PERFORM create_hypertable('bybit_orders', by_range('exchange_ts', INTERVAL '7 days'),
                                  if_not_exists => true, migrate_data => true);
        PERFORM create_hypertable('bybit_positions', by_range('exchange_ts', INTERVAL '7 days'),
                                  if_not_exists => true, migrate_data => true);
        PERFORM create_hypertable('bybit_wallet', by_range('exchange_ts', INTERVAL '7 days'),
                                  if_not_exists => true, migrate_data => true);
    END IF;
END
$$;
