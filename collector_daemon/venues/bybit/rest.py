"""The one Bybit v5 REST client (public market endpoints and, signed per account, the private
ones), shared by the daemon (universe, gap recovery, private reconciliation) and Dagster.

Requests are ``GET {base_url}/v5/<path>?<params>``; answers are
``{"retCode","retMsg","result",...}``. Limits (../shared/reference/exchange-apis-and-peers.md B,
``docs/v5/rate-limit/rate-limit.mdx``): 600 requests per 5 s per IP, beyond that HTTP 403
"access too frequent" and an IP ban of at least 10 minutes; ``retCode 10006`` = too many visits.
The client takes a token of its :attr:`budget` before every request (by default its own
:class:`~collector_daemon.core.rest_budget.LocalBudget` of ``requests_per_5s``; the daemon and the
Dagster runs give it the :class:`~collector_daemon.core.rest_budget.SharedBudget` of the IP, so
several processes together stay under the limit), caps concurrency, and retries 10006, HTTP
429/5xx and transport errors with capped exponential backoff and jitter; an HTTP 403 (a ban:
someone else's traffic on the IP) bans the budget for ``ban_wait_s``, so nobody sharing it tries
again before the ban is over. The daemon shares one client between its public calls and every
account's reconciliation.

Private requests (``docs/v5/guide.mdx``, "Authentication for HTTP"): headers ``X-BAPI-API-KEY``,
``X-BAPI-TIMESTAMP`` (ms), ``X-BAPI-RECV-WINDOW`` and ``X-BAPI-SIGN`` =
``hex(HMAC_SHA256(secret, timestamp + api_key + recv_window + query_string))``, the query string
exactly as sent. retCode 10003 (invalid key) and 10004 (bad signature) are not retried.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import time
from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import urlencode

import httpx
import msgspec
from tenacity import AsyncRetrying, retry_if_exception, stop_after_attempt, wait_random_exponential

from collector_daemon.core.accounts import Account
from collector_daemon.core.rest_budget import LocalBudget, RequestRate
from collector_daemon.venues import RestClient

#: retCodes meaning "slow down and try again".
RETRYABLE_CODES = {10006, 10016}
#: X-BAPI-RECV-WINDOW of signed requests (ms).
RECV_WINDOW_MS = 5000
#: The most rows one instruments-info page returns.
INSTRUMENTS_PAGE = 1000
#: recent-trade: the most trades it returns (spot 60, other categories 1000); no paging.
RECENT_TRADES_LIMIT = {"spot": 60, "linear": 1000, "option": 1000}

_decode = msgspec.json.Decoder().decode


class BybitRestError(RuntimeError):
    """A REST call failed for good. ``code`` is Bybit's retCode or the HTTP status."""

    def __init__(self, path: str, code: int, message: str) -> None:
        super().__init__(f"{path}: {code} {message}")
        self.path = path
        self.code = code


def _retryable(exc: BaseException) -> bool:
    if isinstance(exc, BybitRestError):
        # retCodes are >= 10000: only HTTP statuses fall in 500-599
        return exc.code in RETRYABLE_CODES or exc.code in (403, 429) or 500 <= exc.code < 600
    return isinstance(exc, httpx.TransportError)


class BybitRest(RestClient):
    """Async Bybit v5 REST client with pacing, a concurrency cap and retries.

    Args:
        base_url: ``https://api.bybit.com`` (or the emulator's ``rest_url``, which ends in ``/v5``;
            a trailing ``/v5`` is accepted either way).
        max_concurrency: simultaneous requests.
        attempts: tries per call before :class:`BybitRestError` is raised.
        backoff_max_s: cap of the exponential backoff between tries (s).
        ban_wait_s: wait after an HTTP 403 (Bybit bans the IP for >= 10 minutes).
        requests_per_5s: the client's own pace (Bybit's IP limit is 600 per 5 s), used until a
            shared :attr:`budget` replaces it.

    Use as ``async with BybitRest(url) as rest: ...``.
    """

    def __init__(self, base_url: str, *, max_concurrency: int = 4, attempts: int = 8,
                 backoff_max_s: float = 30.0, ban_wait_s: float = 600.0,
                 requests_per_5s: int = 400, timeout_s: float = 30.0) -> None:
        base = base_url.rstrip("/")
        self.base_url = base if base.endswith("/v5") else base + "/v5"
        self._client = httpx.AsyncClient(timeout=timeout_s,
                                         limits=httpx.Limits(max_connections=max_concurrency))
        self._semaphore = asyncio.Semaphore(max_concurrency)
        self.budget = LocalBudget(RequestRate(requests_per_5s, 5.0))
        self._attempts = attempts
        self._backoff_max_s = backoff_max_s
        self._ban_wait_s = ban_wait_s
        self.calls = 0
        self.retries = 0
        self.bans = 0

    async def aclose(self) -> None:
        """Close the HTTP connection pool."""
        await self._client.aclose()

    async def get(self, path: str, params: dict[str, Any], *, account: Account | None = None) -> dict:
        """``GET /v5/<path>`` and return its ``result`` object; signed with ``account``'s key
        when given (the secret is read at each try, never kept).

        Raises:
            BybitRestError: an error that is not retryable, or retries ran out.
            SecretError: ``account``'s secret cannot be read.
        """
        query = urlencode({k: v for k, v in params.items() if v is not None})
        async for attempt in AsyncRetrying(
            retry=retry_if_exception(_retryable),
            wait=wait_random_exponential(multiplier=0.5, max=self._backoff_max_s),
            stop=stop_after_attempt(self._attempts), reraise=True,
        ):
            with attempt:
                if attempt.retry_state.attempt_number > 1:
                    self.retries += 1
                async with self._semaphore:
                    await self.budget.acquire()
                    self.calls += 1
                    resp = await self._client.get(f"{self.base_url}/{path}?{query}",
                                                  headers=signed_headers(account, query) if account else None)
                if resp.status_code == 403:
                    self.bans += 1
                    await self.budget.ban(self._ban_wait_s)
                return self._result(path, resp)
        raise AssertionError("unreachable")

    async def pages(self, path: str, params: dict[str, Any], *, account: Account | None = None,
                    key: str = "list") -> AsyncIterator[list[dict]]:
        """Every page of a cursor-paged endpoint (``cursor`` / ``nextPageCursor``).

        Raises:
            BybitRestError: a call failed, or a cursor repeats (cannot page further).
        """
        cursor: str | None = None
        seen: set[str] = set()
        while True:
            result = await self.get(path, {**params, "cursor": cursor}, account=account)
            yield [i for i in result.get(key) or () if isinstance(i, dict)]
            cursor = result.get("nextPageCursor") or None
            if cursor is None:
                return
            if cursor in seen:
                raise BybitRestError(path, 200, f"cursor {cursor!r} repeats")
            seen.add(cursor)

    @staticmethod
    def _result(path: str, resp: httpx.Response) -> dict:
        if resp.status_code != 200:
            raise BybitRestError(path, resp.status_code, resp.text[:200])
        try:
            body = _decode(resp.content)
        except msgspec.DecodeError:
            raise BybitRestError(path, resp.status_code, resp.text[:200]) from None
        code = body.get("retCode") if isinstance(body, dict) else None
        if code != 0:
            raise BybitRestError(path, code if isinstance(code, int) else -1,
                                 str(body.get("retMsg") if isinstance(body, dict) else body)[:200])
        result = body.get("result")
        if not isinstance(result, dict):
            raise BybitRestError(path, 200, "answer without a result object")
        return result

    async def instruments(self, category: str, base_coin: str | None = None,
                          page_size: int = INSTRUMENTS_PAGE) -> list[dict]:
        """``/v5/market/instruments-info`` of a category, every page of ``page_size`` (``cursor`` /
        ``nextPageCursor``; spot is not paged). Options: ``base_coin`` (Bybit's default is BTC).

        Raises:
            BybitRestError: a call failed, or a page repeats its cursor (cannot page further).
        """
        out: list[dict] = []
        async for page in self.pages("market/instruments-info", {
                "category": category, "baseCoin": base_coin, "limit": page_size}):
            out += page
        return out

    async def tickers(self, category: str, base_coin: str | None = None) -> list[dict]:
        """``/v5/market/tickers`` of a category (options per ``base_coin``): turnover, open interest."""
        result = await self.get("market/tickers", {"category": category, "baseCoin": base_coin})
        return [t for t in result.get("list") or () if isinstance(t, dict)]

    async def recent_trades(self, category: str, symbol: str | None = None,
                            base_coin: str | None = None) -> list[dict]:
        """``/v5/market/recent-trade``: the latest trades, newest first, as many as Bybit serves
        (:data:`RECENT_TRADES_LIMIT`). No time or cursor parameter exists: older trades cannot be
        fetched. Options: per ``symbol`` or ``base_coin``."""
        result = await self.get("market/recent-trade", {
            "category": category, "symbol": symbol, "baseCoin": base_coin,
            "limit": RECENT_TRADES_LIMIT.get(category, 1000)})
        return [t for t in result.get("list") or () if isinstance(t, dict)]


def rest_signature(secret: str, timestamp_ms: int, key_id: str, recv_window_ms: int, query: str) -> str:
    """``hex(HMAC_SHA256(secret, timestamp + api_key + recv_window + query_string))``."""
    return hmac.new(secret.encode(), f"{timestamp_ms}{key_id}{recv_window_ms}{query}".encode(),
                    hashlib.sha256).hexdigest()


def signed_headers(account: Account, query: str) -> dict[str, str]:
    """The ``X-BAPI-*`` headers of a private GET with ``query`` (signed now).

    Raises:
        SecretError: the account's secret cannot be read.
    """
    ts = time.time_ns() // 1_000_000
    return {"X-BAPI-API-KEY": account.key_id, "X-BAPI-TIMESTAMP": str(ts),
            "X-BAPI-RECV-WINDOW": str(RECV_WINDOW_MS),
            "X-BAPI-SIGN": rest_signature(account.secret(), ts, account.key_id, RECV_WINDOW_MS, query)}
