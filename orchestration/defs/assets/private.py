"""Private data of trading accounts: the REST reconciliation of every enabled account, per day,
for every venue that records private data (the collector reconciles at start and after every
reconnect; this asset lets any past day be redone from the UI, e.g. a backfill over a week)."""

import asyncio

import dagster as dg

from collector_daemon.core.accounts import reconcile_day
from collector_daemon.core.days import day_window
from collector_daemon.rows import TABLES
from orchestration.defs.assets.gaps import ONE_DAY_PER_RUN
from orchestration.partitions import VENUES, daily

PRIVATE_GROUP = "private_accounts"
#: The tables of private fills (of any venue): an account_id and an exec_id column.
FILL_TABLES = sorted(t.name for t in TABLES.values() if {"account_id", "exec_id"} <= set(t.columns))


@dg.asset(
    partitions_def=daily,
    backfill_policy=ONE_DAY_PER_RUN,
    group_name=PRIVATE_GROUP,
    kinds={"python", "timescaledb"},
    owners=["team:tickvault"],
    pool="venue_rest",
    required_resource_keys={"database", *VENUES},
    retry_policy=dg.RetryPolicy(max_retries=2, delay=60, backoff=dg.Backoff.EXPONENTIAL,
                                jitter=dg.Jitter.PLUS_MINUS),
    metadata={"table": "the venues' private tables (source=rest)"},
    check_specs=[
        dg.AssetCheckSpec("executions_unique", asset="private_reconciliation",
                          description="No fill of the day is stored twice for an account."),
        dg.AssetCheckSpec("executions_match_rest", asset="private_reconciliation",
                          description="Per account, the fills stored for the day are the fills REST lists."),
    ],
)
def private_reconciliation(context: dg.AssetExecutionContext) -> dg.MaterializeResult:
    """Reconciles every enabled trading account's day of executions and orders over REST."""
    day = context.partition_key
    per_account: dict[str, dict] = {}
    failed = []
    for name in VENUES:
        api = getattr(context.resources, name)
        reports = asyncio.run(reconcile_day(context.resources.database.url, api.registered, api.settings(),
                                            day, max_concurrency=api.max_concurrency))
        for r in reports:
            key = f"{name}/{r.label}"
            per_account[key] = {"account_id": r.account_id, "fetched": r.fetched, "inserted": r.inserted,
                                "executions_rest": r.executions_rest, "executions_stored": r.executions_stored,
                                "error": r.error}
            if r.error:
                failed.append(f"{key}: {r.error}")
            context.log.info(f"{key}: {r.executions_rest} executions listed by REST, "
                             f"{r.executions_stored} stored; inserted {r.inserted}")
    meta = {
        "day": day,
        "accounts": len(per_account),
        "executions_rest": sum(a["executions_rest"] for a in per_account.values()),
        "executions_stored": sum(a["executions_stored"] for a in per_account.values()),
        # REST lists every fill of the day; more stored than listed means fills REST does not know
        "accounts_not_matching_rest": dg.MetadataValue.json(sorted(
            k for k, a in per_account.items() if not a["error"] and a["executions_stored"] != a["executions_rest"])),
        "per_account": dg.MetadataValue.json(per_account),
    }
    if failed:
        raise dg.Failure(description=f"{len(failed)} account(s) not reconciled: " + "; ".join(failed[:5]),
                         metadata=meta)
    start, end = day_window(day)
    with context.resources.database.connect() as conn:
        duplicates = {t: conn.execute(
            f"SELECT count(*) - count(DISTINCT (account_id, exec_id)) FROM {t} "
            "WHERE exchange_ts >= %s AND exchange_ts < %s", (start, end)).fetchone()[0] for t in FILL_TABLES}
    mismatched = meta["accounts_not_matching_rest"].data
    checks = [
        dg.AssetCheckResult(check_name="executions_unique", passed=not any(duplicates.values()),
                            severity=dg.AssetCheckSeverity.ERROR, metadata={"duplicates": dg.MetadataValue.json(duplicates)}),
        dg.AssetCheckResult(check_name="executions_match_rest", passed=not mismatched,
                            severity=dg.AssetCheckSeverity.WARN,
                            metadata={"accounts_not_matching_rest": dg.MetadataValue.json(mismatched)}),
    ]
    return dg.MaterializeResult(metadata=meta, check_results=checks)
