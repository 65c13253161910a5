"""Resource instances of the code location, configured from the environment.

Variables: TICKVAULT_DATABASE_URL (required, secret; or TICKVAULT_DATABASE_URL_FILE, a file
holding it, as every TICKVAULT_*_FILE); TICKVAULT_VENUES (the venues recorded,
comma-separated; default every registered venue); per venue its own
``TICKVAULT_<VENUE>_*`` settings, read by the venue's settings model as the collector reads them
(Deribit: TICKVAULT_DERIBIT_REST_URL, TICKVAULT_DERIBIT_HISTORY_URL, TICKVAULT_CURRENCY,
TICKVAULT_KIND, TICKVAULT_TOP_N, ...); and the TICKVAULT_EXPORT_* / TICKVAULT_S3_* variables of
the export.
"""

import os

import dagster as dg

from collector_daemon.settings import secrets_from_files
from orchestration.partitions import VENUES
from orchestration.resources import DatabaseResource, ObjectStorageResource, VenueApiResource


def _secret(name: str) -> dg.EnvVar | None:
    """The variable as an EnvVar reference (its value never appears in the UI or run config);
    None when unset, so boto3 falls back to its own credential chain (AWS_* variables, profiles)."""
    return dg.EnvVar(name) if os.environ.get(name) else None


@dg.definitions
def resources() -> dg.Definitions:
    # TICKVAULT_<NAME>_FILE (Docker secrets) become TICKVAULT_<NAME> before the EnvVars resolve,
    # so the values stay out of the run config the UI shows
    secrets_from_files()
    return dg.Definitions(resources={
        "database": DatabaseResource(url=dg.EnvVar("TICKVAULT_DATABASE_URL")),
        **{name: VenueApiResource(venue=name) for name in VENUES},
        "object_storage": ObjectStorageResource(
            bucket=dg.EnvVar("TICKVAULT_EXPORT_BUCKET").get_value(None),
            prefix=dg.EnvVar("TICKVAULT_EXPORT_PREFIX").get_value("tickvault"),
            endpoint_url=dg.EnvVar("TICKVAULT_S3_ENDPOINT_URL").get_value(None),
            region_name=dg.EnvVar("TICKVAULT_S3_REGION").get_value(None),
            access_key_id=_secret("TICKVAULT_S3_ACCESS_KEY_ID"),
            secret_access_key=_secret("TICKVAULT_S3_SECRET_ACCESS_KEY"),
            local_dir=dg.EnvVar("TICKVAULT_EXPORT_LOCAL_DIR").get_value(".data/export")),
    })
