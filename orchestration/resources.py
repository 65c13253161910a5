"""Dagster resources (ConfigurableResource classes; instances live in ``defs/resources.py``).

Secrets come only from the environment through ``dg.EnvVar``; no field has a default secret.
"""

from __future__ import annotations

from contextlib import contextmanager
from collections.abc import Iterator

import dagster as dg
import psycopg
from pydantic import Field

from collector_daemon.core.rest_budget import budgeted_client
from collector_daemon.venues import RestClient, Venue, VenueSettings, get_venue


class DatabaseResource(dg.ConfigurableResource):
    """The PostgreSQL/TimescaleDB database the collector writes (same as TICKVAULT_DATABASE_URL)."""

    url: str = Field(description="postgresql:// URL of the tickvault database (secret: use EnvVar).")

    @contextmanager
    def connect(self) -> Iterator[psycopg.Connection]:
        """A psycopg (v3) connection; committed on success, rolled back on error."""
        with psycopg.connect(self.url) as conn:
            yield conn


class VenueApiResource(dg.ConfigurableResource):
    """A venue's REST API (or the emulator standing in for it), through the venue's one REST
    client (``collector_daemon.venues.<name>``: pacing, retries, paging). One resource per
    registered venue, keyed by the venue's name. The venue's own settings
    (``TICKVAULT_<VENUE>_*``, e.g. Deribit's currency, kinds and top N) are read from the
    environment as the collector reads them, with ``options`` on top."""

    venue: str = Field(description="Registered venue name (collector_daemon/venues/<name>/).")
    base_url: str | None = Field(
        None, description="REST base URL; empty = the venue's setting (the emulator's rest_url in "
                          "tests and replays).")
    history_url: str | None = Field(
        None, description="Archive host for data older than the venue's REST horizon; empty = "
                          "the venue's setting.")
    options: dict[str, str] = Field(
        default_factory=dict, description="More of the venue's settings by field name, e.g. "
                                          "{'currency': 'BTC', 'top_n': '5'}.")
    max_concurrency: int = Field(4, description="Concurrent REST requests (some venues count them "
                                                "toward their connections per IP).")

    @property
    def registered(self) -> Venue:
        """The venue object of the registry.

        Raises:
            collector_daemon.venues.UnknownVenue: ``venue`` is not registered.
        """
        return get_venue(self.venue)

    def settings(self) -> VenueSettings:
        """The venue's settings: environment, then ``options``, ``base_url``, ``history_url``."""
        over: dict = dict(self.options)
        if self.base_url:
            over["rest_url"] = self.base_url
        if self.history_url:
            over["history_url"] = self.history_url
        return self.registered.load_settings(**over)

    def client(self, history: bool = False, dsn: str | None = None) -> RestClient:
        """A new REST client on the main (or history) host; use as ``async with``. With ``dsn``
        it takes the IP's shared request budget kept in that database
        (:func:`collector_daemon.core.rest_budget.budgeted_client`).

        Raises:
            ValueError: ``history`` asked but no history host configured.
        """
        settings = self.settings()
        if history and not settings.history_url:
            raise ValueError("no history_url configured")
        return budgeted_client(self.registered, settings, dsn,
                               base_url=settings.history_url if history else None,
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
