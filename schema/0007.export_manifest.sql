-- Catalogue of the nightly Parquet exports (orchestration/lib/export.py): one row per exported
-- partition (venue, table, UTC day). The object store holds the same facts in the partition's
-- _manifest.json; export_id ties the two together. Retention (orchestration/lib/retention.py)
-- drops a day from the database only when every venue's row here is verified.
-- depends: 0006.candles

CREATE TABLE IF NOT EXISTS export_manifest (
    venue           text        NOT NULL,
    table_name      text        NOT NULL,
    day             date        NOT NULL,
    export_id       text        NOT NULL,
    schema_version  integer     NOT NULL,
    source_rows     bigint      NOT NULL,
    rows            bigint      NOT NULL,
    bytes           bigint      NOT NULL,
    object_keys     text[]      NOT NULL,
    object_bytes    bigint[]    NOT NULL,
    object_sha256   text[]      NOT NULL,
    object_etags    text[]      NOT NULL,
    manifest_key    text        NOT NULL,
    storage_url     text        NOT NULL,
    exported_at     timestamptz NOT NULL,
    verified_at     timestamptz,
    PRIMARY KEY (table_name, day, venue),
    CONSTRAINT export_manifest_rows_check CHECK (rows = source_rows),
    CONSTRAINT export_manifest_objects_check CHECK (
        cardinality(object_keys) = cardinality(object_bytes)
        AND cardinality(object_keys) = cardinality(object_sha256)
        AND cardinality(object_keys) = cardinality(object_etags))
);
COMMENT ON TABLE export_manifest IS 'One row per exported Parquet partition (venue, table, UTC day); written by the nightly export, verified_at set by its checks.';
COMMENT ON COLUMN export_manifest.export_id IS 'Random id of the export run; equals export_id in the partition''s _manifest.json while that export is in force.';
COMMENT ON COLUMN export_manifest.schema_version IS 'Export format version (tickvault.schema_version in each file''s key-value metadata).';
COMMENT ON COLUMN export_manifest.source_rows IS 'Rows of the day in the database, counted in the snapshot the export read.';
COMMENT ON COLUMN export_manifest.rows IS 'Rows written to the Parquet files (always equal to source_rows).';
COMMENT ON COLUMN export_manifest.bytes IS 'Total size of the Parquet objects, bytes.';
COMMENT ON COLUMN export_manifest.object_keys IS 'Object keys of the part-<n>.parquet files, in row order (relative to the bucket or local directory).';
COMMENT ON COLUMN export_manifest.object_sha256 IS 'sha256 (hex) of each object, same order as object_keys.';
COMMENT ON COLUMN export_manifest.object_etags IS 'ETag the server returned for each object (NULL elements for a local directory).';
COMMENT ON COLUMN export_manifest.storage_url IS 's3://<bucket> or file:///<dir> the objects were written to.';
COMMENT ON COLUMN export_manifest.verified_at IS 'When every check last passed (row counts, objects, schema, sampled rows); NULL = not verified, retention keeps the day.';
