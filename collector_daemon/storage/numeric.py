"""A binary ``numeric`` codec for asyncpg that is cheaper than asyncpg's own on exchange data.

asyncpg encodes a ``numeric`` by building a ``Decimal``, then its ``as_tuple()`` (a Python int per
decimal digit) and walking it (asyncpg ``pgproto/codecs/numeric.pyx``): about 1 µs per value,
36 % of the collector's CPU on Bybit tickers, whose ~25 numeric columns are decimal strings
(docs/benchmarks.md, "Bybit linear"). This codec produces the same wire format (PostgreSQL
``numeric_send``: int16 ndigits, int16 weight, uint16 sign, uint16 dscale, then ndigits base-10000
digits; ``src/backend/utils/adt/numeric.c``) and memoises it per distinct string: a merged
ticker repeats most of its values from one message to the next, so most values cost a dict
lookup. Exact: the value and its scale (trailing zeros, ``dscale``) are kept, as with asyncpg's.
Decoding gives a ``Decimal`` with the stored scale, like asyncpg's.
"""

from __future__ import annotations

import struct
from decimal import Decimal

#: Distinct strings kept encoded; the memo is emptied when it reaches this size (bounded memory,
#: ~20 MB).
MEMO_SIZE = 100_000

_HEAD = struct.Struct("!hhHH")
_NEG, _NAN, _PINF, _NINF = 0x4000, 0xC000, 0xD000, 0xF000
_memo: dict[str, bytes] = {}


def encode_numeric(value: str | int | Decimal) -> bytes:
    """PostgreSQL's binary ``numeric`` of ``value`` (a decimal string, an int or a ``Decimal``;
    NaN and ±Infinity included), exact, scale kept.

    Raises:
        decimal.InvalidOperation: ``value`` is not a number.
    """
    out = _memo.get(value) if isinstance(value, str) else None
    if out is not None:
        return out
    sign, digits, exp = Decimal(value).as_tuple()
    if not isinstance(exp, int):   # 'n'/'N' NaN, 'F' infinity
        out = _HEAD.pack(0, 0, _NAN if exp != "F" else (_NINF if sign else _PINF), 0)
    else:
        n = int("".join(map(str, digits)))
        dscale = max(0, -exp)
        n *= 10 ** (exp if exp > 0 else (-dscale) % 4)   # integer, fraction in whole groups of 4
        groups: list[int] = []
        while n:
            n, group = divmod(n, 10000)
            groups.append(group)
        groups.reverse()
        weight = len(groups) - (dscale + 3) // 4 - 1
        out = _HEAD.pack(len(groups), weight, _NEG if sign else 0, dscale) + struct.pack(
            f"!{len(groups)}H", *groups)
    if isinstance(value, str):
        if len(_memo) >= MEMO_SIZE:
            _memo.clear()
        _memo[value] = out
    return out


def decode_numeric(data: bytes) -> Decimal:
    """The ``Decimal`` of PostgreSQL's binary ``numeric`` (scale kept)."""
    ndigits, weight, sign, dscale = _HEAD.unpack_from(data)
    if sign == _NAN:
        return Decimal("NaN")
    if sign in (_PINF, _NINF):
        return Decimal("-Infinity" if sign == _NINF else "Infinity")
    n = 0
    for group in struct.unpack_from(f"!{ndigits}H", data, 8):
        n = n * 10000 + group
    exp = (weight - ndigits + 1) * 4          # n x 10**exp; shown with dscale decimals
    n = n * 10 ** (exp + dscale) if exp + dscale >= 0 else n // 10 ** (-dscale - exp)
    return Decimal(f"{'-' if sign == _NEG else ''}{n}e-{dscale}")   # exact, no context rounding
