"""Deribit instrument names (``ETH-9APR21-1950-C``, ``BTC-PERPETUAL``, ``ETH_USDC-PERPETUAL``,
``BTC-24SEP21``, combos) and trade ids (``ETH-12345``): what they tell, and how the emulator
re-keys them (strikes of fan-out copies, id shifts of later loops)."""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

#: ``{kind}`` of ``trades.{kind}.{currency}.{interval}``.
TRADE_KINDS = frozenset(
    {"option", "future", "spot", "future_combo", "option_combo", "combo", "any"})
#: ``{currency}`` of ``trades.{kind}.{currency}.{interval}`` (plus those seen in the data).
CURRENCIES = frozenset({"BTC", "ETH", "USDC", "USDT", "EURR", "any"})
#: Deribit's ``expiration_timestamp`` of perpetuals (year 3000).
PERPETUAL_EXPIRY_MS = 32503708800000

_MONTHS = {m: i for i, m in enumerate(
    ("JAN", "FEB", "MAR", "APR", "MAY", "JUN", "JUL", "AUG", "SEP", "OCT", "NOV", "DEC"), 1)}
_EXPIRY_RE = re.compile(r"^(\d{1,2})([A-Z]{3})(\d{2})$")
_ID_RE = re.compile(r"^(.*?)(\d+)$")


@dataclass(frozen=True, slots=True)
class InstrumentInfo:
    """What an instrument name tells (Deribit naming: ``ETH-9APR21-1950-C``, ``BTC-PERPETUAL``,
    ``ETH_USDC-PERPETUAL``, ``BTC-24SEP21``, combos such as ``BTC-FS-29MAR24_PERP``).

    Attributes:
        name: instrument name.
        kind: ``option | future | spot | future_combo | option_combo``.
        base: base currency (``ETH``).
        quote: quote currency: the base for inverse instruments, e.g. ``USDC`` for linear ones.
        currency: the currency Deribit files it under (``get_instruments(currency=..)`` and
            ``trades.{kind}.{currency}``): the base for inverse, the quote for linear.
        expiry_ms: expiration, 08:00 UTC of the expiry date, ms since epoch; perpetuals
            ``PERPETUAL_EXPIRY_MS``; None when unknown (combos, spot).
        strike: option strike (``1d5`` in a name means 1.5), None for non-options.
        option_type: ``call | put`` or None.
    """

    name: str
    kind: str
    base: str
    quote: str
    currency: str
    expiry_ms: int | None = None
    strike: float | None = None
    option_type: str | None = None

    @property
    def linear(self) -> bool:
        """Whether the instrument is linear (quoted in another currency than its base)."""
        return self.base != self.quote


def _expiry_ms(text: str) -> int | None:
    m = _EXPIRY_RE.match(text)
    if m is None or m.group(2) not in _MONTHS:
        return None
    dt = datetime(2000 + int(m.group(3)), _MONTHS[m.group(2)], int(m.group(1)), 8, tzinfo=UTC)
    return int(dt.timestamp() * 1000)


def parse_instrument(name: str) -> InstrumentInfo:
    """Parse a Deribit instrument name (see :class:`InstrumentInfo`)."""
    parts = name.split("-")
    base, _, quote = parts[0].partition("_")
    quote = quote or base
    currency = quote if quote != base else base
    if len(parts) == 1:
        return InstrumentInfo(name, "spot", base, quote, currency)
    if len(parts) == 4 and parts[3] in ("C", "P"):
        try:
            strike = float(parts[2].replace("d", "."))
        except ValueError:
            strike = None
        return InstrumentInfo(name, "option", base, quote, currency, _expiry_ms(parts[1]), strike,
                              "call" if parts[3] == "C" else "put")
    if len(parts) == 2:
        expiry = PERPETUAL_EXPIRY_MS if parts[1] == "PERPETUAL" else _expiry_ms(parts[1])
        return InstrumentInfo(name, "future", base, quote, currency, expiry)
    return InstrumentInfo(name, "future_combo" if parts[1] == "FS" else "option_combo",
                          base, quote, currency)


def settlement_period(info: InstrumentInfo) -> str | None:
    """Deribit's ``settlement_period`` of an instrument (A.5 ``get_instruments``):
    ``"perpetual"``; for dated instruments (expiry at 08:00 UTC) ``"month"`` when the expiry is
    the month's last Friday, ``"week"`` on another Friday, ``"day"`` otherwise; None without an
    expiry (spot, combos: the exchange's records of those carry none either). Checked against the
    real ``get_instruments`` responses of 2021-07-22 (tests/emulator)."""
    if info.expiry_ms is None:
        return None
    if info.expiry_ms == PERPETUAL_EXPIRY_MS:
        return "perpetual"
    day = datetime.fromtimestamp(info.expiry_ms / 1000, UTC)
    if day.weekday() != 4:
        return "day"
    return "month" if (day + timedelta(days=7)).month != day.month else "week"


def format_strike(strike: float) -> str:
    """A strike as written in instrument names: ``1950`` or ``1d5`` for 1.5."""
    return str(int(strike)) if strike == int(strike) else repr(strike).replace(".", "d")


def shift_id(trade_id: str, shift: int) -> str:
    """``"ETH-12345"`` shifted by 10 → ``"ETH-12355"`` (numeric strings likewise)."""
    if not shift:
        return trade_id
    m = _ID_RE.match(trade_id)
    if m is None:
        return f"{trade_id}-{shift}"
    return f"{m.group(1)}{int(m.group(2)) + shift}"


def id_number(trade_id: Any) -> int:
    """The numeric suffix of a trade id (``"ETH-12345"`` → 12345; 0 when there is none)."""
    m = _ID_RE.match(str(trade_id))
    return int(m.group(2)) if m else 0
