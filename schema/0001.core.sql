-- tickvault core schema, version 1.
-- Applied by `tickvault migrate` (yoyo-migrations; ledger table _yoyo_migration).
-- Runs on TimescaleDB (quotes and trades become hypertables with 1-day chunks on exchange_ts)
-- and on plain PostgreSQL >= 13 (regular tables; see 0002 for the hypertable step).
--
-- Units: every price, amount and greek is stored exactly as the exchange sent it (IEEE double,
-- which is what the venues serialise; no rounding). Timestamps are timestamptz (UTC):
-- exchange_ts has the venue's precision (Deribit: ms), receive_ts is our wall clock in µs.

CREATE TABLE IF NOT EXISTS instruments (
    venue                text        NOT NULL,
    instrument_name      text        NOT NULL,
    kind                 text        NOT NULL,
    base_currency        text,
    quote_currency       text,
    settlement_currency  text,
    option_type          text,
    strike               double precision,
    expiration_timestamp timestamptz,
    tick_size            double precision,
    contract_size        double precision,
    min_trade_amount     double precision,
    is_active            boolean     NOT NULL DEFAULT true,
    creation_timestamp   timestamptz,
    open_interest        double precision,
    updated_at           timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (venue, instrument_name)
);
COMMENT ON TABLE instruments IS 'Instrument reference data per venue (Deribit public/get_instruments + get_book_summary_by_currency).';
COMMENT ON COLUMN instruments.strike IS 'Option strike in quote currency (USD for ETH/BTC inverse options).';
COMMENT ON COLUMN instruments.open_interest IS 'Open interest from the last book summary; options: base coin (ETH), futures: USD.';
COMMENT ON COLUMN instruments.contract_size IS 'Contract size in base currency (options: 1 = one ETH).';

CREATE TABLE IF NOT EXISTS quotes (
    venue             text        NOT NULL,
    instrument_name   text        NOT NULL,
    exchange_ts       timestamptz NOT NULL,
    receive_ts        timestamptz NOT NULL,
    best_bid_price    double precision,
    best_bid_amount   double precision,
    best_ask_price    double precision,
    best_ask_amount   double precision,
    mark_price        double precision,
    mark_iv           double precision,
    bid_iv            double precision,
    ask_iv            double precision,
    underlying_price  double precision,
    underlying_index  text,
    index_price       double precision,
    open_interest     double precision,
    last_price        double precision,
    delta             double precision,
    gamma             double precision,
    vega              double precision,
    theta             double precision,
    rho               double precision,
    interest_rate     double precision,
    state             text,
    -- Led by the time column: appends hit the right edge of one index (1.4-1.8x faster ingest,
    -- ../shared/reference/ingest-measurements.md section 3), and TimescaleDB requires it.
    CONSTRAINT quotes_natural_key UNIQUE (exchange_ts, instrument_name, venue)
);
COMMENT ON TABLE quotes IS 'Top of book, mark, IVs and greeks per ticker notification (Deribit ticker.{instrument}.100ms).';
COMMENT ON COLUMN quotes.exchange_ts IS 'Exchange timestamp of the ticker (Deribit: ms since epoch, UTC).';
COMMENT ON COLUMN quotes.receive_ts IS 'Local wall-clock receive time of the frame, µs precision, UTC.';
COMMENT ON COLUMN quotes.best_bid_price IS 'Best bid; options: in base currency (ETH per contract). NULL when the book has no bid.';
COMMENT ON COLUMN quotes.best_bid_amount IS 'Size at best bid; options: base currency (ETH).';
COMMENT ON COLUMN quotes.mark_iv IS 'Mark implied volatility in percent, as Deribit sends it (78.74 = 78.74 %).';
COMMENT ON COLUMN quotes.bid_iv IS 'Implied volatility of the best bid, percent.';
COMMENT ON COLUMN quotes.ask_iv IS 'Implied volatility of the best ask, percent.';
COMMENT ON COLUMN quotes.underlying_price IS 'Underlying price used for IV (USD).';
COMMENT ON COLUMN quotes.underlying_index IS 'Name of the underlying future, or index_price.';
COMMENT ON COLUMN quotes.index_price IS 'Index price (USD).';
COMMENT ON COLUMN quotes.open_interest IS 'Open interest; options: base currency (ETH).';
COMMENT ON COLUMN quotes.vega IS 'Greeks as Deribit sends them (delta unitless, gamma/vega/theta/rho per Deribit ticker docs).';

CREATE TABLE IF NOT EXISTS trades (
    venue            text        NOT NULL,
    instrument_name  text        NOT NULL,
    trade_id         text        NOT NULL,
    trade_seq        bigint,
    exchange_ts      timestamptz NOT NULL,
    receive_ts       timestamptz NOT NULL,
    price            double precision NOT NULL,
    amount           double precision NOT NULL,
    direction        text        NOT NULL,
    iv               double precision,
    mark_price       double precision,
    index_price      double precision,
    tick_direction   smallint,
    liquidation      text,
    block_trade_id   text,
    source           text        NOT NULL,
    CONSTRAINT trades_source_check CHECK (source IN ('ws', 'rest')),
    CONSTRAINT trades_direction_check CHECK (direction IN ('buy', 'sell')),
    -- trade_id is unique per currency on Deribit; with the instrument it is unique per venue.
    CONSTRAINT trades_natural_key UNIQUE (exchange_ts, venue, instrument_name, trade_id)
);
CREATE INDEX IF NOT EXISTS trades_seq_idx ON trades (venue, instrument_name, trade_seq);
COMMENT ON TABLE trades IS 'Every public trade, exactly once (Deribit trades.option.{currency}.100ms and REST recovery).';
COMMENT ON COLUMN trades.trade_seq IS 'Sequence number of the trade within the instrument (Deribit).';
COMMENT ON COLUMN trades.price IS 'Trade price; options: base currency (ETH per contract).';
COMMENT ON COLUMN trades.amount IS 'Trade size; options: base currency (ETH); futures: USD.';
COMMENT ON COLUMN trades.direction IS 'Taker side: buy or sell.';
COMMENT ON COLUMN trades.iv IS 'Implied volatility of the trade in percent (options only).';
COMMENT ON COLUMN trades.tick_direction IS '0 plus tick, 1 zero-plus tick, 2 minus tick, 3 zero-minus tick.';
COMMENT ON COLUMN trades.source IS 'ws = live stream, rest = recovered by REST.';

CREATE TABLE IF NOT EXISTS connection_events (
    event_id          bigserial   PRIMARY KEY,
    venue             text        NOT NULL,
    connection_id     text        NOT NULL,
    event             text        NOT NULL,
    event_ts          timestamptz NOT NULL,
    channels          text[],
    refused_channels  text[],
    reason            text,
    window_start      timestamptz,
    window_end        timestamptz,
    CONSTRAINT connection_events_event_check
        CHECK (event IN ('connect', 'subscribed', 'unsubscribed', 'disconnect'))
);
CREATE INDEX IF NOT EXISTS connection_events_ts_idx ON connection_events (venue, event_ts);
COMMENT ON TABLE connection_events IS 'WebSocket lifecycle per connection: connect, subscribe acks (confirmed and refused channels), disconnects.';
COMMENT ON COLUMN connection_events.window_start IS 'On the first subscribed event after a reconnect: last frame received before the disconnect.';
COMMENT ON COLUMN connection_events.window_end IS 'On the first subscribed event after a reconnect: when the resubscription was confirmed. Data in between was not captured.';

CREATE TABLE IF NOT EXISTS data_gaps (
    gap_id          bigserial   PRIMARY KEY,
    venue           text        NOT NULL,
    stream          text        NOT NULL,
    instrument_name text        NOT NULL DEFAULT '*',
    gap_start       timestamptz NOT NULL,
    gap_end         timestamptz NOT NULL,
    seq_from        bigint,
    seq_to          bigint,
    detected_by     text        NOT NULL,
    status          text        NOT NULL DEFAULT 'open',
    reason          text,
    detected_at     timestamptz NOT NULL DEFAULT now(),
    resolved_at     timestamptz,
    CONSTRAINT data_gaps_status_check CHECK (status IN ('open', 'backfilled', 'unrecoverable')),
    CONSTRAINT data_gaps_stream_check CHECK (stream IN ('quotes', 'trades'))
);
CREATE INDEX IF NOT EXISTS data_gaps_window_idx ON data_gaps (venue, gap_start);
COMMENT ON TABLE data_gaps IS 'Windows we could not capture: instrument_name * = every instrument of the stream. seq_from/seq_to: missing trade_seq range, inclusive.';

CREATE TABLE IF NOT EXISTS rejected_messages (
    rejected_id    bigserial   PRIMARY KEY,
    received_at    timestamptz NOT NULL,
    venue          text        NOT NULL,
    connection_id  text        NOT NULL,
    reason         text        NOT NULL,
    raw            text        NOT NULL,
    raw_bytes      integer     NOT NULL
);
CREATE INDEX IF NOT EXISTS rejected_messages_ts_idx ON rejected_messages (received_at);
COMMENT ON TABLE rejected_messages IS 'Frames that failed to decode or validate, kept for inspection. raw is capped (see raw_bytes for the full size).';

CREATE TABLE IF NOT EXISTS collector_status (
    collector_id  text        PRIMARY KEY,
    venue         text        NOT NULL,
    hostname      text        NOT NULL,
    pid           integer     NOT NULL,
    version       text        NOT NULL,
    started_at    timestamptz NOT NULL,
    heartbeat_at  timestamptz NOT NULL,
    stats         jsonb       NOT NULL DEFAULT '{}'::jsonb
);
COMMENT ON TABLE collector_status IS 'One row per running collector, refreshed every few seconds (heartbeat_at).';
