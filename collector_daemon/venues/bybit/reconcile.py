"""Reconciliation of one Bybit account over REST: what its private streams may have missed (a
reconnect, the time before the collector started), fetched at start and after every reconnect.

Endpoints (../shared/reference/exchange-apis-and-peers.md B; bybit-exchange/docs
``docs/v5/order/execution.mdx``, ``order/order-list.mdx``... ``order/history``,
``position/position.mdx``, ``account/wallet-balance.mdx``), all signed with the account's key:

* ``/v5/execution/list``: ``startTime``/``endTime`` span at most 7 days, ``limit`` [1,100],
  ``cursor``/``nextPageCursor``; sorted by execTime descending, unstable on ties, so a fill may
  appear on two pages: fills are deduplicated by execId within a window (and the table's key
  skips those already stored). Options: ``baseCoin`` defaults to BTC, so one pass per base coin.
* ``/v5/order/history``: the same window and cursor rules, ``limit`` [1,50].
* ``/v5/position/list``: the current positions (linear per ``settleCoin``, options per
  ``baseCoin``), stored as snapshots; ``/v5/account/wallet-balance?accountType=UNIFIED``: the
  wallet, stored as a snapshot at the time it was received, ms (the wallet stream sends none
  on subscribe).

Pace: one account's requests run one after the other (per-account concurrency 1); every account
shares the collector's one :class:`~collector_daemon.venues.bybit.rest.BybitRest` (a concurrency
cap, backoff on retCode 10006, a ban on HTTP 403), whose budget is shared with every other process
calling Bybit from the IP (:mod:`collector_daemon.core.rest_budget`,
``TICKVAULT_BYBIT_REST_REQUESTS_PER_5S``, default 400 of Bybit's 600 per 5 s).
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Sequence

from collector_daemon.core.accounts import Account
from collector_daemon.rows import TableSpec
from collector_daemon.venues.bybit import messages as m
from collector_daemon.venues.bybit.private import (
    EXECUTIONS, ORDERS, POSITIONS, WALLET, execution_row, order_row, position_row, wallet_rows,
)
from collector_daemon.venues.bybit.rest import BybitRest, BybitRestError

#: The longest startTime..endTime span execution/list and order/history accept (ms).
WINDOW_MS = 7 * 86_400_000
EXECUTIONS_PAGE = 100
ORDERS_PAGE = 50
#: Settle coins of linear positions (position/list needs a symbol or a settleCoin).
LINEAR_SETTLE_COINS = ("USDT", "USDC")
WALLET_ACCOUNT_TYPE = "UNIFIED"


def scopes(categories: Sequence[str], option_base_coins: Sequence[str]) -> list[dict[str, str]]:
    """The query scopes covering ``categories``: one per category, options one per base coin."""
    out: list[dict[str, str]] = []
    for category in categories:
        if category == "option":
            out += [{"category": "option", "baseCoin": c} for c in option_base_coins]
        else:
            out.append({"category": category})
    return out


def windows(start_ms: int, end_ms: int) -> list[tuple[int, int]]:
    """``[start_ms, end_ms]`` cut into spans of at most :data:`WINDOW_MS`, newest first."""
    out = []
    hi = end_ms
    while hi >= start_ms:
        lo = max(start_ms, hi - WINDOW_MS + 1)
        out.append((lo, hi))
        hi = lo - 1
    return out


async def reconcile(rest: BybitRest, account: Account, since_us: int, until_us: int | None = None, *,
                    categories: Sequence[str],
                    option_base_coins: Sequence[str]) -> AsyncIterator[tuple[TableSpec, list[tuple]]]:
    """``(table, rows)`` pages of ``account``'s executions and order updates in
    ``[since_us, until_us)`` (µs), all with source ``rest``; with ``until_us`` None up to now,
    followed by its current positions and wallet.

    Raises:
        BybitRestError: a call failed for good, a cursor repeats, or an answer holds a malformed
            entry (named).
        SecretError: the account's secret cannot be read.
    """
    end_ms = until_us // 1000 - 1 if until_us is not None else time.time_ns() // 1_000_000
    spans = windows(since_us // 1000, end_ms)
    for scope in scopes(categories, option_base_coins):
        for table, path, limit, build in ((EXECUTIONS, "execution/list", EXECUTIONS_PAGE, execution_row),
                                          (ORDERS, "order/history", ORDERS_PAGE, order_row)):
            for lo, hi in spans:
                seen: set = set()
                async for page in rest.pages(path, {**scope, "startTime": lo, "endTime": hi, "limit": limit},
                                             account=account):
                    rows = _rows(path, lambda e: build(account, {"category": scope["category"], **e},
                                                        _now_us(), "rest"), page)
                    fresh = [r for r in rows if _key(table, r) not in seen]
                    seen.update(_key(table, r) for r in fresh)
                    yield table, fresh
        category = scope["category"]
        if category == "spot" or until_us is not None:
            continue   # spot has no positions; a past window has no snapshot
        extra = [{"settleCoin": c} for c in LINEAR_SETTLE_COINS] if category == "linear" else [{}]
        for params in extra:
            async for page in rest.pages("position/list", {**scope, **params, "limit": 200}, account=account):
                yield POSITIONS, _rows("position/list",
                                       lambda p: position_row(account, p, _now_us(), "rest", category), page)
    if until_us is not None:
        return
    result = await rest.get("account/wallet-balance", {"accountType": WALLET_ACCOUNT_TYPE}, account=account)
    receive_us = _now_us()
    answer_us = receive_us // 1000 * 1000   # the snapshot's time: when it was answered (ms)
    yield WALLET, _rows("account/wallet-balance",
                        lambda w: wallet_rows(account, {"accountType": WALLET_ACCOUNT_TYPE, **w},
                                              answer_us, receive_us, "rest"),
                        [w for w in result.get("list") or () if isinstance(w, dict)], flat=True)


def _now_us() -> int:
    return time.time_ns() // 1000


def _key(table: TableSpec, row: tuple) -> tuple:
    return tuple(row[table.columns.index(c)] for c in table.natural_key)


def _rows(path: str, build, entries: list[dict], flat: bool = False) -> list[tuple]:
    """``build`` applied to every entry (``flat``: each gives a list of rows).

    Raises:
        BybitRestError: an entry is malformed (the message names the endpoint and the field).
    """
    try:
        built = [build(e) for e in entries]
    except m.BadValue as exc:
        raise BybitRestError(path, 200, f"malformed entry: {exc}") from None
    return [r for rows in built for r in rows] if flat else built
