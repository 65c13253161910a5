# tickvault image: the collector daemon (`tickvault collect`), `tickvault migrate`, the exchange
# emulator, and the Dagster code location, webserver and daemon (docker-compose.yml).
#
#   docker build -t tickvault .                                   # base: python:3.11-slim
#   docker build --build-arg BASE_IMAGE=my-registry/python:3.11 .  # any Debian-like Python 3.11
#
# Layers, slowest and most stable first, so a source change rebuilds seconds, not minutes:
# the venv with every dependency (pyproject.toml's [project] dependencies, read with tomllib),
# the Dagster instance config, then the sources (an editable install: schema/ is read beside
# the package). pip's cache is a BuildKit cache mount. BuildKit is needed (Docker >= 20.10 with
# DOCKER_BUILDKIT=1, or buildx): the optional build secret `pip_ca` is a CA bundle for pip when
# PyPI is reached through a TLS-inspecting proxy (`--secret id=pip_ca,src=/path/ca.pem`); it is
# mounted for the pip steps only and never stored in the image.
ARG BASE_IMAGE=python:3.11-slim
FROM ${BASE_IMAGE}

ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 \
    VIRTUAL_ENV=/opt/venv PATH=/opt/venv/bin:$PATH \
    DAGSTER_HOME=/opt/dagster/home DAGSTER_DISABLE_TELEMETRY=1
RUN python -m venv /opt/venv \
 && useradd --system --uid 10001 --user-group --home-dir /app --no-create-home tickvault
WORKDIR /app

# 1. dependencies (rebuilt only when pyproject.toml changes)
COPY pyproject.toml ./
RUN --mount=type=secret,id=pip_ca --mount=type=cache,target=/root/.cache/pip \
    if [ -s /run/secrets/pip_ca ]; then export PIP_CERT=/run/secrets/pip_ca; fi \
 && python -c "import tomllib; print('\n'.join(tomllib.load(open('pyproject.toml', 'rb'))['project']['dependencies']))" \
      > /tmp/requirements.txt \
 && pip install --disable-pip-version-check -q -r /tmp/requirements.txt \
 && rm /tmp/requirements.txt

# 2. Dagster instance (dagster-postgres storage from DAGSTER_PG_URL) and workspace of the stack;
#    storage/ (compute logs) is a volume shared by webserver, daemon and code server
COPY deploy/dagster/dagster.yaml deploy/dagster/workspace.yaml /opt/dagster/home/
RUN mkdir -p /opt/dagster/home/storage /spool /export \
 && chown tickvault:tickvault /opt/dagster/home/storage /spool /export

# 3. the sources
COPY README.md ./
COPY schema ./schema
COPY tickvault ./tickvault
COPY orchestration ./orchestration
COPY collector_daemon ./collector_daemon
RUN --mount=type=secret,id=pip_ca --mount=type=cache,target=/root/.cache/pip \
    if [ -s /run/secrets/pip_ca ]; then export PIP_CERT=/run/secrets/pip_ca; fi \
 && pip install --disable-pip-version-check -q --no-deps -e . \
 && tickvault --help >/dev/null

USER tickvault
EXPOSE 9108 3000 4000
ENTRYPOINT ["tickvault"]
CMD ["collect"]
