"""``tickvault`` command line: run | migrate | collect | emulate | status | accounts | inspect | localdb | import | history | query.

Exit codes: 0 success, 1 runtime failure, 2 bad usage or configuration (the message names the
``TICKVAULT_*`` variable).
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import ssl
import sys
from pathlib import Path

from collector_daemon.settings import SettingsError, load_settings

log = logging.getLogger("tickvault")


def _setup_logging(level: str = "INFO") -> None:
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s",
                        stream=sys.stderr)
    for noisy in ("websockets", "httpx", "yoyo"):  # per-request / per-step chatter
        logging.getLogger(noisy).setLevel(logging.WARNING)


def _top_n(value: str) -> int | str:
    if value.lower() == "all":
        return "all"
    n = int(value)
    if n < 1:
        raise argparse.ArgumentTypeError("--top-n must be >= 1 or 'all'")
    return n


def _speed(value: str) -> float | str:
    return "max" if value == "max" else float(value)


def _venue_names() -> list[str]:
    from collector_daemon.venues import venues
    return list(venues())


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of every subcommand."""
    from collector_daemon.emulator import server as emulator
    from collector_daemon.storage import localdb

    parser = argparse.ArgumentParser(prog="tickvault", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)

    sub.add_parser("migrate", help="apply the schema (TICKVAULT_DATABASE_URL)")

    collect = sub.add_parser("collect", help="stream market data into the database")
    _add_collect_arguments(collect)

    run = sub.add_parser("run", help="the platform: local database, migrations, collector(s) and "
                                     "Dagster (gRPC server, webserver, daemon); Ctrl-C stops all")
    _add_collect_arguments(run)
    from collector_daemon import supervisor
    supervisor.add_arguments(run)

    emulate = sub.add_parser("emulate", help="run the exchange emulator (replays a capture)")
    emulator.add_arguments(emulate)

    status = sub.add_parser("status", help="per-instrument row counts and freshness")
    status.add_argument("--hours", type=float, default=24.0,
                        help="window of the instrument table, back from the newest row (default 24 h)")

    from collector_daemon.core import accounts
    accounts.add_arguments(sub.add_parser("accounts", help="trading accounts whose private streams are recorded"))

    from collector_daemon import inspect
    inspect.add_arguments(sub.add_parser("inspect", help="decode a capture offline: the rows each frame becomes"))

    local = sub.add_parser("localdb", help="project-local PostgreSQL under ./.data")
    localdb.add_arguments(local)

    from tickvault.cli import add_commands   # import (bulk history files), query
    add_commands(sub)
    return parser


def _add_collect_arguments(collect: argparse.ArgumentParser) -> None:
    collect.add_argument("--venue", help=f"venue to collect (TICKVAULT_VENUE; default deribit): "
                                         f"{', '.join(_venue_names())}")
    collect.add_argument("--currency", help="Deribit: currencies, comma-separated (default ETH; TICKVAULT_CURRENCY)")
    collect.add_argument("--kind", help="Deribit: instrument kinds, comma-separated (default option; TICKVAULT_KIND)")
    collect.add_argument("--shard", help="k/n: collect shard k of n of the universe (TICKVAULT_SHARD)")
    collect.add_argument("--workers", type=int, help="collector processes over disjoint shards of "
                         "this daemon's universe, under one supervisor (TICKVAULT_WORKERS; default 1)")
    from collector_daemon.workers import parse_worker
    collect.add_argument("--worker", type=parse_worker, help=argparse.SUPPRESS)   # set by the supervisor
    collect.add_argument("--top-n", type=_top_n,
                         help="instruments by open interest to subscribe, or 'all' (default 50)")
    collect.add_argument("--replay", type=Path, metavar="CAPTURE",
                         help="replay a capture through the built-in emulator instead of going live")
    collect.add_argument("--trades", type=Path, metavar="FILE",
                         help="with --replay: a trade source merged into the replay")
    collect.add_argument("--speed", type=_speed, default="max",
                         help="with --replay: 1 = real time, N = N times faster, max (default)")
    collect.add_argument("--loop", type=int, default=1, help="with --replay: play the capture K times")
    collect.add_argument("--fanout", type=int, default=1,
                         help="with --replay: re-key each option into F instruments (volume)")


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``tickvault`` console script."""
    argv = sys.argv[1:] if argv is None else argv
    args = build_parser().parse_args(argv)
    _setup_logging()
    try:
        if args.command == "migrate":
            return _migrate()
        if args.command == "run":
            from collector_daemon import supervisor
            return supervisor.main(args, supervisor.collect_argv(argv[argv.index("run") + 1:]))
        if args.command == "collect":
            return _collect_command(args)
        if args.command == "emulate":
            from collector_daemon.emulator import server as emulator
            return asyncio.run(emulator.main(args))
        if args.command == "status":
            return _status(args)
        if args.command == "inspect":
            from collector_daemon import inspect
            return inspect.main(args)
        if args.command == "accounts":
            from collector_daemon.core import accounts
            return accounts.main(args, load_settings().database_url.get_secret_value())
        if args.command == "localdb":
            from collector_daemon.storage import localdb
            return localdb.main(args)
        if args.command in ("import", "query", "history"):
            from tickvault.cli import run
            return run(args)
    except SettingsError as exc:
        print(f"tickvault: {exc}", file=sys.stderr)
        return 2
    except ssl.SSLCertVerificationError as exc:
        print(f"tickvault: the database server's TLS certificate failed verification ({exc.verify_message}): "
              "check sslrootcert (the CA file) and the host name in TICKVAULT_DATABASE_URL", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    return 2


def _migrate() -> int:
    from collector_daemon.storage.migrate import migrate
    settings = load_settings()
    report = migrate(settings.database_url.get_secret_value())
    print(f"applied {len(report.applied)} migration(s)"
          + (f"; TimescaleDB {report.timescaledb_version} ({report.timescaledb_license}), "
             f"hypertables: {', '.join(report.hypertables)}" if report.timescaledb_version
             else "; plain PostgreSQL"))
    return 0


def _collect_command(args: argparse.Namespace) -> int:
    """``collect``: one collector process, or (``--workers`` > 1) the supervisor of N."""
    settings = load_settings(venue=args.venue, currency=args.currency, kind=args.kind,
                             shard=args.shard, top_n=args.top_n, workers=args.workers)
    logging.getLogger().setLevel(settings.log_level)
    if settings.workers > 1 and args.worker is None:
        if args.replay is not None:
            raise SettingsError("--replay runs one collector: TICKVAULT_WORKERS (--workers) must be 1")
        from collector_daemon import workers
        return workers.Workers(settings, workers.collect_options(args)).run()
    return asyncio.run(_collect(args, settings))


async def _collect(args: argparse.Namespace, settings) -> int:
    from collector_daemon.daemon import Collector
    from collector_daemon.venues import get_venue
    venue = get_venue(settings.venue)
    if args.replay is None:
        if args.trades is not None:
            raise SettingsError("--trades needs --replay")
        worker = args.worker or (1, 1)
        if args.worker is not None:
            from collector_daemon.workers import follow_supervisor
            follow_supervisor()
            for handler in logging.getLogger().handlers:
                handler.setFormatter(logging.Formatter(
                    f"%(asctime)s %(levelname)s worker{worker[0]} %(name)s: %(message)s"))
        # an unreachable exchange is retried (and reported plainly) by the collector
        summary = await Collector(settings, worker=worker).run()
    else:
        from collector_daemon.emulator.server import EmulatorConfig, EmulatorServer
        server = EmulatorServer(EmulatorConfig(venue=venue.name, capture=args.replay, trades=args.trades,
                                               speed=args.speed, loop=args.loop,
                                               fanout=args.fanout, close_when_done=True))
        await server.start(host="127.0.0.1", port=0)
        try:
            summary = await Collector(settings, ws_url=server.ws_url, rest_url=server.rest_url,
                                      stop_on_replay_end=True, fresh_universe=True).run()
        finally:
            await server.stop()
    for line in summary.lines():
        print(line)
    return 0


def _status(args: argparse.Namespace) -> int:
    import datetime as dt

    import psycopg

    from collector_daemon.storage.queries import (
        STATUS_COLLECTORS_SQL, status_instruments, status_streams,
    )
    from collector_daemon.venues import venues
    settings = load_settings()
    registered = list(venues().values())
    with psycopg.connect(settings.database_url.get_secret_value()) as conn:
        try:
            collectors = conn.execute(STATUS_COLLECTORS_SQL).fetchall()
            streams = status_streams(conn, registered)
            stream_names, window, rows = status_instruments(conn, registered, args.hours)
        except (psycopg.errors.UndefinedTable, psycopg.errors.UndefinedColumn) as exc:
            print(f"tickvault status: the database schema is missing or older than this version "
                  f"({exc.diag.message_primary}): run `tickvault migrate`", file=sys.stderr)
            return 2
    print("collectors:")
    for cid, venue, host, pid, started, age, stats, stopped_age in collectors:
        started_utc = started.astimezone(dt.timezone.utc)
        if stopped_age is not None:
            state = f"stopped {stopped_age.total_seconds():.0f} s ago (clean shutdown)"
        else:
            state = f"heartbeat {age.total_seconds():.0f} s ago"
            if age.total_seconds() > _STALE_HEARTBEAT_S:
                state += " (no clean shutdown recorded: died, or cut off from the database)"
        print(f"  {cid} ({venue}) {state}, started {started_utc:%Y-%m-%d %H:%M:%S}Z, "
              f"messages {stats.get('messages')}, rejected {stats.get('rejected')}, "
              f"reconnects {stats.get('reconnects')}")
    if not collectors:
        print("  (none)")
    utc = dt.timezone.utc
    print("streams (rows: the 24 h of data up to the stream's newest row; gaps: count / total "
          "duration):")
    print(f"  {'venue':8} {'stream':7} {'last received':>13} {'newest exchange_ts (UTC)':>24} "
          f"{'rows':>9}  {'open':>16} {'backfilled':>16} {'unrecoverable':>16}")
    for venue, stream, age, n, newest, on, od, bn, bd, un, ud in streams:
        age_s = f"{age.total_seconds():.0f} s ago" if age is not None else "-"
        newest_s = f"{newest.astimezone(utc):%Y-%m-%d %H:%M:%S}" if newest is not None else "-"
        print(f"  {venue:8} {stream:7} {age_s:>13} {newest_s:>24} {n:>9}  {_gaps(on, od):>16} "
              f"{_gaps(bn, bd):>16} {_gaps(un, ud):>16}")
    if not streams:
        print("  (none)")
    if window is None:
        print("instruments: no rows stored")
    else:
        print(f"instruments, rows from {window[0].astimezone(utc):%Y-%m-%d %H:%M:%S} to "
              f"{window[1].astimezone(utc):%Y-%m-%d %H:%M:%S} UTC (exchange time: the last "
              f"{args.hours:g} h of data, --hours):")
    counts = " ".join(f"{s:>9}" for s in stream_names)
    print(f"  {'venue':8} {'instrument':28} {counts}  {'newest exchange_ts (UTC)':26} {'received':>10}")
    for venue, name, per_stream, last, age in rows:
        age_s = f"{age.total_seconds():.0f} s ago" if age is not None else "-"
        last_s = last.astimezone(utc).strftime("%Y-%m-%d %H:%M:%S.%f")[:-3] if last else "-"
        counts = " ".join(f"{per_stream.get(s, 0):9d}" for s in stream_names)
        print(f"  {venue:8} {name:28} {counts}  {last_s:26} {age_s:>10}")
    if not rows:
        print("  (none)")
    return 0


#: A running collector's heartbeat older than this (s) is reported as suspicious by ``status``
#: (the default heartbeat interval is 5 s).
_STALE_HEARTBEAT_S = 60


def _gaps(n: int, duration) -> str:
    return f"{n} / {duration.total_seconds():.1f} s" if n else "0"


if __name__ == "__main__":
    sys.exit(main())
