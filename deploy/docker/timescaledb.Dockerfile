# Stand-in for timescale/timescaledb on machines that cannot pull it (deploy/docker/build-images.sh):
# Debian's PostgreSQL 15 with TimescaleDB's Apache-2 build compiled from source exactly as CI
# does it (scripts/install-timescaledb.sh), and an entrypoint that takes the official image's
# POSTGRES_USER / POSTGRES_PASSWORD(_FILE) / POSTGRES_DB, PGDATA and /docker-entrypoint-initdb.d.
# The Apache build has no compression or continuous aggregates: the schema's optional paths.
ARG BASE_IMAGE=tickvault-local/debian:bookworm
FROM ${BASE_IMAGE}
COPY scripts/install-timescaledb.sh /tmp/install-timescaledb.sh
RUN apt-get update -qq \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
      ca-certificates xz-utils >/dev/null \
 && bash /tmp/install-timescaledb.sh \
 && DEBIAN_FRONTEND=noninteractive apt-get purge -y -qq --auto-remove \
      postgresql-server-dev-15 cmake build-essential >/dev/null \
 && rm -rf /var/lib/apt/lists/* /tmp/install-timescaledb.sh \
 && ls /usr/share/postgresql/15/extension/timescaledb.control \
 && mkdir -p /var/lib/postgresql/data /docker-entrypoint-initdb.d /var/run/postgresql \
 && chown -R postgres:postgres /var/lib/postgresql /var/run/postgresql
COPY deploy/docker/timescaledb-entrypoint.sh /usr/local/bin/docker-entrypoint.sh
ENV PATH=/usr/lib/postgresql/15/bin:$PATH PGDATA=/var/lib/postgresql/data
VOLUME /var/lib/postgresql/data
EXPOSE 5432
STOPSIGNAL SIGINT
ENTRYPOINT ["docker-entrypoint.sh"]
CMD ["postgres"]
