"""Bybit v5 public market data (tickers and trades of linear, option and spot):
https://bybit-exchange.github.io/docs/v5/intro

Exports ``VENUE`` (:class:`~collector_daemon.venues.bybit.venue.BybitVenue`), found by the venue
registry.
"""

from collector_daemon.venues.bybit.venue import VENUE

__all__ = ["VENUE"]
