# Stand-in for python:3.11-slim on machines that cannot pull it (deploy/docker/build-images.sh):
# Debian bookworm's python3.11 with venv, `python` on PATH, CA certificates.
ARG BASE_IMAGE=tickvault-local/debian:bookworm
FROM ${BASE_IMAGE}
RUN apt-get update -qq \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
      python3 python3-venv ca-certificates >/dev/null \
 && rm -rf /var/lib/apt/lists/* \
 && ln -s /usr/bin/python3 /usr/local/bin/python
CMD ["python"]
