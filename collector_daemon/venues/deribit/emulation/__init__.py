"""Deribit API v2 emulation: turns captures and trade dumps into a replayable timeline and answers
Deribit's JSON-RPC 2.0 over WebSocket (``/ws/api/v2``) and HTTP (``/api/v2/public/<method>``).

Facts followed (``shared/reference/exchange-apis-and-peers.md`` section A):

* A.1 channels: ``ticker.{instrument}.{interval}``, ``book.{instrument}.{interval}``,
  ``trades.{instrument}.{interval}``, ``trades.{kind}.{currency}.{interval}``; notifications are
  ``{"jsonrpc":"2.0","method":"subscription","params":{"channel":..,"data":..}}``; trades come as an
  array (the ``100ms`` channels batch same-time trades). Exchange timestamps are ms since epoch.
* A.2 ``raw`` needs an authenticated connection (error 13778): without ``public/auth`` the
  emulator leaves ``raw`` channels out of the subscribe result; after it (any credentials, loopback
  peers only, logged) ``raw`` is served, on ``public/subscribe`` and ``private/subscribe`` alike (what
  cryptofeed sends). Every interval receives the capture's frames (recorded on ``raw``)
  re-channelled to the subscribed name.
* A.4 unknown channels are silently left out of the subscribe ``result``; a frame over 32 kB gets
  -32600 "request entity too large"; ``public/set_heartbeat`` (interval >= 10 s) + ``test_request``
  + close 4000 "heartbeat close"; every RPC response carries ``usIn``/``usOut``/``usDiff`` (µs);
  running out of credits is error 10028 ``too_many_requests``.
* A.5 REST: ``get_instruments``, ``get_book_summary_by_currency``, the ``get_last_trades_*`` family
  (``count`` default 10, max 1000; ``sorting`` asc|desc|default; result ``{trades, has_more}``).

Replay semantics specific to Deribit:

* Timeline clock: capture frames keep their recorded order; their clock is the running maximum of
  the frames' exchange ``timestamp`` (book snapshots carry the older "last change" time). Trades
  from a trade source are merged in by ``timestamp``; same-timestamp trades of one instrument form
  one notification.
* Trade sources without ``trade_seq`` (e.g. the cyri113 SQLite CSV) get one **derived by the
  emulator**: per instrument, 1, 2, 3, ... in (timestamp, trade_id) order. Fields the source lacks
  (``tick_direction``, ``iv`` of futures, ...) are omitted, never invented.
* Loop k > 0 shifts every exchange timestamp by k x (span + 1 ms) (span over all timestamps of the
  timeline), trade ids (numeric suffix, prefix kept: ``ETH-12345``) by k x fanout x id-span,
  ``trade_seq`` by k x (per-instrument seq span) and book ``change_id``/``prev_change_id`` by
  k x change-id span, so every loop is new, valid data with unique keys.
* Fan-out F: every option instrument gets F - 1 copies whose strike is re-keyed upwards to the next
  unused strikes (``ETH-9APR21-1950-C`` → ``ETH-9APR21-1951-C`` ...); copy j's trade ids are shifted
  by j x id-span.

Modules: :mod:`.instruments` (instrument names and trade ids), :mod:`.trade_sources` (trade dumps
and CSVs), :mod:`.timeline` (capture → events, loop/fan-out/churn re-keying, published state),
:mod:`.rest_methods` (the REST data methods), :mod:`.frames` (notifications, malformed frames),
:mod:`.jsonrpc` (:class:`DeribitEmulation`: JSON-RPC over WebSocket and HTTP, channel routing).
"""

from collector_daemon.venues.deribit.emulation.instruments import (
    CURRENCIES,
    PERPETUAL_EXPIRY_MS,
    TRADE_KINDS,
    InstrumentInfo,
    parse_instrument,
)
from collector_daemon.venues.deribit.emulation.jsonrpc import (
    ALLOWED_INTERVALS,
    MAX_REQUEST_BYTES,
    DeribitEmulation,
)
from collector_daemon.venues.deribit.emulation.rest_methods import (
    DEFAULT_COUNT,
    MAX_COUNT,
    DeribitRest,
)
from collector_daemon.venues.deribit.emulation.timeline import DeribitTimeline
from collector_daemon.venues.deribit.emulation.trade_sources import load_trade_source

#: Picked up by :func:`collector_daemon.emulator.venue.load_venue`.
EMULATION = DeribitEmulation

__all__ = [
    "ALLOWED_INTERVALS",
    "CURRENCIES",
    "DEFAULT_COUNT",
    "EMULATION",
    "MAX_COUNT",
    "MAX_REQUEST_BYTES",
    "PERPETUAL_EXPIRY_MS",
    "TRADE_KINDS",
    "DeribitEmulation",
    "DeribitRest",
    "DeribitTimeline",
    "InstrumentInfo",
    "load_trade_source",
    "parse_instrument",
]
