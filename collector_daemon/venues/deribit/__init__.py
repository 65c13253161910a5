"""Deribit API v2 (JSON-RPC 2.0 over WebSocket and HTTP): https://docs.deribit.com/

Exports ``VENUE`` (:class:`~collector_daemon.venues.deribit.venue.DeribitVenue`), found by the
venue registry.
"""

from collector_daemon.venues.deribit.venue import VENUE

__all__ = ["VENUE"]
