-- The fake venue's own tables (tests only): a per-instrument tick stream and a trade-like stream.
-- depends: 0011.venue_streams
CREATE TABLE IF NOT EXISTS fakex_ticks (
    venue           text             NOT NULL,
    instrument_name text             NOT NULL,
    exchange_ts     timestamptz      NOT NULL,
    receive_ts      timestamptz      NOT NULL,
    price           double precision NOT NULL,
    CONSTRAINT fakex_ticks_natural_key UNIQUE (exchange_ts, venue, instrument_name)
);
CREATE TABLE IF NOT EXISTS fakex_prints (
    venue           text             NOT NULL,
    instrument_name text             NOT NULL,
    trade_id        text             NOT NULL,
    exchange_ts     timestamptz      NOT NULL,
    receive_ts      timestamptz      NOT NULL,
    price           double precision NOT NULL,
    amount          double precision NOT NULL,
    source          text             NOT NULL,
    CONSTRAINT fakex_prints_natural_key UNIQUE (exchange_ts, venue, instrument_name, trade_id)
);
