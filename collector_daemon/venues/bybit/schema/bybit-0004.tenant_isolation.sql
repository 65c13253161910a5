-- Tenant isolation of the private tables by row-level security.
-- * account_readers: which database role may read which account's rows (a role per account or
--   per tenant; `tickvault accounts grant` fills it and grants SELECT on the private tables).
-- * Every private table has the SELECT policy tickvault_tenant_read: a role sees the rows of the
--   accounts it is a reader of, nothing else. The collector's role owns the tables and is not
--   subject to the policies (no FORCE ROW LEVEL SECURITY): it writes every account's rows.
-- * account_readers is readable by every role, each seeing only its own grants (its own policy);
--   tenants get no access to accounts.
-- depends: bybit-0003.private_streams

CREATE TABLE IF NOT EXISTS account_readers (
    role_name   text   NOT NULL,
    account_id  bigint NOT NULL REFERENCES accounts (account_id) ON DELETE CASCADE,
    CONSTRAINT account_readers_pkey PRIMARY KEY (role_name, account_id)
);
COMMENT ON TABLE account_readers IS 'Database roles allowed to read the private rows of an account (row-level security on the private tables).';

ALTER TABLE account_readers ENABLE ROW LEVEL SECURITY;
DROP POLICY IF EXISTS tickvault_own_grants ON account_readers;
CREATE POLICY tickvault_own_grants ON account_readers FOR SELECT USING (role_name = current_user);
GRANT SELECT ON account_readers TO PUBLIC;

DO $$
DECLARE
    t text;
BEGIN
    FOREACH t IN ARRAY ARRAY['bybit_executions', 'bybit_orders', 'bybit_positions', 'bybit_wallet'] LOOP
        EXECUTE format('ALTER TABLE %I ENABLE ROW LEVEL SECURITY', t);
        EXECUTE format('DROP POLICY IF EXISTS tickvault_tenant_read ON %I', t);
        EXECUTE format('CREATE POLICY tickvault_tenant_read ON %I FOR SELECT '
                       'USING (account_id IN (SELECT r.account_id FROM account_readers r '
                       'WHERE r.role_name = current_user))', t);
    END LOOP;
END
$$;
