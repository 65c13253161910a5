#!/usr/bin/env bash
# Build and install the Apache-2 edition of TimescaleDB for the machine's PostgreSQL 15
# (Debian 12 has no package for it). Uses the Debian 13 (trixie) source package through a
# private apt configuration, so the system's apt sources are not changed.
# Idempotent: exits at once when the extension is already installed.
# Also installs the PostgreSQL server itself and the build tools when they are missing.
# Usage: sudo scripts/install-timescaledb.sh   (root is needed for apt-get and `make install`)
set -euo pipefail
PG_MAJOR=${PG_MAJOR:-15}
PG_CONFIG=/usr/lib/postgresql/$PG_MAJOR/bin/pg_config
if [ -x "$PG_CONFIG" ] && [ -f "$($PG_CONFIG --sharedir)/extension/timescaledb.control" ]; then
  echo "timescaledb: already installed for PostgreSQL $PG_MAJOR"
  exit 0
fi
export DEBIAN_FRONTEND=noninteractive
uri=$(sed -n 's/^URIs: *//p' /etc/apt/sources.list.d/debian.sources 2>/dev/null | head -1)
[ -n "$uri" ] || uri=$(awk '/^deb /{print $2; exit}' /etc/apt/sources.list)
w=$(mktemp -d); trap 'rm -rf "$w"' EXIT
mkdir -p "$w/lists/partial" "$w/src"
echo "deb-src [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] $uri trixie main" > "$w/sources.list"
o=(-o Dir::Etc::sourcelist="$w/sources.list" -o Dir::Etc::sourceparts=- -o Dir::State::Lists="$w/lists")
apt-get update -qq >/dev/null
apt-get install -y -qq "postgresql-$PG_MAJOR" "postgresql-server-dev-$PG_MAJOR" cmake build-essential >/dev/null
apt-get "${o[@]}" update -qq
cd "$w/src"
apt-get "${o[@]}" source --download-only timescaledb
tar xf timescaledb_*.orig.tar.xz
cd timescaledb-2.*/
./bootstrap -DAPACHE_ONLY=1 -DREGRESS_CHECKS=OFF -DTAP_CHECKS=OFF -DWARNINGS_AS_ERRORS=OFF \
  -DPG_CONFIG="$PG_CONFIG" >/dev/null
make -C build -j"$(nproc)" install >/dev/null
echo "timescaledb: installed $(ls "$($PG_CONFIG --sharedir)/extension" | grep -o 'timescaledb--[0-9.]*\.sql' | sort -V | tail -1)"
