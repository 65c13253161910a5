"""tickvault's user-facing history tools: bulk imports of exchanges' downloadable files
(:mod:`tickvault.history`) and the query API over the database and the Parquet archive
(:mod:`tickvault.query`).

The collector (``collector_daemon``) and the Dagster half (``orchestration``) record and
maintain the data; this package reads it back and loads history the exchanges publish as files.
"""
