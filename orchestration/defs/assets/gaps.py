"""Daily gap audit of the live capture (writes data_gaps)."""

import dagster as dg

from orchestration.defs.assets.stream import connection_events, quotes, trades
from collector_daemon.core import days
from collector_daemon.core.days import from_us
from orchestration.lib.gaps import audit_day, audit_kind, gaps_key, summarize_open, write_findings
from orchestration.partitions import VENUES, daily

GAPS_GROUP = "gaps"

#: Backfill policy of the daily assets: none, deliberately. Without a policy an asset backfill
#: (UI, GraphQL) launches one run per day tagged ``dagster/partition``, so every asset check
#: records its result for that day, days fail and retry independently, and the run queue plus
#: the ``venue_rest`` pool (dagster.yaml) bound what runs at once: a 30-day backfill is 30
#: small queued runs. ``multi_run(1)`` gives the same runs but tags them with a one-day
#: partition *range*, and check results of range-tagged runs are stored without a partition
#: (seen in tests/orchestration/test_e2e_ui.py); ``single_run`` would put 30 days' REST calls
#: in one long run whose checks could not record per-day results either. Cost: the CLI's
#: ``--partition-range`` needs single_run, so ranges are backfilled from the UI/GraphQL.
ONE_DAY_PER_RUN: dg.BackfillPolicy | None = None


def _markdown(findings, limit: int = 50) -> str:
    lines = ["| stream | instrument | start | end | seq | kind |", "|---|---|---|---|---|---|"]
    for f in findings[:limit]:
        seq = f"{f.seq_from}..{f.seq_to}" if f.seq_from is not None else ""
        lines.append(f"| {f.stream} | {f.instrument_name} | {from_us(f.gap_start).isoformat()} | "
                     f"{from_us(f.gap_end).isoformat()} | {seq} | {audit_kind(f.reason)} |")
    if len(findings) > limit:
        lines.append(f"| ... {len(findings) - limit} more | | | | | |")
    return "\n".join(lines)


@dg.asset(
    partitions_def=daily,
    backfill_policy=ONE_DAY_PER_RUN,
    deps=[quotes, trades, connection_events, "instrument_universe"],
    group_name=GAPS_GROUP,
    kinds={"sql", "timescaledb"},
    owners=["team:tickvault"],
    metadata={"table": "data_gaps", "detected_by": "audit"},
    required_resource_keys={"database", *VENUES},
)
def trade_gaps(context: dg.AssetExecutionContext) -> dg.MaterializeResult:
    """Authoritative gap audit of one UTC day: trade_seq holes, lost windows, quote silences, silent instruments."""
    day = context.partition_key
    now = days.utcnow()
    meta: dict = {"day": day}
    recoverable: list[int] = []
    unrecoverable = total = 0
    database = context.resources.database
    with database.connect() as conn:
        for venue in VENUES:
            report = audit_day(conn, venue, day, now=now)
            written = write_findings(conn, report)
            conn.commit()   # the findings are visible to the summary's own connection
            history = getattr(context.resources, venue).settings().history_url
            summary = summarize_open(database.url, venue, day, now=now,
                                     history_available=bool(history))
            recoverable += [g.gap_id for g in summary.recoverable]
            unrecoverable += len(summary.unrecoverable)
            total += len(report.findings)
            context.log.info(
                f"{venue} {day}: {len(report.findings)} finding(s) {report.counts()}; "
                f"{written.inserted} new, {written.updated} updated, {written.unchanged} unchanged, "
                f"{written.deleted} open finding(s) no longer found, "
                f"{written.already_resolved} already resolved; "
                f"{len(summary.recoverable)} open gap(s) recoverable from REST")
            meta[f"{venue}/findings"] = len(report.findings)
            meta[f"{venue}/by_kind"] = dg.MetadataValue.json(report.counts())
            meta[f"{venue}/inserted"] = written.inserted
            meta[f"{venue}/updated"] = written.updated
            meta[f"{venue}/unchanged"] = written.unchanged
            meta[f"{venue}/deleted_open"] = written.deleted
            meta[f"{venue}/already_resolved"] = written.already_resolved
            meta[f"{venue}/window_end"] = report.window_end.isoformat()
            meta[f"{venue}/quotes_seen"] = report.quotes_seen
            meta[f"{venue}/trades_seen"] = report.trades_seen
            meta[f"{venue}/instruments_quoted"] = report.instruments_quoted
            meta[f"{venue}/expected_set_basis"] = report.expected_basis
            meta[f"{venue}/findings_table"] = dg.MetadataValue.md(_markdown(report.findings))
    meta["findings"] = total
    meta["recoverable_open_gaps"] = len(recoverable)
    meta["recoverable_gap_ids"] = dg.MetadataValue.json(sorted(recoverable)[:100])
    meta["recoverable_gaps_key"] = gaps_key(recoverable)
    meta["unrecoverable_open_gaps"] = unrecoverable
    return dg.MaterializeResult(metadata=meta)
