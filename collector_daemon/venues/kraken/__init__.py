"""Kraken spot market data: WS v2 trades and OHLC, REST Trades for gaps and history
(https://docs.kraken.com/api/).

Exports ``VENUE`` (:class:`~collector_daemon.venues.kraken.venue.KrakenVenue`), found by the venue
registry.
"""

from collector_daemon.venues.kraken.venue import VENUE

__all__ = ["VENUE"]
