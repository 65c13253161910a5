#!/usr/bin/env bash
# Entrypoint of the local TimescaleDB image (deploy/docker/timescaledb.Dockerfile), the subset of
# the official postgres/timescaledb images' docker-entrypoint.sh that the stack relies on:
# on an empty PGDATA, initdb with POSTGRES_USER (default postgres) and POSTGRES_PASSWORD (or
# POSTGRES_PASSWORD_FILE; required), scram-sha-256 for TCP, create POSTGRES_DB and the
# timescaledb extension in it, run /docker-entrypoint-initdb.d/*.sh|*.sql; then exec the
# command ("postgres -c ...") as the postgres user. Variables and files are the official ones,
# so the compose file is the same for both images.
set -euo pipefail

if [ "${1:0:1}" = "-" ]; then set -- postgres "$@"; fi
if [ "$1" != "postgres" ]; then exec "$@"; fi

if [ "$(id -u)" = 0 ]; then   # own the data directory, then drop to the postgres user
  mkdir -p "$PGDATA" /var/run/postgresql
  chown postgres:postgres "$PGDATA" /var/run/postgresql
  chmod 700 "$PGDATA"
  exec setpriv --reuid=postgres --regid=postgres --init-groups "$BASH_SOURCE" "$@"
fi

if [ ! -s "$PGDATA/PG_VERSION" ]; then
  if [ -n "${POSTGRES_PASSWORD_FILE:-}" ]; then POSTGRES_PASSWORD=$(<"$POSTGRES_PASSWORD_FILE"); fi
  : "${POSTGRES_PASSWORD:?POSTGRES_PASSWORD (or POSTGRES_PASSWORD_FILE) is required}"
  user=${POSTGRES_USER:-postgres} db=${POSTGRES_DB:-${POSTGRES_USER:-postgres}}
  initdb --username="$user" --pwfile=<(printf '%s\n' "$POSTGRES_PASSWORD") \
    --auth-local=trust --auth-host=scram-sha-256 --encoding=UTF8 -D "$PGDATA" >/dev/null
  printf '\nhost all all all scram-sha-256\n' >> "$PGDATA/pg_hba.conf"
  printf "\nlisten_addresses = '*'\nshared_preload_libraries = 'timescaledb'\n" >> "$PGDATA/postgresql.conf"
  pg_ctl -D "$PGDATA" -o "-c listen_addresses='' -c timescaledb.telemetry_level=off" -w start >/dev/null
  export PGUSER=$user PGDATABASE=$db
  [ "$db" = postgres ] || psql -v ON_ERROR_STOP=1 -q -d postgres -c "CREATE DATABASE \"$db\""
  psql -v ON_ERROR_STOP=1 -q -c "CREATE EXTENSION IF NOT EXISTS timescaledb"
  for f in /docker-entrypoint-initdb.d/*; do
    case "$f" in
      *.sh) echo "entrypoint: running $f"; . "$f" ;;
      *.sql) echo "entrypoint: running $f"; psql -v ON_ERROR_STOP=1 -q -f "$f" ;;
    esac
  done
  pg_ctl -D "$PGDATA" -m fast -w stop >/dev/null
  unset PGUSER PGDATABASE
  echo "entrypoint: database initialised; starting PostgreSQL"
fi
exec "$@"
