"""Trading accounts whose private streams are recorded (any venue): the ``accounts`` table, secret
references, the collector's :class:`AccountKeeper` and :class:`PrivateSession`, the daily
reconciliation (:func:`reconcile_day`, Dagster) and ``tickvault accounts
add|list|disable|enable|grant``.

Secrets never live in the database, the repository, logs, errors, process arguments or metrics:
``accounts.secret_ref`` says where the secret is, ``env:VARIABLE`` or ``file:/path`` (a Docker or
Kubernetes secrets mount), and the secret is read only when a connection authenticates or a REST
request is signed. Error messages name the reference, never the value.

The collector loads the enabled accounts of its venue at start and follows the table without a
restart: a trigger sends ``NOTIFY tickvault_accounts`` on every change (schema
``bybit-0003.private_streams.sql``), and the table is re-read every ``accounts_refresh_s`` as
well (a notification missed while the listener was reconnecting).
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys
import time
from collections.abc import Awaitable, Callable, Collection, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import asyncpg

from collector_daemon.core.gaps import Gap, GapStatus, insert_gap
from collector_daemon.core.rest_budget import budgeted_client

if TYPE_CHECKING:
    from collector_daemon.connection import Connection
    from collector_daemon.venues import Venue, VenueSettings

log = logging.getLogger(__name__)

#: NOTIFY channel of changes to ``accounts`` (payload: the venue).
ACCOUNTS_CHANNEL = "tickvault_accounts"


def private_connection_prefix(venue: str) -> str:
    """The start of the connection id of every private connection of ``venue``:
    ``<venue>-private-`` (the id is that prefix and the account label, as the collector names
    it; ``connection_events.connection_id``)."""
    return f"{venue}-private-"


def private_connection_id(venue: str, label: str) -> str:
    """The connection id of ``label``'s private connection on ``venue``: ``bybit-private-alpha``."""
    return private_connection_prefix(venue) + label


def account_of_connection(venue: str, connection_id: str) -> str | None:
    """The account label of a private connection id (:func:`private_connection_id`), None for a
    public connection."""
    prefix = private_connection_prefix(venue)
    return connection_id[len(prefix):] if connection_id.startswith(prefix) else None


class SecretError(RuntimeError):
    """An account's secret cannot be read (the message names the reference, never the secret)."""


@dataclass(frozen=True)
class Account:
    """One enabled ``accounts`` row.

    Attributes:
        account_id: the row's id (stored in every private row).
        label: a human name (unique per venue).
        key_id: the API key (public part).
        secret_ref: ``env:VARIABLE`` or ``file:/path`` (kept out of ``repr``).
        run_tag: optional run/strategy tag stored with every row of the account.
    """

    account_id: int
    label: str
    key_id: str
    secret_ref: str = field(repr=False)
    run_tag: str | None = None

    def secret(self) -> str:
        """The API secret, read now from where ``secret_ref`` points.

        Raises:
            SecretError: unknown scheme, unset variable, unreadable or empty file.
        """
        return resolve_secret(self.secret_ref)


def resolve_secret(ref: str) -> str:
    """The secret ``ref`` points to: ``env:VARIABLE`` or ``file:/path`` (trailing newline removed).

    Raises:
        SecretError: naming ``ref`` (which holds no secret), never the value.
    """
    scheme, _, where = ref.partition(":")
    if scheme == "env" and where:
        value = os.environ.get(where)
        if not value:
            raise SecretError(f"secret {ref}: environment variable not set or empty")
        return value
    if scheme == "file" and where:
        try:
            value = Path(where).read_text(encoding="utf-8").strip()
        except OSError as exc:
            raise SecretError(f"secret {ref}: cannot read the file ({exc.strerror})") from None
        if not value:
            raise SecretError(f"secret {ref}: the file is empty")
        return value
    raise SecretError(f"secret reference {ref!r}: expected env:VARIABLE or file:/path")


async def load_accounts(conn: asyncpg.Connection, venue: str) -> list[Account]:
    """The enabled accounts of ``venue``, by id."""
    rows = await conn.fetch(
        "SELECT account_id, label, key_id, secret_ref, run_tag FROM accounts "
        "WHERE venue = $1 AND enabled ORDER BY account_id", venue)
    return [Account(r["account_id"], r["label"], r["key_id"], r["secret_ref"], r["run_tag"]) for r in rows]


class AccountKeeper:
    """One private session per enabled account of a venue, following the ``accounts`` table.

    Args:
        venue: the venue whose accounts are served.
        dsn: database URL (a listener connection of its own).
        start: starts the session of an account (connection and its tasks) and returns it.
        refresh_s: re-read the table at least this often (s), besides every NOTIFY.

    An account whose key, secret reference or run tag changes is restarted; a disabled or
    deleted one is stopped; a new one is started. A session that fails to start is logged
    (naming the account, never its secret) and retried at the next refresh; the others go on.
    """

    def __init__(self, venue: str, dsn: str, start: Callable[[Account], Awaitable["PrivateSession"]], *,
                 refresh_s: float = 60.0) -> None:
        self.venue = venue
        self._dsn = dsn
        self._start = start
        self.refresh_s = refresh_s
        self.sessions: dict[int, tuple[Account, PrivateSession]] = {}
        self._changed = asyncio.Event()
        self._stopped = False
        self.refreshes = 0

    async def run(self) -> None:
        """Refresh at once, then on every NOTIFY ``tickvault_accounts`` or every ``refresh_s``."""
        listener: asyncpg.Connection | None = None
        try:
            while True:
                if listener is None or listener.is_closed():
                    try:
                        listener = await asyncpg.connect(self._dsn)
                        await listener.add_listener(ACCOUNTS_CHANNEL, self._notified)
                    except (OSError, asyncpg.PostgresError) as exc:
                        log.warning("accounts listener not connected (%s); re-reading every %.0f s",
                                    type(exc).__name__, self.refresh_s)
                        listener = None
                try:
                    await self.refresh()
                except (OSError, asyncpg.PostgresError) as exc:
                    log.warning("accounts: re-read failed (%s); keeping the current sessions",
                                type(exc).__name__)
                try:
                    await asyncio.wait_for(self._changed.wait(), self.refresh_s)
                except asyncio.TimeoutError:
                    pass
                self._changed.clear()
        finally:
            if listener is not None:
                await listener.close()

    def _notified(self, _conn, _pid, _channel, payload: str) -> None:
        if payload in ("", self.venue):
            self._changed.set()

    async def refresh(self) -> None:
        """Load the enabled accounts and start, restart or stop sessions to match."""
        conn = await asyncpg.connect(self._dsn)
        try:
            wanted = {a.account_id: a for a in await load_accounts(conn, self.venue)}
        finally:
            await conn.close()
        self.refreshes += 1
        for account_id, (account, session) in list(self.sessions.items()):
            if wanted.get(account_id) != account:
                log.info("account %s (%d): %s; stopping its session", account.label, account_id,
                         "changed" if account_id in wanted else "disabled or removed")
                del self.sessions[account_id]
                await session.stop()
        for account_id, account in wanted.items():
            if self._stopped:   # the collector is shutting down: start nothing more
                return
            if account_id not in self.sessions:
                try:
                    self.sessions[account_id] = (account, await self._start(account))
                except Exception as exc:  # noqa: BLE001 - one account never stops the others
                    log.error("account %s (%d): session not started: %s", account.label, account_id,
                              type(exc).__name__ if not isinstance(exc, SecretError) else exc)
                    continue
                log.info("account %s (%d): session started", account.label, account_id)

    def status(self) -> dict[str, dict]:
        """Per account label (collector_status.stats["accounts"]): ``account_id``, ``state``
        (``streaming``: authenticated and subscribed; ``refused``: the exchange refused the
        topics, e.g. a wrong key; ``connecting``), ``reconciled`` and ``reconcile_errors``."""
        out = {}
        for account, session in self.sessions.values():
            conn = session.connection
            state = "streaming" if conn.subscribed else "refused" if conn.refused else "connecting"
            out[account.label] = {"account_id": account.account_id, "state": state,
                                  "reconciled": session.reconciled,
                                  "reconcile_errors": session.reconcile_errors}
        return out

    async def stop(self) -> None:
        """Stop every session (the collector's shutdown); no session starts afterwards."""
        self._stopped = True
        sessions, self.sessions = list(self.sessions.values()), {}
        await asyncio.gather(*(s.stop() for _, s in sessions), return_exceptions=True)


class PrivateSession:
    """One account's private connection, reconciled over REST after every (re)connection.

    Args:
        account: the account.
        connection: its :class:`~collector_daemon.connection.Connection` (not yet running).
        reconcile: fetches what the streams may have missed (called with the account once the
            connection is authenticated and subscribed: at start and after every reconnect);
            None = no reconciliation.
        retry_s: wait before trying a failed reconciliation again (s).
        poll_s: how often the connection's state is looked at (s).
        pool: where the lost windows go (``data_gaps``); None = not recorded.
        private_streams: the venue's ``Venue.private_streams`` (stream -> why REST cannot
            restore it, "" when it can).

    ``reconciled`` counts finished reconciliations, ``reconcile_errors`` failed ones;
    ``reconciled_connects`` is the connection count (``Connection.connects``) when the last
    finished one started: reconnects in quick succession share one reconciliation.

    Lost windows: each window a reconnect lost (``Connection.lost_windows``, receive time µs)
    becomes one open ``data_gaps`` row per private stream with the account's id (detected_by
    ``disconnect``, instrument ``*``) before the reconciliation that follows it starts; when that
    reconciliation (which covers from the previous one's start to now) succeeds, the rows
    become ``backfilled``, or ``unrecoverable`` with the stream's reason. A failed one leaves
    them open for the retry.
    """

    def __init__(self, account: Account, connection: "Connection",
                 reconcile: Callable[[Account], Awaitable[None]] | None = None, *,
                 retry_s: float = 30.0, poll_s: float = 0.2, pool: asyncpg.Pool | None = None,
                 private_streams: Mapping[str, str] | None = None) -> None:
        self.account = account
        self.connection = connection
        self._reconcile = reconcile
        self.retry_s = retry_s
        self.poll_s = poll_s
        self.reconciled = 0
        self.reconcile_errors = 0
        self.reconciled_connects = 0
        self._pool = pool
        self._private_streams = dict(private_streams or {})
        #: (gap_id, stream) of the open gaps the next successful reconciliation resolves.
        self.open_gaps: list[tuple[int, str]] = []
        self._tasks: list[asyncio.Task] = []

    async def start(self) -> "PrivateSession":
        """Subscribe every private channel of the protocol and run the connection."""
        conn = self.connection
        if self._pool is not None and self._private_streams:
            conn.lost_windows = []   # kept for _record_lost_windows
        await conn.set_channels(conn.venue.channels_for([]))
        self._tasks.append(asyncio.create_task(conn.run(), name=conn.connection_id))
        if self._reconcile is not None:
            self._tasks.append(asyncio.create_task(self._reconcile_loop(),
                                                   name=f"reconcile-{conn.connection_id}"))
        return self

    async def _reconcile_loop(self) -> None:
        conn = self.connection
        while True:
            await asyncio.sleep(self.poll_s)
            if conn.connects == self.reconciled_connects or not conn.subscribed:
                continue
            connects = conn.connects
            await self._record_lost_windows()
            covered = list(self.open_gaps)
            try:
                await self._reconcile(self.account)
            except Exception as exc:  # noqa: BLE001 - retried; the stream goes on meanwhile
                self.reconcile_errors += 1
                log.error("account %s: reconciliation failed (%s); retrying in %.0f s", self.account.label,
                          exc, self.retry_s)
                await asyncio.sleep(self.retry_s)
                continue
            await self._resolve(covered)   # before it counts: a reader of ``reconciled`` sees the gaps resolved
            self.reconciled_connects = connects
            self.reconciled += 1

    async def _record_lost_windows(self) -> None:
        """The connection's new lost windows as open gaps (kept for the next try when the
        database refuses them)."""
        conn = self.connection
        windows = conn.lost_windows
        if not windows:   # None: not kept (no pool or no private streams)
            return
        conn.lost_windows = []
        gaps = [Gap(conn.venue.name, stream, "*", start, end, None, None, "disconnect", GapStatus.OPEN,
                    f"private connection {conn.connection_id} lost this window; reconciled over REST "
                    "after the reconnect", account_id=self.account.account_id)
                for start, end in windows for stream in sorted(self._private_streams)]
        try:
            async with self._pool.acquire() as db, db.transaction():
                ids = [await insert_gap(db, g) for g in gaps]
        except (OSError, asyncpg.PostgresError) as exc:
            log.error("account %s: lost windows not recorded yet (%s)", self.account.label, exc)
            conn.lost_windows[:0] = windows
            return
        self.open_gaps += [(i, g.stream) for i, g in zip(ids, gaps)]

    async def _resolve(self, covered: list[tuple[int, str]]) -> None:
        """Mark ``covered`` (recorded before a reconciliation that succeeded) resolved."""
        if not covered or self._pool is None:
            return
        rows = [(gap_id, "unrecoverable" if self._private_streams[stream] else "backfilled",
                 self._private_streams[stream] or None) for gap_id, stream in covered]
        try:
            async with self._pool.acquire() as db:
                await db.executemany(
                    "UPDATE data_gaps SET status = $2, reason = coalesce($3, reason), resolved_at = now() "
                    "WHERE gap_id = $1 AND status = 'open'", rows)
        except (OSError, asyncpg.PostgresError) as exc:
            log.error("account %s: reconciled gaps not marked yet (%s)", self.account.label, exc)
            return
        done = {gap_id for gap_id, _ in covered}
        self.open_gaps = [g for g in self.open_gaps if g[0] not in done]

    async def stop(self) -> None:
        """Close the connection (rows received stay in the pipeline) and end the tasks."""
        await self.connection.stop()
        for task in self._tasks[1:]:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)


@dataclass
class DayReconciliation:
    """What reconciling one account for one day did (Dagster's ``private_reconciliation``).

    Attributes:
        account_id / label: the account.
        fetched / inserted: rows per table fetched over REST / new to the database.
        executions_rest: distinct executions REST lists for the day.
        executions_stored: executions stored for the day afterwards (stream and REST).
        gaps_resolved: the account's open private gaps (``data_gaps``) inside the day that this
            reconciliation resolved, per stream and new status (``"executions": {"backfilled":
            2}``); empty when it failed.
        reached_back_us: None, or where the REST window began when an open private gap that
            ends inside the day began before it (a window across midnight): that gap's start
            (µs since the epoch, UTC). The rows fetched before the day count in ``fetched`` and
            ``inserted``, not in ``executions_rest``.
        error: why the account could not be reconciled (names no secret), else None.
    """

    account_id: int
    label: str
    fetched: dict[str, int] = field(default_factory=dict)
    inserted: dict[str, int] = field(default_factory=dict)
    executions_rest: int = 0
    executions_stored: int = 0
    gaps_resolved: dict[str, dict[str, int]] = field(default_factory=dict)
    reached_back_us: int | None = None
    error: str | None = None


async def reconcile_day(dsn: str, venue: "Venue", settings: "VenueSettings", day: str, *,
                        max_concurrency: int = 4,
                        labels: Collection[str] | None = None) -> list[DayReconciliation]:
    """Reconcile every enabled account of ``venue`` (or those of them labelled in ``labels``)
    over the UTC ``day`` (executions and order updates; for the current day up to now followed
    by REST snapshots of positions and wallet, none for a past window) with a writer and a REST
    client of its own; the accounts one after the other, so the client's pace (at most
    ``max_concurrency`` requests in flight) is the whole budget. Empty when the venue records no
    private data or no enabled account matches.

    An account reconciled without error has its open private gaps that lie inside the day (up
    to now on the current day) resolved, as the collector's reconciliation after a reconnect
    would have: ``unrecoverable`` with the stream's ``Venue.private_streams`` reason where REST
    cannot restore the stream, ``backfilled`` where it can, except that on a past day a stream
    outside ``Venue.private_history_streams`` (a current snapshot only, e.g. positions) is
    ``unrecoverable``: no snapshot of that day can be had any more. So the gaps of windows whose
    reconciliations all failed (bad key, REST down) are settled by the day's asset once it runs.
    A window across midnight is settled by the day it ends in: when an open gap that ends inside
    the day began before it, executions and order updates are first fetched from that gap's
    start to the day's (a past window: no snapshots), and the gaps inside the whole span are
    resolved (``reached_back_us``).

    Raises:
        asyncpg errors: the database failed (a REST or secret failure is the account's ``error``).
    """
    from collector_daemon.core.days import day_window
    from collector_daemon.storage.writer import BatchWriter

    if venue.private_ws_url(settings) is None:
        return []
    start, end = day_window(day)
    start_us, end_us = int(start.timestamp() * 1e6), int(end.timestamp() * 1e6)
    until_us = end_us if end_us <= time.time_ns() // 1000 else None   # current day: up to now
    writer = BatchWriter(dsn, venue=venue.name, pool_size=1)
    await writer.open()
    out: list[DayReconciliation] = []
    try:
        async with writer.pool.acquire() as conn:
            accounts = [a for a in await load_accounts(conn, venue.name)
                        if labels is None or a.label in labels]
        async with budgeted_client(venue, settings, dsn, max_concurrency=max_concurrency) as rest:
            for account in accounts:
                report = DayReconciliation(account.account_id, account.label)
                out.append(report)
                fills: set[str] = set()   # the tables of executions (an exec_id column)
                async with writer.pool.acquire() as conn:
                    report.reached_back_us = await conn.fetchval(
                        "SELECT min(gap_start) FROM data_gaps WHERE venue = $1 AND account_id = $2 "
                        "AND status = 'open' AND gap_start < $3 AND gap_end > $3 AND gap_end <= $4",
                        venue.name, account.account_id, start_us, end_us)
                windows = [(start_us, until_us, True)]
                if report.reached_back_us is not None:
                    windows.insert(0, (report.reached_back_us, start_us, False))
                try:
                    for since_us, to_us, in_day in windows:
                        async for table, rows in venue.reconcile_account(rest, settings, account, since_us, to_us):
                            report.fetched[table.name] = report.fetched.get(table.name, 0) + len(rows)
                            report.inserted[table.name] = (report.inserted.get(table.name, 0)
                                                           + (await writer.write(table, rows) if rows else 0))
                            if "exec_id" in table.columns:
                                fills.add(table.name)
                                report.executions_rest += len(rows) if in_day else 0
                except (*venue.rest_errors, SecretError) as exc:
                    report.error = str(exc)[:500]
                async with writer.pool.acquire() as conn:
                    if report.error is None:
                        report.gaps_resolved = await _resolve_day_gaps(
                            conn, venue, account.account_id, report.reached_back_us or start_us, end_us,
                            past=until_us is not None)
                    report.executions_stored = sum([await conn.fetchval(
                        f"SELECT count(*) FROM {name} WHERE account_id = $1 AND exchange_ts >= $2 "
                        "AND exchange_ts < $3", account.account_id, start_us, end_us) for name in sorted(fills)])
    finally:
        await writer.close()
    return out


async def _resolve_day_gaps(conn: asyncpg.Connection, venue: "Venue", account_id: int, start_us: int,
                            end_us: int, *, past: bool) -> dict[str, dict[str, int]]:
    """Resolve the account's open private gaps inside ``[start_us, end_us)`` (µs since the
    epoch, UTC; the current day: up to now; ``start_us`` before the day when the reconciliation
    reached back to a gap across midnight) after a successful day reconciliation
    (:func:`reconcile_day`; ``conn`` encodes timestamps as µs integers, as the writer's do); per
    stream, how many became which status."""
    out: dict[str, dict[str, int]] = {}
    for stream, reason in sorted(venue.private_streams.items()):
        if not reason and past and stream not in venue.private_history_streams:
            reason = (f"{venue.name} REST serves {stream} as the current snapshot only, and no "
                      "reconciliation succeeded while this window's day was current")
        status = "unrecoverable" if reason else "backfilled"
        n = await conn.fetchval(
            "WITH done AS (UPDATE data_gaps SET status = $4, reason = coalesce($5, reason), resolved_at = now() "
            "WHERE venue = $1 AND account_id = $2 AND stream = $3 AND status = 'open' "
            "AND gap_start >= $6 AND gap_end <= least($7, now()) RETURNING 1) SELECT count(*) FROM done",
            venue.name, account_id, stream, status, reason or None, start_us, end_us)
        if n:
            out[stream] = {status: n}
    return out


# --------------------------------------------------------------------------------------------------
# tickvault accounts add|list|disable
# --------------------------------------------------------------------------------------------------

def add_arguments(parser: argparse.ArgumentParser) -> None:
    """``tickvault accounts add|list|disable|enable|grant`` (database: ``TICKVAULT_DATABASE_URL``)."""
    what = parser.add_subparsers(dest="accounts_command", required=True)
    add = what.add_parser("add", help="register an account (its secret stays where --secret-ref points)")
    add.add_argument("--venue", required=True)
    add.add_argument("--label", required=True, help="a name, unique per venue")
    add.add_argument("--key-id", required=True, help="the API key (public part)")
    add.add_argument("--secret-ref", required=True,
                     help="where the secret is read from: env:VARIABLE or file:/path (never the secret)")
    add.add_argument("--run-tag", help="tag stored with every private row of the account")
    lst = what.add_parser("list", help="the registered accounts (no secrets)")
    lst.add_argument("--venue")
    for verb in ("disable", "enable"):
        p = what.add_parser(verb, help=f"{verb} an account (the collector follows within seconds)")
        p.add_argument("--venue", required=True)
        p.add_argument("label")
    grant = what.add_parser("grant", help=(
        "let a database role read this account's private rows (and no other account's: "
        "row-level security)"))
    grant.add_argument("--venue", required=True)
    grant.add_argument("--role", required=True, help="an existing database role (a tenant's)")
    grant.add_argument("label")


def main(args: argparse.Namespace, dsn: str) -> int:
    """Run ``tickvault accounts ...``. Exit codes: 0 done, 1 nothing matched, 2 bad input."""
    import psycopg

    cmd = args.accounts_command
    with psycopg.connect(dsn, autocommit=True) as conn:
        if cmd == "add":
            scheme, _, where = args.secret_ref.partition(":")
            if scheme not in ("env", "file") or not where:
                print("tickvault accounts add: --secret-ref must be env:VARIABLE or file:/path "
                      "(a reference, never the secret itself)", file=sys.stderr)
                return 2
            try:
                row = conn.execute(
                    "INSERT INTO accounts (label, venue, key_id, secret_ref, run_tag) "
                    "VALUES (%s, %s, %s, %s, %s) RETURNING account_id",
                    (args.label, args.venue, args.key_id, args.secret_ref, args.run_tag)).fetchone()
            except psycopg.errors.UniqueViolation:
                print(f"tickvault accounts add: {args.venue} already has an account with this label "
                      "or key", file=sys.stderr)
                return 2
            print(f"account {row[0]} added: {args.venue} {args.label}")
            return 0
        if cmd == "list":
            rows = conn.execute(
                "SELECT account_id, venue, label, key_id, secret_ref, run_tag, enabled, updated_at "
                "FROM accounts WHERE %s::text IS NULL OR venue = %s ORDER BY venue, account_id",
                (args.venue, args.venue)).fetchall()
            print("id\tvenue\tlabel\tkey_id\tsecret_ref\trun_tag\tenabled\tupdated_at")
            for r in rows:
                print("\t".join("" if v is None else str(v) for v in r))
            return 0
        if cmd == "grant":
            return _grant(conn, args.venue, args.label, args.role)
        cur = conn.execute("UPDATE accounts SET enabled = %s WHERE venue = %s AND label = %s",
                           (cmd == "enable", args.venue, args.label))
        if cur.rowcount == 0:
            print(f"tickvault accounts {cmd}: no {args.venue} account labelled {args.label!r}",
                  file=sys.stderr)
            return 1
        print(f"account {args.venue} {args.label} {cmd}d")
        return 0


def _grant(conn, venue: str, label: str, role: str) -> int:
    """Add ``role`` as a reader of the account and grant it SELECT on every table with the
    ``tickvault_tenant_read`` row-level security policy (the private tables)."""
    from psycopg import sql

    if conn.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (role,)).fetchone() is None:
        print(f"tickvault accounts grant: no database role {role!r} (CREATE ROLE it first)", file=sys.stderr)
        return 2
    row = conn.execute("SELECT account_id FROM accounts WHERE venue = %s AND label = %s", (venue, label)).fetchone()
    if row is None:
        print(f"tickvault accounts grant: no {venue} account labelled {label!r}", file=sys.stderr)
        return 1
    tables = [t for (t,) in conn.execute(
        "SELECT tablename FROM pg_policies WHERE policyname = 'tickvault_tenant_read' "
        "AND schemaname = current_schema() ORDER BY tablename").fetchall()]
    with conn.transaction():
        conn.execute("INSERT INTO account_readers (role_name, account_id) VALUES (%s, %s) "
                     "ON CONFLICT DO NOTHING", (role, row[0]))
        conn.execute(sql.SQL("GRANT USAGE ON SCHEMA {} TO {}").format(
            sql.Identifier(conn.execute("SELECT current_schema()").fetchone()[0]), sql.Identifier(role)))
        conn.execute(sql.SQL("GRANT SELECT ON {} TO {}").format(
            sql.SQL(", ").join(map(sql.Identifier, tables)), sql.Identifier(role)))
    print(f"role {role} reads account {venue} {label} ({row[0]}) in {', '.join(tables)}")
    return 0
