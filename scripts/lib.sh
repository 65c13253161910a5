# Shared helpers for scripts/test and scripts/run (sourced, not executed). Expects the current
# directory to be the repository root and `set -euo pipefail` in the caller.

# The Python that creates .venv: $PYTHON, else the first python3.x >= 3.11 on PATH.
find_python() {
  local py
  for py in ${PYTHON:-} python3 python3.14 python3.13 python3.12 python3.11; do
    if command -v "$py" >/dev/null 2>&1 &&
       "$py" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
      echo "$py"; return 0
    fi
  done
  echo "error: Python >= 3.11 not found (set PYTHON=/path/to/python3.11)" >&2
  return 1
}

# ensure_venv [EXTRAS]: create .venv if missing and `pip install -e .[EXTRAS]` into it, unless
# a stamp says that was already done for this pyproject.toml (a `test` install also satisfies
# a plain one). Stamps live in .venv, so deleting .venv starts everything afresh.
ensure_venv() {
  local extras=${1:-} spec=. hash stamp
  if [ -n "$extras" ]; then spec=".[${extras}]"; fi
  if [ ! -x .venv/bin/python ]; then
    local py; py=$(find_python)
    echo "creating .venv with $($py --version)" >&2
    "$py" -m venv .venv || {
      echo "error: '$py -m venv' failed; on Debian/Ubuntu: apt-get install python3-venv" >&2
      return 1; }
  fi
  hash=$(sha256sum pyproject.toml | cut -d' ' -f1)
  stamp=.venv/.tickvault-installed-${extras:-base}
  if [ "$(cat "$stamp" 2>/dev/null)" = "$hash" ] ||
     { [ -z "$extras" ] &&
       [ "$(cat .venv/.tickvault-installed-test 2>/dev/null)" = "$hash" ]; }; then
    return 0
  fi
  echo "installing tickvault into .venv: pip install -e '$spec'" >&2
  local log; log=$(mktemp)
  # Quiet: the build backend's warnings are shown only when the install fails.
  if ! .venv/bin/python -m pip install -q -e "$spec" >"$log" 2>&1; then
    cat "$log" >&2; rm -f "$log"; return 1
  fi
  rm -f "$log"
  echo "$hash" > "$stamp"
}

# ensure_timescaledb: make sure the TimescaleDB extension is installed for the PostgreSQL
# that LocalPostgres uses. As root, build/install it; otherwise say how and go on (the local
# server then runs as plain PostgreSQL and the TimescaleDB tests skip).
ensure_timescaledb() {
  if .venv/bin/python -c 'import sys
from collector_daemon.storage.localdb import timescaledb_available
sys.exit(not timescaledb_available())'; then
    return 0
  fi
  if [ "$(id -u)" = 0 ]; then
    echo "TimescaleDB not installed: running scripts/install-timescaledb.sh" >&2
    if ! bash scripts/install-timescaledb.sh; then
      [ "${CI:-}" = true ] && return 1   # CI must run on TimescaleDB
      echo "warning: the TimescaleDB build failed (the recipe is for Debian 12/13); going on" \
           "with plain PostgreSQL" >&2
    fi
  else
    echo "note: TimescaleDB is not installed for the local PostgreSQL; install it with" \
         "'sudo scripts/install-timescaledb.sh'. Going on without it (its tests will skip)." >&2
  fi
}

# ensure_local_postgres: PostgreSQL server binaries for the project-local server: the machine's
# (see LocalPostgres' search order), else the PostgreSQL 16 bundled in the PyPI package
# pgserver, installed into .venv (plain PostgreSQL: no TimescaleDB there).
ensure_local_postgres() {
  if .venv/bin/python -c 'from collector_daemon.storage.localdb import find_bindir; find_bindir()' \
       2>/dev/null; then
    return 0
  fi
  echo "no PostgreSQL server binaries on this machine: pip install 'tickvault[localpg]' (pgserver)" >&2
  .venv/bin/python -m pip install -q -e '.[localpg]'
}
