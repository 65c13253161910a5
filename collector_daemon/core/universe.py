"""The universe store: the instruments of each venue and the ranked subscription set per
universe group (``universe_versions.currency``: a Deribit currency, a Bybit category, ...),
shared by the collector and the Dagster ``instrument_universe`` asset.

Refresh (:func:`refresh_universe`):

1. the venue's ``fetch_universe`` (:class:`collector_daemon.venues.Venue`, through its one REST
   client) lists the live instruments of a group and ranks them (top N by open interest, or all);
2. ``collector_daemon.storage.queries.upsert_instruments`` upserts ``instruments`` and marks the
   venue's instruments missing from the listing (expired, delisted) inactive;
3. ``instruments.subscription_rank`` is set (1 = highest open interest, NULL = not subscribed);
4. when the *set* of subscribed names differs from the latest ``universe_versions`` row of that
   venue and group, a new row is inserted. Its insert trigger sends
   ``NOTIFY tickvault_universe, '{"venue": ..., "currency": ..., "version": N}'``.

All four steps run in one transaction, so the notification is delivered only once the new set
is committed and readable.

Signalling choice: LISTEN/NOTIFY for immediacy, backed by the version table as the durable
state. A notification carries no data (the collector always re-reads the table), so a
notification lost while the collector's listening connection was down is harmless as long as
the collector re-reads the latest version whenever that connection is (re)established. A
polled version row alone would add a polling delay and a query per poll for a change that
happens a few times a day.

What the collector does (see :func:`read_universe`; asyncpg, any codec)::

    conn = await asyncpg.connect(dsn)          # a dedicated connection, not from the writer pool
    await conn.add_listener(UNIVERSE_CHANNEL, on_notify)   # on_notify(conn, pid, channel, payload)
    current = await read_universe(conn, venue.name, group)
    names = current.subscribed if current else (await venue.fetch_universe(rest, settings, group)).selected
    # on a notification or every TICKVAULT_UNIVERSE_REFRESH_S: read_universe again, diff the
    #   names against the connections' subscriptions -> subscribe(added), unsubscribe(removed).
    # when the listening connection drops: reconnect, add_listener again, read_universe again
    #   and diff (catches changes made while it was down).

REST is the collector's fallback only while the table holds no version for that venue and
group (a fresh database before the first ``instrument_universe`` run), or none that serves
its kinds and top N (:meth:`UniverseVersion.serves`: then it subscribes from REST without
writing, and warns), or nobody refreshed the table for ``TICKVAULT_UNIVERSE_STALE_S`` (no
Dagster running: then it refreshes the table itself, as the asset would).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol

import asyncpg

from collector_daemon.storage import queries
from collector_daemon.storage.writer import init_connection

if TYPE_CHECKING:
    from collector_daemon.venues import RestClient, Venue, VenueSettings

#: PostgreSQL NOTIFY channel announcing a new universe version.
UNIVERSE_CHANNEL = "tickvault_universe"


class FetchedUniverse(Protocol):
    """What a venue's ``fetch_universe`` returns for one group.

    Attributes:
        open_interest: instrument_name -> open interest (in the venue's unit) where known.
        selected: instrument names to subscribe, highest open interest first.
    """

    open_interest: dict[str, float]
    selected: list[str]

    def instrument_rows(self) -> list[tuple]:
        """``instruments`` rows (``rows.INSTRUMENTS`` order) of every live instrument."""


@dataclass(frozen=True)
class UniverseVersion:
    """One ``universe_versions`` row.

    Attributes:
        version: monotonically increasing id (bigserial).
        venue, currency: e.g. ``"deribit"``, ``"ETH"``.
        created_us: when it was written, µs since the Unix epoch.
        top_n: N of "top N by open interest"; None = every live instrument.
        instruments: live instruments the venue listed at that refresh.
        subscribed: instrument names to subscribe, highest open interest first.
        kinds: instrument kinds the set was chosen from (``["option"]``, ``["option", "future"]``);
            None for rows written before the column existed (options only then).
    """

    version: int
    venue: str
    currency: str
    created_us: int
    top_n: int | None
    instruments: int
    subscribed: list[str]
    kinds: list[str] | None = None

    def serves(self, kinds: tuple[str, ...], top_n: int | None) -> list[str] | None:
        """The names a collector of ``kinds`` and ``top_n`` (None = all) subscribes from this
        set, or None when the set cannot serve it: chosen from other kinds, or from fewer
        instruments than it wants. The set is ranked, so a larger set serves a smaller top N."""
        if set(self.kinds or ("option",)) != set(kinds):
            return None
        if self.top_n is None:
            return self.subscribed if top_n is None else self.subscribed[:top_n]
        if top_n is None or top_n > self.top_n:
            return None
        return self.subscribed[:top_n]


@dataclass(frozen=True)
class UniverseRefresh:
    """Result of :func:`apply_universe`.

    Attributes:
        instruments: live instruments upserted.
        with_open_interest: how many of them had an open interest in the book summary.
        deactivated: instruments of the venue newly marked inactive (missing from the listing).
        selected: the ranked subscription set (highest open interest first).
        version: the latest version after the refresh (new or unchanged).
        changed: True when a new version was written (and NOTIFY sent).
        added, removed: names entering / leaving the set compared with the previous version.
    """

    instruments: int
    with_open_interest: int
    deactivated: int
    selected: list[str]
    version: int
    changed: bool
    added: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)


_READ_SQL = """
SELECT version, venue, currency, (extract(epoch FROM created_at) * 1000000)::bigint AS created_us,
       top_n, instruments, subscribed, kinds
FROM universe_versions
WHERE venue = $1 AND currency = $2
ORDER BY version DESC
LIMIT 1
"""


async def read_universe(conn: asyncpg.Connection, venue: str, currency: str) -> UniverseVersion | None:
    """The latest subscription set of ``venue``/``currency``, or None when none was written yet
    (then the collector falls back to REST). Works on any asyncpg connection, whatever its
    timestamp codec."""
    row = await conn.fetchrow(_READ_SQL, venue, currency)
    if row is None:
        return None
    return UniverseVersion(row["version"], row["venue"], row["currency"], row["created_us"],
                           row["top_n"], row["instruments"], list(row["subscribed"]),
                           list(row["kinds"]) if row["kinds"] is not None else None)


def parse_notification(payload: str) -> tuple[str, str, int]:
    """``(venue, currency, version)`` of a ``tickvault_universe`` notification payload.

    Raises:
        ValueError: the payload is not the JSON object the trigger sends.
    """
    try:
        data = json.loads(payload)
        return str(data["venue"]), str(data["currency"]), int(data["version"])
    except (json.JSONDecodeError, KeyError, TypeError) as exc:
        raise ValueError(f"not a universe notification: {payload[:200]!r}") from exc


async def apply_universe(conn: asyncpg.Connection, universe: FetchedUniverse, *, venue: str,
                         currency: str, top_n: int | None,
                         kinds: tuple[str, ...] = ("option",)) -> UniverseRefresh:
    """Write one fetched universe in a single transaction (steps 2-4 of the module docstring).
    ``kinds`` and ``top_n`` are what the universe was fetched with; a new version is written
    when the set of names, the kinds or the top N changed.

    ``conn`` must be set up with ``collector_daemon.storage.writer.init_connection`` (what
    ``upsert_instruments`` expects).
    """
    rows = universe.instrument_rows()
    names = [r[1] for r in rows]
    selected = list(universe.selected)
    async with conn.transaction():
        # Serialise concurrent refreshes of the same set (hourly schedule + manual run).
        await conn.execute("SELECT pg_advisory_xact_lock(hashtext('tickvault_universe:' || $1 || ':' || $2))",
                           venue, currency)
        was_active = await conn.fetchval(
            "SELECT count(*) FROM instruments WHERE venue = $1 AND is_active "
            "AND NOT (instrument_name = ANY($2::text[]))", venue, names)
        await queries.upsert_instruments(conn, venue, rows)
        # the group's ranked instruments are the previous version's set (ranks are written only
        # here): a group is not always a base currency (Bybit's "linear" holds BTCUSDT, ETHUSDT)
        previous = await read_universe(conn, venue, currency)
        prev_set = set(previous.subscribed) if previous else None
        await conn.execute(
            "UPDATE instruments SET subscription_rank = NULL WHERE venue = $1 "
            "AND subscription_rank IS NOT NULL AND instrument_name = ANY($2::text[]) "
            "AND NOT (instrument_name = ANY($3::text[]))", venue, sorted(prev_set or ()), selected)
        await conn.execute(
            "UPDATE instruments i SET subscription_rank = s.rank FROM "
            "unnest($2::text[]) WITH ORDINALITY AS s(name, rank) "
            "WHERE i.venue = $1 AND i.instrument_name = s.name "
            "AND i.subscription_rank IS DISTINCT FROM s.rank", venue, selected)
        if (previous is not None and prev_set == set(selected) and previous.top_n == top_n
                and set(previous.kinds or ("option",)) == set(kinds)):
            return UniverseRefresh(len(rows), len(universe.open_interest), was_active, selected,
                                   previous.version, False)
        version = await conn.fetchval(
            "INSERT INTO universe_versions (venue, currency, top_n, instruments, subscribed, kinds) "
            "VALUES ($1, $2, $3, $4, $5, $6) RETURNING version",
            venue, currency, top_n, len(rows), selected, list(kinds))
    prev_set = prev_set or set()
    return UniverseRefresh(len(rows), len(universe.open_interest), was_active, selected, version,
                           True, sorted(set(selected) - prev_set), sorted(prev_set - set(selected)))


async def refresh_universe(dsn: str, venue: "Venue", settings: "VenueSettings", rest: "RestClient",
                           group: str) -> UniverseRefresh:
    """Fetch the universe of ``group`` (a currency, a category) of ``venue`` over REST and apply
    it to the database at ``dsn`` with the settings' top N and kinds.

    Raises:
        venue.rest_errors: REST failed for good (nothing is written then).
        asyncpg.PostgresError / OSError: the database is unreachable or refused the write.
    """
    universe = await venue.fetch_universe(rest, settings, group)
    conn = await asyncpg.connect(dsn)
    try:
        await init_connection(conn)
        return await apply_universe(conn, universe, venue=venue.name, currency=group,
                                    top_n=settings.top_n, kinds=venue.universe_kinds(settings))
    finally:
        await conn.close()
