"""The one Kraken spot REST client (public market data), shared by the daemon (universe, gap
recovery), ``tickvault history kraken-trades`` and Dagster.

Requests are ``GET {base_url}/0/public/<Method>?<params>``; answers are ``{"error":[...],
"result":{...}}``. Facts (../shared/reference/exchange-apis-and-peers.md C; docs.kraken.com
``get-recent-trades``, ``get-ohlc-data``, ``get-tradable-asset-pairs``, support article
206548367 on rate limits):

* ``Trades?pair=&since=`` returns up to 1,000 trades from ``since`` (Unix time in **ns**; 0 = the
  pair's first trade); ``result.last`` (ns, as a string) is the cursor of the next page, so paging
  reaches a pair's whole history;
* ``OHLC`` returns at most the 720 latest entries whatever ``since`` says;
* public calls are limited per IP, and per IP and pair for Trades and OHLC: about one call per
  second stays within them. The client paces Trades and OHLC at ``pair_interval_s`` per pair (and
  every call at ``ip_interval_s``); ``EAPI:Rate limit exceeded``, ``EGeneral:Too many requests``,
  HTTP 429/5xx and transport errors are retried with capped exponential backoff and jitter.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import httpx
import msgspec
from aiolimiter import AsyncLimiter

from collector_daemon.venues import RestClient
from collector_daemon.venues.kraken import messages as m

#: Kraken's answers meaning "slow down and try again".
RATE_LIMIT_ERRORS = ("EAPI:Rate limit exceeded", "EGeneral:Too many requests")
#: Endpoints limited per IP and pair.
PER_PAIR = ("Trades", "OHLC")
#: OHLC returns at most this many entries (older ones cannot be fetched).
OHLC_LIMIT = 720

_decode = msgspec.json.Decoder().decode


class KrakenRestError(RuntimeError):
    """A REST call failed for good. ``code``: Kraken's first error string or the HTTP status."""

    def __init__(self, method: str, code: str | int, message: str = "") -> None:
        super().__init__(f"{method}: {code} {message}".strip())
        self.method = method
        self.code = code


def _retryable(exc: BaseException) -> bool:
    if isinstance(exc, KrakenRestError):
        return exc.code in RATE_LIMIT_ERRORS or (isinstance(exc.code, int)
                                                 and (exc.code == 429 or exc.code >= 500))
    return isinstance(exc, httpx.TransportError)


class KrakenRest(RestClient):
    """Async Kraken public REST client with per-pair pacing and retries.

    Args:
        base_url: ``https://api.kraken.com`` (or the emulator's ``rest_url``; a trailing ``/0/public``
            is accepted).
        max_concurrency: simultaneous requests.
        pair_interval_s: least time between two Trades/OHLC calls of one pair (s).
        ip_interval_s: least time between two calls of any kind (s).
        attempts: tries per call before :class:`KrakenRestError` is raised.
        backoff_max_s: cap of the exponential backoff between tries (s).

    Use as ``async with KrakenRest(url) as rest: ...``.
    """

    def __init__(self, base_url: str, *, max_concurrency: int = 4, pair_interval_s: float = 1.0,
                 ip_interval_s: float = 0.2, attempts: int = 8, backoff_max_s: float = 30.0,
                 timeout_s: float = 30.0) -> None:
        base = base_url.rstrip("/")
        self.base_url = base if base.endswith("/0/public") else base + "/0/public"
        self._client = httpx.AsyncClient(timeout=timeout_s,
                                         limits=httpx.Limits(max_connections=max_concurrency))
        self._semaphore = asyncio.Semaphore(max_concurrency)
        self._pair_interval_s = pair_interval_s
        self._ip_limiter = AsyncLimiter(1, ip_interval_s) if ip_interval_s > 0 else None
        self._pair_limiters: dict[str, AsyncLimiter] = {}
        self._attempts = attempts
        self._backoff_max_s = backoff_max_s
        self._pairs: dict[str, dict] | None = None
        self.calls = 0
        self.retries = 0
        self.rate_limited = 0

    async def aclose(self) -> None:
        """Close the HTTP connection pool."""
        await self._client.aclose()

    def _pair_limiter(self, pair: str) -> AsyncLimiter | None:
        if self._pair_interval_s <= 0:
            return None
        limiter = self._pair_limiters.get(pair)
        if limiter is None:
            limiter = self._pair_limiters[pair] = AsyncLimiter(1, self._pair_interval_s)
        return limiter

    async def get(self, method: str, params: dict[str, Any]) -> Any:
        """``GET /0/public/<method>`` and return its ``result``.

        Raises:
            KrakenRestError: an error that is not retryable, or retries ran out.
        """
        query = {k: v for k, v in params.items() if v is not None}
        pair_limiter = self._pair_limiter(str(query.get("pair"))) if method in PER_PAIR else None
        async for attempt in self.attempts(_retryable, tries=self._attempts,
                                           backoff_max_s=self._backoff_max_s):
            with attempt:
                if pair_limiter is not None:
                    await pair_limiter.acquire()
                if self._ip_limiter is not None:
                    await self._ip_limiter.acquire()
                async with self._semaphore:
                    self.calls += 1
                    resp = await self._client.get(f"{self.base_url}/{method}", params=query)
                return self._result(method, resp)
        raise AssertionError("unreachable")

    def _result(self, method: str, resp: httpx.Response) -> Any:
        if resp.status_code != 200:
            if resp.status_code == 429:
                self.rate_limited += 1
            raise KrakenRestError(method, resp.status_code, resp.text[:200])
        try:
            body = _decode(resp.content)
        except msgspec.DecodeError:
            raise KrakenRestError(method, 200, f"not JSON: {resp.text[:200]}") from None
        errors = body.get("error") if isinstance(body, dict) else None
        if errors:
            code = str(errors[0])
            if code in RATE_LIMIT_ERRORS:
                self.rate_limited += 1
            raise KrakenRestError(method, code, "; ".join(map(str, errors[1:]))[:200])
        if not isinstance(body, dict) or not isinstance(body.get("result"), dict):
            raise KrakenRestError(method, 200, "answer without a result object")
        return body["result"]

    async def asset_pairs(self) -> dict[str, dict]:
        """``AssetPairs``: REST pair name (``XXBTZUSD``) -> its entry (``altname``, ``wsname``,
        ``base``, ``quote``, ``tick_size``, ``ordermin``, ``status``, ...). Read once per client."""
        if self._pairs is None:
            self._pairs = {k: v for k, v in (await self.get("AssetPairs", {})).items()
                           if isinstance(v, dict)}
        return self._pairs

    async def rest_pairs(self, symbols: tuple[str, ...] | list[str]) -> dict[str, str]:
        """WS v2 symbol (``BTC/USD``) -> REST pair name (``XXBTZUSD``) for those of ``symbols``
        that AssetPairs lists (by ``wsname``, XBT read as BTC); unlisted symbols are left out."""
        by_symbol = {m.v2_symbol(v["wsname"]): k for k, v in (await self.asset_pairs()).items()
                     if isinstance(v.get("wsname"), str)}
        return {s: by_symbol[s] for s in symbols if s in by_symbol}

    async def trades(self, pair: str, since_ns: int) -> tuple[list, str, str]:
        """One ``Trades`` page from ``since_ns``: (raw rows, the result's pair key, ``last``).

        Raises:
            KrakenRestError: the call failed, or the answer has no rows list or no ``last``.
        """
        result = await self.get("Trades", {"pair": pair, "since": since_ns})
        last = result.get("last")
        keys = [k for k in result if k != "last"]
        if last is None or len(keys) != 1 or not isinstance(result[keys[0]], list):
            raise KrakenRestError("Trades", 200, "answer without one rows list and last")
        return result[keys[0]], keys[0], str(last)

    async def trade_pages(self, pair: str, since_ns: int) -> AsyncIterator[tuple[list, int]]:
        """Pages of raw ``Trades`` rows from ``since_ns`` to now: (rows, the next cursor in ns).
        Ends after a page that does not move the cursor (the newest trades reached)."""
        cursor = since_ns
        while True:
            rows, _, last = await self.trades(pair, cursor)
            nxt = int(last)
            yield rows, nxt
            if not rows or nxt <= cursor:
                return
            cursor = nxt

    async def ohlc(self, pair: str, interval: int, since_s: int | None = None) -> list:
        """``OHLC`` rows ``[time, open, high, low, close, vwap, volume, count]`` (at most the
        :data:`OHLC_LIMIT` latest; the last one is the current, open candle)."""
        result = await self.get("OHLC", {"pair": pair, "interval": interval, "since": since_s})
        keys = [k for k in result if k != "last"]
        return result[keys[0]] if len(keys) == 1 and isinstance(result[keys[0]], list) else []
