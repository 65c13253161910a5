"""Resource instances of the code location, configured from the environment.

Variables: TICKVAULT_DATABASE_URL (required, secret), TICKVAULT_DERIBIT_REST_URL,
TICKVAULT_DERIBIT_HISTORY_URL (empty = no archive host), TICKVAULT_CURRENCY (ETH),
TICKVAULT_KIND (comma-separated, option; as the collector), TICKVAULT_TOP_N (50; "all"), and the
TICKVAULT_EXPORT_* / TICKVAULT_S3_* variables of the export.
"""

import os

import dagster as dg

from orchestration.resources import DatabaseResource, DeribitApiResource, ObjectStorageResource


def _top_n(value: str) -> int | None:
    """TICKVAULT_TOP_N: a number, or "all" / empty for every live instrument."""
    return None if value.strip().lower() in ("", "all") else int(value)


def _secret(name: str) -> dg.EnvVar | None:
    """The variable as an EnvVar reference (its value never appears in the UI or run config);
    None when unset, so boto3 falls back to its own credential chain (AWS_* variables, profiles)."""
    return dg.EnvVar(name) if os.environ.get(name) else None


@dg.definitions
def resources() -> dg.Definitions:
    return dg.Definitions(resources={
        "database": DatabaseResource(url=dg.EnvVar("TICKVAULT_DATABASE_URL")),
        "deribit": DeribitApiResource(
            base_url=dg.EnvVar("TICKVAULT_DERIBIT_REST_URL").get_value("https://www.deribit.com/api/v2"),
            history_url=dg.EnvVar("TICKVAULT_DERIBIT_HISTORY_URL").get_value(None),
            currency=dg.EnvVar("TICKVAULT_CURRENCY").get_value("ETH"),
            kinds=dg.EnvVar("TICKVAULT_KIND").get_value("option").split(","),
            top_n=_top_n(dg.EnvVar("TICKVAULT_TOP_N").get_value("50"))),
        "object_storage": ObjectStorageResource(
            bucket=dg.EnvVar("TICKVAULT_EXPORT_BUCKET").get_value(None),
            prefix=dg.EnvVar("TICKVAULT_EXPORT_PREFIX").get_value("tickvault"),
            endpoint_url=dg.EnvVar("TICKVAULT_S3_ENDPOINT_URL").get_value(None),
            region_name=dg.EnvVar("TICKVAULT_S3_REGION").get_value(None),
            access_key_id=_secret("TICKVAULT_S3_ACCESS_KEY_ID"),
            secret_access_key=_secret("TICKVAULT_S3_SECRET_ACCESS_KEY"),
            local_dir=dg.EnvVar("TICKVAULT_EXPORT_LOCAL_DIR").get_value(".data/export")),
    })
