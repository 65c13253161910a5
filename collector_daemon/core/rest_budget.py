"""REST request budgets: one exchange IP limit shared by every process that calls the exchange.

An exchange limits requests per IP (Bybit: 600 per 5 s, beyond that HTTP 403 and a ban of at
least 10 minutes; ``docs/v5/rate-limit/rate-limit.mdx``). The collector daemon, its workers and
Dagster's backfill and reconciliation runs may all run on one host at once, each with its own
REST client: a pace kept per client would add up. A :class:`SharedBudget` keeps the token bucket
in PostgreSQL (the UNLOGGED table ``rest_budget``, ``schema/0014.rest_budget.sql``), one row per
budget key, taken by one atomic ``INSERT ... ON CONFLICT DO UPDATE ... RETURNING`` per request
on the database's clock, so every process sharing the key shares the pace. :class:`LocalBudget`
is the same bucket in memory (one process; also the fallback while the database cannot be
reached).

The bucket (a GCRA-style token bucket): ``burst`` tokens at most, refilled at
``(requests - burst) / period_s`` per second; each request takes one token, running into debt
when none is left and waiting until the debt is paid. Any window of ``period_s`` seconds then
holds at most ``requests`` request starts (``burst`` + the refill), whatever the concurrency.
An exchange ban (:meth:`RestBudget.ban`) moves the bucket's clock past the ban's end with no
token left, so every process sharing it waits the ban out and resumes at the pace.

Wiring: :meth:`collector_daemon.venues.Venue.request_budget` gives a venue's rate (None = the
venue needs none); :func:`budgeted_client` builds the venue's REST client with the budget the
settings ask for (``TICKVAULT_REST_BUDGET_SHARED``, ``TICKVAULT_REST_BUDGET_KEY``).
"""

from __future__ import annotations

import abc
import asyncio
import logging
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

import asyncpg

if TYPE_CHECKING:
    from collector_daemon.settings import RestBudgetSettings
    from collector_daemon.venues import RestClient, Venue, VenueSettings

log = logging.getLogger(__name__)

#: While the database cannot be reached, a shared budget paces locally and retries it this often (s).
RECONNECT_S = 10.0

_TAKE = """
INSERT INTO rest_budget AS b (budget_key, tokens, updated_at) VALUES ($1::text, $2::float8 - 1, clock_timestamp())
ON CONFLICT (budget_key) DO UPDATE SET
    tokens = LEAST($2::float8, b.tokens + extract(epoch FROM clock_timestamp() - b.updated_at)::float8 * $3::float8) - 1,
    updated_at = clock_timestamp()
RETURNING tokens
"""

_BAN = """
UPDATE rest_budget SET
    tokens = 0,
    updated_at = GREATEST(clock_timestamp() + make_interval(secs => $2::float8),
                          updated_at + make_interval(secs => GREATEST(0, -tokens) / $3::float8))
WHERE budget_key = $1::text
"""


@dataclass(frozen=True)
class RequestRate:
    """At most ``requests`` request starts in any ``period_s`` seconds, of which ``burst`` may
    start at once after a quiet time (default: a tenth, at least 1)."""

    requests: int
    period_s: float
    burst: int | None = None

    def __post_init__(self) -> None:
        if self.requests < 2 or self.period_s <= 0:
            raise ValueError(f"a request rate needs requests >= 2 and period_s > 0, got {self}")

    @property
    def bucket_size(self) -> int:
        """Tokens the bucket holds at most."""
        return self.burst if self.burst is not None else max(1, self.requests // 10)

    @property
    def per_s(self) -> float:
        """Refill rate, tokens per second: ``(requests - bucket_size) / period_s``."""
        return (self.requests - self.bucket_size) / self.period_s


class RestBudget(abc.ABC):
    """A token bucket of REST requests. ``await acquire()`` before each request;
    ``await ban(s)`` when the exchange answered with a ban. ``waited_s`` sums the waits."""

    def __init__(self, rate: RequestRate) -> None:
        self.rate = rate
        self.waited_s = 0.0
        self._bans = 0          # bans seen by this process (a wait that spans one re-takes)

    async def acquire(self) -> None:
        """Take one token, waiting for it (and for a ban's end) when the bucket is in debt.

        Raises:
            nothing of its own: a shared budget whose database fails paces locally.
        """
        while True:
            bans = self._bans
            wait = max(0.0, -await self._take() / self.rate.per_s)
            if wait > 0:
                self.waited_s += wait
                await asyncio.sleep(wait)
            if bans == self._bans:
                return

    async def ban(self, seconds: float) -> None:
        """The exchange banned the IP for ``seconds``: nobody sharing the bucket starts a request
        before then; afterwards the pace resumes from an empty bucket."""
        self._bans += 1
        await self._ban(seconds)

    @abc.abstractmethod
    async def _take(self) -> float:
        """Take a token; the tokens left (negative: the debt to wait out at :attr:`RequestRate.per_s`)."""

    @abc.abstractmethod
    async def _ban(self, seconds: float) -> None:
        """Empty the bucket and move its clock ``seconds`` ahead (or past its debt, if later)."""

    async def aclose(self) -> None:
        """Release what the budget holds (a database connection)."""


class LocalBudget(RestBudget):
    """The bucket in this process's memory (monotonic clock)."""

    def __init__(self, rate: RequestRate) -> None:
        super().__init__(rate)
        self._tokens = float(rate.bucket_size)
        self._at = time.monotonic()

    async def _take(self) -> float:
        now = time.monotonic()
        self._tokens = min(self.rate.bucket_size, self._tokens + (now - self._at) * self.rate.per_s) - 1
        self._at = now
        return self._tokens

    async def _ban(self, seconds: float) -> None:
        now = time.monotonic()
        debt_end = self._at + max(0.0, -self._tokens) / self.rate.per_s
        self._tokens, self._at = 0.0, max(now + seconds, debt_end)


class SharedBudget(RestBudget):
    """The bucket in PostgreSQL's ``rest_budget`` row ``key`` (the database's clock), shared by
    every process using the same key and database. One dedicated connection, opened at the first
    request. While the database cannot be reached the budget paces with a :class:`LocalBudget`
    of the same rate (logged) and tries the database again every :data:`RECONNECT_S` seconds.

    Args:
        dsn: PostgreSQL URL of the database holding ``rest_budget`` (migration 0014).
        key: what the budget is shared by, e.g. ``bybit api.bybit.com`` (one exchange, one IP).
        rate: the pace.
    """

    def __init__(self, dsn: str, key: str, rate: RequestRate) -> None:
        super().__init__(rate)
        self.key = key
        self._dsn = dsn
        self._conn: asyncpg.Connection | None = None
        self._lock = asyncio.Lock()
        self._local = LocalBudget(rate)
        self._retry_at = 0.0

    async def _connection(self) -> asyncpg.Connection | None:
        if self._conn is not None and not self._conn.is_closed():
            return self._conn
        if time.monotonic() < self._retry_at:
            return None
        try:
            self._conn = await asyncpg.connect(self._dsn, timeout=5)
        except (OSError, asyncio.TimeoutError, asyncpg.PostgresError) as exc:
            self._retry_at = time.monotonic() + RECONNECT_S
            log.warning("REST budget %r: database unreachable (%s), pacing this process alone for %g s",
                        self.key, type(exc).__name__, RECONNECT_S)
            return None
        return self._conn

    async def _run(self, query: str, *args: object) -> float | None:
        async with self._lock:
            conn = await self._connection()
            if conn is None:
                return None
            try:
                return await conn.fetchval(query, *args)
            except (OSError, asyncio.TimeoutError, asyncpg.PostgresError,
                    asyncpg.InterfaceError) as exc:
                self._retry_at = time.monotonic() + RECONNECT_S
                log.warning("REST budget %r: %s, pacing this process alone for %g s",
                            self.key, type(exc).__name__, RECONNECT_S)
                await self._drop()
                return None

    async def _take(self) -> float:
        tokens = await self._run(_TAKE, self.key, float(self.rate.bucket_size), self.rate.per_s)
        return tokens if tokens is not None else await self._local._take()

    async def _ban(self, seconds: float) -> None:
        await self._local._ban(seconds)
        await self._run(_BAN, self.key, float(seconds), self.rate.per_s)

    async def _drop(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            conn.terminate()

    async def aclose(self) -> None:
        async with self._lock:
            conn, self._conn = self._conn, None
            if conn is not None and not conn.is_closed():
                await conn.close()


def default_key(venue: Venue, base_url: str) -> str:
    """``<venue> <REST host>``: the processes of one host calling one exchange host share it."""
    return f"{venue.name} {urlsplit(base_url).netloc or base_url}"


def budgeted_client(venue: Venue, settings: VenueSettings, dsn: str | None, *,
                    base_url: str | None = None, max_concurrency: int = 4,
                    budget_settings: RestBudgetSettings | None = None) -> RestClient:
    """The venue's REST client (:meth:`Venue.rest_client`) paced by a :class:`SharedBudget` when
    the venue has a :meth:`Venue.request_budget`, ``rest_budget_shared`` is on and ``dsn`` is
    given (else the client keeps its own pace). ``budget_settings`` default: read from the
    environment (``TICKVAULT_REST_BUDGET_*``); the collector passes its :class:`Settings`.
    The budget is closed with the client (``async with``)."""
    from collector_daemon.settings import RestBudgetSettings

    rest = venue.rest_client(settings, base_url=base_url, max_concurrency=max_concurrency)
    rate = venue.request_budget(settings)
    chosen = budget_settings if budget_settings is not None else RestBudgetSettings()
    if rate is not None and dsn and chosen.rest_budget_shared:
        key = chosen.rest_budget_key or default_key(venue, base_url or settings.rest_url)
        rest.budget = SharedBudget(dsn, key, rate)
    return rest
