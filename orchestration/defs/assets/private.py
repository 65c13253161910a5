"""Private data of trading accounts: the REST reconciliation of one account for one UTC day,
``<venue>/private_reconciliation``, for every recorded venue with private data (Bybit), in the
venue's group (:func:`build_private_reconciliation`).

Partitions: day x account (``orchestration.partitions.day_account_partitions``: the account
dimension is dynamic, kept in line with the ``accounts`` table by the ``accounts_partitions``
sensor). The collector reconciles every account at start and after every reconnect; this asset
redoes any past day of any account, from the UI (a backfill over a week and any set of
accounts) or nightly (``<venue>_private_reconciliation_nightly``).
"""

import asyncio
from datetime import UTC, datetime

import dagster as dg

from collector_daemon.core.accounts import reconcile_day
from collector_daemon.core.days import day_window
from collector_daemon.rows import TABLES
from orchestration.lib import quality
from orchestration.partitions import (VENUES, day_account_partitions, records_private_data, venue_key,
                                      venue_rest_asset)

#: Tables of private fills (of any venue): an account_id and an exec_id column.
FILL_TABLES = sorted(t.name for t in TABLES.values() if {"account_id", "exec_id"} <= set(t.columns))
#: Tables of position and wallet snapshots (of any venue): an account_id column and a name ending
#: in ``_positions`` or ``_wallet`` (Bybit's ``bybit_positions``, ``bybit_wallet``).
SNAPSHOT_TABLES = sorted(t.name for t in TABLES.values()
                         if "account_id" in t.columns and t.name.endswith(("_positions", "_wallet")))
#: positions_wallet_fresh: the newest snapshot may be this old at the day's end (or now), s.
SNAPSHOT_MAX_AGE_S = 86_400.0


def _json(outcome: quality.CheckOutcome) -> dict:
    return {k: (dg.MetadataValue.json(v) if isinstance(v, (dict, list)) else v)
            for k, v in outcome.metadata.items() if v is not None}


def build_private_reconciliation(venue: str) -> dg.AssetsDefinition:
    """The ``<venue>/private_reconciliation`` asset, partitioned by day x account label.

    A run reconciles one account for one UTC day through
    ``collector_daemon.core.accounts.reconcile_day`` (the venue's ``reconcile_account``: Bybit
    ``/v5/execution/list`` and ``/v5/order/history``, signed with the account's key; REST
    snapshots of positions and wallet on the current day), at most the REST resource's
    ``max_concurrency`` requests in flight and within the ``venue_rest`` pool. Rows are inserted
    ``source='rest'`` when absent. Metadata: fetched and inserted rows per table, executions
    REST lists and executions stored. Inline checks: ``executions_unique`` (ERROR),
    ``executions_match_rest`` (WARN) and ``positions_wallet_fresh`` (WARN).

    Raises (in the run):
        dagster.Failure: the account is not an enabled account of the venue, or it could not be
            reconciled (a wrong key, REST down: the message names the account, never a secret).
    """
    key = venue_key(venue, "private_reconciliation")

    @dg.asset(
        key=key,
        partitions_def=day_account_partitions(venue),
        **venue_rest_asset(venue),
        metadata={"tables": ", ".join(FILL_TABLES + SNAPSHOT_TABLES), "venue": venue},
        description=f"{venue}: one trading account's day of executions and orders reconciled over REST.",
        check_specs=[
            dg.AssetCheckSpec("executions_unique", asset=key,
                              description="No (account, exec_id) is stored twice for the day."),
            dg.AssetCheckSpec("executions_match_rest", asset=key,
                              description="The account's fills stored for the day are as many as REST lists."),
            dg.AssetCheckSpec("positions_wallet_fresh", asset=key,
                              description="The account's newest position and wallet snapshots are at most "
                                          "24 h old at the day's end (or now)."),
        ],
    )
    def _reconcile(context: dg.AssetExecutionContext) -> dg.MaterializeResult:
        keys = context.partition_key.keys_by_dimension
        day, label = keys["date"], keys["account"]
        api = getattr(context.resources, venue)
        reports = asyncio.run(reconcile_day(context.resources.database.url, api.registered, api.settings(),
                                            day, max_concurrency=api.max_concurrency, labels=[label]))
        if not reports:
            raise dg.Failure(description=f"{venue}: no enabled account labelled {label!r} "
                                         "(disabled or removed; the accounts_partitions sensor drops "
                                         "its partitions at its next tick)")
        [r] = reports
        meta = {"day": day, "account": label, "account_id": r.account_id,
                "fetched": dg.MetadataValue.json(r.fetched), "inserted": dg.MetadataValue.json(r.inserted),
                "executions_rest": r.executions_rest, "executions_stored": r.executions_stored,
                "gaps_resolved": dg.MetadataValue.json(r.gaps_resolved)}
        if r.reached_back_us is not None:   # an open gap across midnight: REST asked from its start
            meta["reached_back_to"] = datetime.fromtimestamp(r.reached_back_us / 1e6, UTC).isoformat()
        context.log.info(f"{venue}/{label} {day}: {r.executions_rest} executions listed by REST, "
                         f"{r.executions_stored} stored; inserted {r.inserted}; gaps resolved {r.gaps_resolved}")
        if r.error:
            raise dg.Failure(description=f"{venue}/{label} not reconciled: {r.error}", metadata=meta)
        with context.resources.database.connect() as conn:
            unique = quality.executions_unique(conn, FILL_TABLES, r.account_id, day)
            fresh = quality.positions_wallet_fresh(conn, SNAPSHOT_TABLES, r.account_id, day,
                                                   max_age_s=SNAPSHOT_MAX_AGE_S)
        start, end = day_window(day)
        return dg.MaterializeResult(metadata=meta, check_results=[
            dg.AssetCheckResult(check_name="executions_unique", passed=unique.passed,
                                severity=dg.AssetCheckSeverity.ERROR, metadata=_json(unique)),
            dg.AssetCheckResult(
                check_name="executions_match_rest", passed=r.executions_stored == r.executions_rest,
                severity=dg.AssetCheckSeverity.WARN,
                # REST lists every fill of the day; more stored than listed = fills REST does not know
                metadata={"executions_rest": r.executions_rest, "executions_stored": r.executions_stored,
                          "window": f"{start.isoformat()}..{end.isoformat()}"}),
            dg.AssetCheckResult(check_name="positions_wallet_fresh", passed=fresh.passed,
                                severity=dg.AssetCheckSeverity.WARN, metadata=_json(fresh)),
        ])

    return _reconcile


#: Venues whose accounts' private data is reconciled (``orchestration.partitions.VENUES`` that
#: implement ``reconcile_account``).
PRIVATE_VENUES: tuple[str, ...] = tuple(v for v in VENUES if records_private_data(v))
#: One private reconciliation asset per such venue.
PRIVATE_ASSETS: list[dg.AssetsDefinition] = [build_private_reconciliation(v) for v in PRIVATE_VENUES]
