# tickvault image: the collector daemon and the Dagster code location.
FROM python:3.11-slim
WORKDIR /app
COPY pyproject.toml README.md ./
COPY collector_daemon ./collector_daemon
COPY orchestration ./orchestration
COPY schema ./schema
COPY workspace.yaml dagster.yaml ./
RUN pip install --no-cache-dir -e . && useradd --system --uid 10001 tickvault
USER tickvault
ENTRYPOINT ["tickvault"]
CMD ["collect"]
