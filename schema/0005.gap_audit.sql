-- The daily gap audit (Dagster asset `trade_gaps`) owns the data_gaps rows it writes per UTC day:
-- audit_day says which partition found them, so re-materialising a day replaces exactly that
-- day's open audit findings (rows with detected_by = 'audit' AND audit_day = <day> AND
-- status = 'open'); gaps detected by the collector (audit_day NULL) and resolved findings
-- (backfilled / unrecoverable) are never deleted by the audit.
-- depends: 0004.universe

ALTER TABLE data_gaps ADD COLUMN IF NOT EXISTS audit_day date;
COMMENT ON COLUMN data_gaps.audit_day IS
    'UTC day whose audit found this gap (detected_by = audit); NULL for gaps detected by the collector.';
CREATE INDEX IF NOT EXISTS data_gaps_audit_day_idx ON data_gaps (audit_day, venue) WHERE audit_day IS NOT NULL;
CREATE INDEX IF NOT EXISTS data_gaps_open_idx ON data_gaps (venue, stream, gap_end) WHERE status = 'open';
