# Stand-in for prom/prometheus on machines that cannot pull it (deploy/docker/build-images.sh):
# Debian's prometheus package, laid out like the official image (binary as entrypoint, data in
# /prometheus owned by nobody, config in /etc/prometheus).
ARG BASE_IMAGE=tickvault-local/debian:bookworm
FROM ${BASE_IMAGE}
RUN apt-get update -qq \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends prometheus >/dev/null \
 && rm -rf /var/lib/apt/lists/* \
 && mkdir -p /prometheus && chown nobody:nogroup /prometheus
USER nobody
WORKDIR /prometheus
EXPOSE 9090
ENTRYPOINT ["/usr/bin/prometheus"]
CMD ["--config.file=/etc/prometheus/prometheus.yml", "--storage.tsdb.path=/prometheus"]
