#!/usr/bin/env bash
# /docker-entrypoint-initdb.d script (official postgres/timescaledb images and the local test
# image alike): the `dagster` database for Dagster's run/event storage, owned by POSTGRES_USER,
# on the same server as the tickvault database. Runs once, when the data volume is created.
set -euo pipefail
psql -v ON_ERROR_STOP=1 -q --username "$POSTGRES_USER" --dbname "$POSTGRES_DB" \
  -c "CREATE DATABASE dagster OWNER \"$POSTGRES_USER\""
