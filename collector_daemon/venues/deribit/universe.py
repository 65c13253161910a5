"""The Deribit instrument universe: which instruments the collector subscribes.

``public/get_instruments`` (currency, kind, expired=false) lists the live instruments; Deribit
asks clients to use its ``expiration_timestamp``/``strike``/``option_type`` fields rather than
parsing names. ``public/get_book_summary_by_currency`` gives open interest (options: base coin).
The subscription set is the top N instruments by open interest (ties broken by name), or every
live instrument when N is None. An instrument that expires disappears from get_instruments, so
the next refresh drops it and the connection unsubscribes it.
"""

from __future__ import annotations

from dataclasses import dataclass

from collector_daemon.venues.deribit import messages as m
from collector_daemon.venues.deribit.rest import DeribitRest


@dataclass(frozen=True)
class Universe:
    """One refresh: every live instrument, its open interest, and the ranked selection.

    Attributes:
        instruments: live instruments (``is_active``) of the currency and kinds asked for.
        open_interest: instrument_name -> open interest from the book summary (may lack names).
        selected: instrument names to subscribe, highest open interest first.
    """

    instruments: list[m.Instrument]
    open_interest: dict[str, float]
    selected: list[str]

    def instrument_rows(self) -> list[tuple]:
        """``instruments`` table rows for every live instrument (``rows.INSTRUMENTS`` order)."""
        return [m.instrument_row(i, self.open_interest.get(i.instrument_name)) for i in self.instruments]


def rank(instruments: list[m.Instrument], open_interest: dict[str, float],
         top_n: int | None) -> list[str]:
    """Names of the ``top_n`` active instruments by open interest (all when ``top_n`` is None)."""
    active = [i.instrument_name for i in instruments if i.is_active]
    active.sort(key=lambda name: (-(open_interest.get(name) or 0.0), name))
    return active if top_n is None else active[:top_n]


async def fetch_universe(rest: DeribitRest, currency: str, kinds: tuple[str, ...] = ("option",),
                         top_n: int | None = 50) -> Universe:
    """Fetch instruments and book summaries of ``currency`` for each kind and rank them.

    Raises:
        collector_daemon.venues.deribit.rest.DeribitRestError: the REST calls failed for good.
    """
    instruments: list[m.Instrument] = []
    open_interest: dict[str, float] = {}
    for kind in kinds:
        instruments += await rest.get_instruments(currency, kind=kind, expired=False)
        for row in await rest.get_book_summary_by_currency(currency, kind=kind):
            if row.open_interest is not None:
                open_interest[row.instrument_name] = row.open_interest
    return Universe(instruments, open_interest, rank(instruments, open_interest, top_n))
