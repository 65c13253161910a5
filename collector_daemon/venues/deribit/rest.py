"""The one Deribit REST client, shared by the daemon (universe, gap recovery) and by Dagster
(universe refresh, backfill).

Requests are ``GET {base_url}/public/<method>?<params>`` (JSON-RPC over HTTP, Deribit API v2).
Pacing follows Deribit's credit system (https://docs.deribit.com/articles/rate-limits): the
default non-matching-engine pool refills at ~20 requests/s with a burst of 100, and
``public/get_instruments`` at 1 request/s with a burst of 50. Running out of credits returns error
10028 *and ends the session*, so the client paces itself below those limits, caps concurrency
(each concurrent request is a connection counted in the 32-per-IP budget), and retries 10028,
HTTP 429 and transport errors with capped exponential backoff and jitter.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import httpx
import msgspec
from aiolimiter import AsyncLimiter
from tenacity import (
    AsyncRetrying, retry_if_exception, stop_after_attempt, wait_random_exponential,
)

from collector_daemon.venues import RestClient
from collector_daemon.venues.deribit import messages as m

#: Deribit error codes that mean "slow down and try again".
RETRYABLE_CODES = {10028, 10040, 11051, 10041}
#: Most trades a get_last_trades_* page returns.
MAX_PAGE = 1000


class DeribitRestError(RuntimeError):
    """A REST call failed for good. ``code`` is Deribit's error code or the HTTP status."""

    def __init__(self, method: str, code: int, message: str) -> None:
        super().__init__(f"{method}: {code} {message}")
        self.method = method
        self.code = code


def _retryable(exc: BaseException) -> bool:
    if isinstance(exc, DeribitRestError):
        return exc.code in RETRYABLE_CODES or exc.code == 429 or exc.code >= 500
    return isinstance(exc, httpx.TransportError)


class DeribitRest(RestClient):
    """Async Deribit REST client with pacing, a concurrency cap and retries.

    Args:
        base_url: e.g. ``https://www.deribit.com/api/v2`` (or the emulator's ``rest_url``).
        max_concurrency: simultaneous requests (connections toward the 32-per-IP budget).
        attempts: tries per call before :class:`DeribitRestError` is raised.
        backoff_max_s: cap of the exponential backoff between tries (s).

    Use as ``async with DeribitRest(url) as rest: ...``.
    """

    def __init__(self, base_url: str, *, max_concurrency: int = 4, attempts: int = 8,
                 backoff_max_s: float = 30.0, timeout_s: float = 30.0) -> None:
        self.base_url = base_url.rstrip("/")
        self._client = httpx.AsyncClient(timeout=timeout_s,
                                         limits=httpx.Limits(max_connections=max_concurrency))
        self._semaphore = asyncio.Semaphore(max_concurrency)
        self._default_limiter = AsyncLimiter(100, 5)   # 20/s sustained, burst 100
        self._instruments_limiter = AsyncLimiter(50, 50)  # 1/s sustained, burst 50
        self._attempts = attempts
        self._backoff_max_s = backoff_max_s
        self.calls = 0
        self.retries = 0

    async def aclose(self) -> None:
        """Close the HTTP connection pool."""
        await self._client.aclose()

    async def call(self, method: str, params: dict[str, Any]) -> bytes:
        """Call ``public/<method>`` and return the raw JSON of its ``result``.

        Raises:
            DeribitRestError: the server answered with an error that is not retryable, or
                retries ran out.
        """
        limiter = self._instruments_limiter if method == "get_instruments" else self._default_limiter
        query = {k: (str(v).lower() if isinstance(v, bool) else v)
                 for k, v in params.items() if v is not None}
        async for attempt in AsyncRetrying(
            retry=retry_if_exception(_retryable),
            wait=wait_random_exponential(multiplier=0.5, max=self._backoff_max_s),
            stop=stop_after_attempt(self._attempts), reraise=True,
        ):
            with attempt:
                if attempt.retry_state.attempt_number > 1:
                    self.retries += 1
                async with limiter, self._semaphore:
                    self.calls += 1
                    resp = await self._client.get(f"{self.base_url}/public/{method}", params=query)
                return self._result(method, resp)
        raise AssertionError("unreachable")

    @staticmethod
    def _result(method: str, resp: httpx.Response) -> bytes:
        try:
            env = m.envelope_decoder.decode(resp.content)
        except msgspec.DecodeError:
            raise DeribitRestError(method, resp.status_code, resp.text[:200]) from None
        if env.error is not None:
            raise DeribitRestError(method, env.error.code, env.error.message)
        if resp.status_code != 200 or not env.result:
            raise DeribitRestError(method, resp.status_code, resp.text[:200])
        return bytes(env.result)

    async def get_instruments(self, currency: str, kind: str | None = "option",
                              expired: bool = False) -> list[m.Instrument]:
        """``public/get_instruments``: live (or recently expired) instruments of a currency."""
        raw = await self.call("get_instruments",
                              {"currency": currency, "kind": kind, "expired": expired})
        return m.instruments_decoder.decode(raw)

    async def get_book_summary_by_currency(self, currency: str,
                                           kind: str | None = "option") -> list[m.BookSummary]:
        """``public/get_book_summary_by_currency``: one row per instrument, with open interest."""
        raw = await self.call("get_book_summary_by_currency", {"currency": currency, "kind": kind})
        return m.book_summary_decoder.decode(raw)

    async def trades_by_seq(self, instrument_name: str, start_seq: int,
                            end_seq: int) -> AsyncIterator[list[m.Trade]]:
        """Pages of the trades of one instrument with ``start_seq <= trade_seq <= end_seq``,
        ascending (``public/get_last_trades_by_instrument``, count=1000 until a short page).

        Raises:
            DeribitRestError: a call failed, or the server contradicted itself (an empty page
                with ``has_more``, or a page that does not advance past ``start_seq``): the
                range cannot be paged, and stopping quietly would pass a hole off as complete.
        """
        method = "get_last_trades_by_instrument"
        seq = start_seq
        while seq <= end_seq:
            page = m.trades_page_decoder.decode(await self.call(
                method, {"instrument_name": instrument_name, "start_seq": seq, "end_seq": end_seq,
                         "count": MAX_PAGE, "sorting": "asc"}))
            if page.trades:
                yield page.trades
            if len(page.trades) < MAX_PAGE and not page.has_more:
                return
            last = max((t.trade_seq for t in page.trades if t.trade_seq is not None), default=None)
            if last is None or last < seq:
                raise _stuck(method, page, f"{instrument_name} start_seq={seq}")
            seq = last + 1

    async def trades_by_time(self, currency: str, start_ms: int, end_ms: int,
                             kind: str = "option") -> AsyncIterator[list[m.Trade]]:
        """Pages of every trade of a currency and kind with ``start_ms <= timestamp <= end_ms``
        (ms since epoch), ascending (``public/get_last_trades_by_currency_and_time``). Deribit
        keeps only the last 24 h there; older windows return nothing. Trades sharing the last
        page's final millisecond are fetched again on the next page (dedupe by trade_id).

        Raises:
            DeribitRestError: a call failed, or the server contradicted itself (an empty page
                with ``has_more``, or a page ending before ``start_timestamp``).
        """
        method = "get_last_trades_by_currency_and_time"
        start = start_ms
        seen: set[str] = set()
        while start <= end_ms:
            page = m.trades_page_decoder.decode(await self.call(
                method, {"currency": currency, "kind": kind, "start_timestamp": start,
                         "end_timestamp": end_ms, "count": MAX_PAGE, "sorting": "asc"}))
            fresh = [t for t in page.trades if t.trade_id not in seen]
            if fresh:
                yield fresh
            if len(page.trades) < MAX_PAGE and not page.has_more:
                return
            if not page.trades or page.trades[-1].timestamp < start:
                raise _stuck(method, page, f"{currency} {kind} start_timestamp={start}")
            last_ms = page.trades[-1].timestamp
            if not fresh:  # a whole page within one ms: step past it rather than loop
                last_ms += 1
            seen = {t.trade_id for t in page.trades if t.timestamp == last_ms}
            start = last_ms


def _stuck(method: str, page: m.TradesPage, where: str) -> DeribitRestError:
    """The error of a trade page that cannot be followed (see the pagers' Raises)."""
    what = "an empty page with has_more" if not page.trades else "a page that does not advance"
    return DeribitRestError(method, 200, f"{what} at {where}: cannot page further")
