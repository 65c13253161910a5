-- The ranked subscription set computed by the Dagster asset `instrument_universe`, and how a
-- running collector learns that it changed (without a restart).
--
-- * instruments.subscription_rank: 1 = highest open interest; NULL = not in the current set.
--   Convenient for people and dashboards; the collector reads universe_versions instead.
-- * universe_versions: one immutable row per change of the set (venue, currency). `subscribed`
--   is the whole ranked list, so one row is a complete, atomic snapshot and the table is the
--   subscription history (used by the gap audit and the coverage check: which instruments were
--   expected on a given day).
-- * Every insert into universe_versions sends NOTIFY tickvault_universe with a JSON payload
--   {"venue": ..., "currency": ..., "version": ...} (trigger below, so any writer notifies).
--   NOTIFY is delivered on commit and is not durable: a collector LISTENs for immediacy and
--   re-reads the latest version after (re)connecting its listening session, so a notification
--   missed while it was disconnected costs nothing.
-- depends: 0003.timescale_licensed

ALTER TABLE instruments ADD COLUMN IF NOT EXISTS subscription_rank integer;
COMMENT ON COLUMN instruments.subscription_rank IS
    'Rank in the current subscription set (1 = highest open interest); NULL = not subscribed.';

CREATE TABLE IF NOT EXISTS universe_versions (
    version      bigserial   PRIMARY KEY,
    venue        text        NOT NULL,
    currency     text        NOT NULL,
    created_at   timestamptz NOT NULL DEFAULT now(),
    top_n        integer,
    instruments  integer     NOT NULL,
    subscribed   text[]      NOT NULL
);
CREATE INDEX IF NOT EXISTS universe_versions_latest_idx
    ON universe_versions (venue, currency, created_at DESC, version DESC);
COMMENT ON TABLE universe_versions IS
    'Subscription set history: one row per change, written by the instrument_universe asset. Latest row per (venue, currency) = what the collector subscribes.';
COMMENT ON COLUMN universe_versions.top_n IS 'N of "top N by open interest" used; NULL = every live instrument.';
COMMENT ON COLUMN universe_versions.instruments IS 'Live instruments returned by the venue at that refresh.';
COMMENT ON COLUMN universe_versions.subscribed IS 'Instrument names to subscribe, highest open interest first.';

CREATE OR REPLACE FUNCTION tickvault_notify_universe() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('tickvault_universe',
                      json_build_object('venue', NEW.venue, 'currency', NEW.currency,
                                        'version', NEW.version)::text);
    RETURN NEW;
END
$$;

DROP TRIGGER IF EXISTS universe_versions_notify ON universe_versions;
CREATE TRIGGER universe_versions_notify AFTER INSERT ON universe_versions
    FOR EACH ROW EXECUTE FUNCTION tickvault_notify_universe();
