"""Dagster resources (ConfigurableResource classes; instances live in ``defs/resources.py``).

Secrets come only from the environment through ``dg.EnvVar``; no field has a default secret.
"""

from __future__ import annotations

from contextlib import contextmanager
from collections.abc import Iterator

import dagster as dg
import psycopg
from pydantic import Field

from collector_daemon.venues.deribit.rest import DeribitRest
from orchestration.lib.backfill import RestConfig


class DatabaseResource(dg.ConfigurableResource):
    """The PostgreSQL/TimescaleDB database the collector writes (same as TICKVAULT_DATABASE_URL)."""

    url: str = Field(description="postgresql:// URL of the tickvault database (secret: use EnvVar).")

    @contextmanager
    def connect(self) -> Iterator[psycopg.Connection]:
        """A psycopg (v3) connection; committed on success, rolled back on error."""
        with psycopg.connect(self.url) as conn:
            yield conn


class DeribitApiResource(dg.ConfigurableResource):
    """Deribit REST API (or the emulator standing in for it), through the collector's one REST
    client ``collector_daemon.venues.deribit.rest.DeribitRest`` (pacing, retries, paging)."""

    base_url: str = Field("https://www.deribit.com/api/v2",
                          description="REST base URL; the emulator's rest_url in tests and replays.")
    history_url: str | None = Field(
        None, description="Archive host for trades older than 24 h (https://history.deribit.com/api/v2); "
                          "empty = such gaps are marked unrecoverable.")
    currency: str = Field("ETH", description="Currency whose options are tracked.")
    kinds: list[str] = Field(["option"], description="Instrument kinds tracked (universe, trade backfill).")
    top_n: int | None = Field(50, description="Subscription set size by open interest; None = all.")
    max_concurrency: int = Field(4, description="Concurrent REST requests (count toward 32 per IP).")

    def client(self, history: bool = False) -> DeribitRest:
        """A new ``DeribitRest`` on the main (or history) host; use as ``async with``.

        Raises:
            ValueError: ``history`` asked but no ``history_url`` configured.
        """
        if history and not self.history_url:
            raise ValueError("no history_url configured")
        return DeribitRest(self.history_url if history else self.base_url,
                           max_concurrency=self.max_concurrency)

    def rest_config(self) -> RestConfig:
        """The plain settings the backfill library takes."""
        return RestConfig(base_url=self.base_url, history_url=self.history_url or None,
                          currency=self.currency, kinds=tuple(self.kinds),
                          max_concurrency=self.max_concurrency)


class ObjectStorageResource(dg.ConfigurableResource):
    """S3-compatible object storage for Parquet exports: Backblaze B2 (endpoint
    https://s3.<region>.backblazeb2.com), AWS S3 or MinIO. With no bucket the exports go to
    ``local_dir`` with the same layout."""

    bucket: str | None = Field(None, description="Bucket name; empty = write to local_dir instead.")
    prefix: str = Field("tickvault", description="Key prefix under which the Hive layout starts.")
    endpoint_url: str | None = Field(None, description="S3 endpoint, e.g. https://s3.us-west-004.backblazeb2.com.")
    region_name: str | None = Field(None, description="Region, e.g. us-west-004 for B2.")
    access_key_id: str | None = Field(None, description="Key id (B2 keyID); secret: use EnvVar.")
    secret_access_key: str | None = Field(None, description="Secret (B2 applicationKey); secret: use EnvVar.")
    local_dir: str = Field(".data/export", description="Directory used when no bucket is configured.")

    def client(self):
        """A boto3 S3 client for the configured endpoint (only when ``bucket`` is set)."""
        import boto3
        from botocore.config import Config
        return boto3.client(
            "s3", endpoint_url=self.endpoint_url, region_name=self.region_name,
            aws_access_key_id=self.access_key_id, aws_secret_access_key=self.secret_access_key,
            # B2 rejects the flexible-checksum headers newer boto3 sends by default; integrity is
            # ensured by Content-MD5 on every PUT/part (checked by the server) and sha256 in the
            # manifest.
            config=Config(retries={"max_attempts": 10, "mode": "adaptive"},
                          request_checksum_calculation="when_required",
                          response_checksum_validation="when_required"))
