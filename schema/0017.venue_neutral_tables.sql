-- Venue-neutral tables whose DDL used to live in venue migrations, now in the core schema:
-- * sync_state (was kraken-0001.status_sync_state): where a resumable REST history run stands
--   (tickvault history kraken-trades): the cursor of the next page, stored in the transaction
--   that commits the page's rows, so a crash resumes there and a re-run of a finished range is
--   a no-op.
-- * accounts (was bybit-0002.private) with its triggers accounts_touch (updated_at, was
--   bybit-0002) and accounts_notify (NOTIFY tickvault_accounts so collectors follow the table
--   without a restart, was bybit-0003.private_streams): the trading accounts the collector
--   serves, any venue. Secrets never live here: secret_ref says where the secret is read from,
--   env:VARIABLE or file:/path (a Docker or Kubernetes secrets mount).
-- Idempotent (IF NOT EXISTS, CREATE OR REPLACE, DROP TRIGGER IF EXISTS): a database that applied
-- the old venue migrations keeps its tables and rows; kraken-0001, bybit-0002 and bybit-0003
-- now depend on this migration.
-- depends: 0015.trades_seq_index_partial

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

CREATE TABLE IF NOT EXISTS accounts (
    account_id  bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    label       text        NOT NULL,
    venue       text        NOT NULL,
    key_id      text        NOT NULL,
    secret_ref  text        NOT NULL,
    run_tag     text,
    enabled     boolean     NOT NULL DEFAULT true,
    created_at  timestamptz NOT NULL DEFAULT now(),
    updated_at  timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT accounts_secret_ref_check CHECK (secret_ref ~ '^(env|file):.+'),
    CONSTRAINT accounts_venue_key_unique UNIQUE (venue, key_id),
    CONSTRAINT accounts_label_unique UNIQUE (venue, label)
);
COMMENT ON TABLE accounts IS 'Trading accounts whose private streams are recorded; the secret itself is never stored here.';
COMMENT ON COLUMN accounts.key_id IS 'The API key (public part).';
COMMENT ON COLUMN accounts.secret_ref IS 'Where the API secret is read from: env:VARIABLE or file:/path.';
COMMENT ON COLUMN accounts.run_tag IS 'Optional run/strategy tag stored with every private row of the account.';

CREATE OR REPLACE FUNCTION tickvault_touch_updated_at() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    NEW.updated_at := now();
    RETURN NEW;
END
$$;
DROP TRIGGER IF EXISTS accounts_touch ON accounts;
CREATE TRIGGER accounts_touch BEFORE UPDATE ON accounts
    FOR EACH ROW EXECUTE FUNCTION tickvault_touch_updated_at();

CREATE OR REPLACE FUNCTION tickvault_accounts_notify() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('tickvault_accounts', COALESCE(NEW.venue, OLD.venue));
    RETURN NULL;
END
$$;
DROP TRIGGER IF EXISTS accounts_notify ON accounts;
CREATE TRIGGER accounts_notify AFTER INSERT OR UPDATE OR DELETE ON accounts
    FOR EACH ROW EXECUTE FUNCTION tickvault_accounts_notify();
