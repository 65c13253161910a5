"""Daily gap audit of the live capture (writes data_gaps): one asset per recorded venue,
``<venue>/trade_gaps`` in the venue's group (:func:`build_trade_gaps`)."""

import dagster as dg

from orchestration.defs.assets.stream import connection_events, stream_specs_of
from collector_daemon.core import days
from collector_daemon.core.days import from_us
from orchestration.lib.gaps import audit_day, audit_kind, gaps_key, summarize_open, write_findings
from orchestration.partitions import VENUES, daily, venue_key

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


def build_trade_gaps(venue: str) -> dg.AssetsDefinition:
    """The ``<venue>/trade_gaps`` asset: the gap audit of one UTC day of ``venue`` (daily
    partitions; group ``venue``; resources ``database`` and the venue's REST resource, whose
    history host decides what counts as recoverable).

    Writes the day's audit findings to ``data_gaps`` (:func:`orchestration.lib.gaps.write_findings`)
    and reports, as metadata: ``findings``, ``by_kind`` and ``by_stream`` (findings per stream
    and kind), what the write changed, ``recoverable_open_gaps`` / ``recoverable_gaps_key``
    (read by the ``backfill_on_recoverable_gaps`` sensor) and ``per_account``: per account label
    of the venue's private connections, the windows they lost (these never become public gaps).
    """

    @dg.asset(
        key=venue_key(venue, "trade_gaps"),
        partitions_def=daily,
        backfill_policy=ONE_DAY_PER_RUN,
        deps=[*stream_specs_of(venue), connection_events, venue_key(venue, "instrument_universe")],
        group_name=venue,
        kinds={"sql", "timescaledb"},
        owners=["team:tickvault"],
        metadata={"table": "data_gaps", "detected_by": "audit", "venue": venue},
        required_resource_keys={"database", venue},
        description=f"{venue}: authoritative gap audit of one UTC day per stream and account: sequence "
                    "holes, lost windows, quote silences, silent instruments.",
    )
    def _audit(context: dg.AssetExecutionContext) -> dg.MaterializeResult:
        day = context.partition_key
        now = days.utcnow()
        database = context.resources.database
        with database.connect() as conn:
            report = audit_day(conn, venue, day, now=now)
            written = write_findings(conn, report)
            conn.commit()   # the findings are visible to the summary's own connection
        history = getattr(context.resources, venue).settings().history_url
        summary = summarize_open(database.url, venue, day, now=now, history_available=bool(history))
        recoverable = [g.gap_id for g in summary.recoverable]
        context.log.info(
            f"{venue} {day}: {len(report.findings)} finding(s) {report.by_stream()}; "
            f"{written.inserted} new, {written.updated} updated, {written.unchanged} unchanged, "
            f"{written.deleted} open finding(s) no longer found, "
            f"{written.already_resolved} already resolved; "
            f"{len(summary.recoverable)} open gap(s) recoverable from REST; "
            f"{len(report.accounts)} account(s) with private connection events")
        return dg.MaterializeResult(metadata={
            "day": day,
            "findings": len(report.findings),
            "by_kind": dg.MetadataValue.json(report.counts()),
            "by_stream": dg.MetadataValue.json(report.by_stream()),
            "per_account": dg.MetadataValue.json(report.accounts),
            "accounts_with_lost_windows": sum(1 for a in report.accounts.values() if a["lost_windows"]),
            "inserted": written.inserted,
            "updated": written.updated,
            "unchanged": written.unchanged,
            "deleted_open": written.deleted,
            "already_resolved": written.already_resolved,
            "window_end": report.window_end.isoformat(),
            "quotes_seen": report.quotes_seen,
            "trades_seen": report.trades_seen,
            "instruments_quoted": report.instruments_quoted,
            "expected_set_basis": report.expected_basis,
            "findings_table": dg.MetadataValue.md(_markdown(report.findings)),
            "recoverable_open_gaps": len(recoverable),
            "recoverable_gap_ids": dg.MetadataValue.json(sorted(recoverable)[:100]),
            "recoverable_gaps_key": gaps_key(recoverable),
            "unrecoverable_open_gaps": len(summary.unrecoverable),
        })

    return _audit


#: One gap audit per recorded venue (``orchestration.partitions.VENUES``).
GAP_ASSETS: list[dg.AssetsDefinition] = [build_trade_gaps(v) for v in VENUES]
