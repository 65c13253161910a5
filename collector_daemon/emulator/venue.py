"""The contract between the generic emulator and one venue's emulation.

The generic part (:mod:`.replay`, :mod:`.server`) knows nothing about any exchange's wire format. It
plays a time-ordered list of :class:`Event` objects, routes each one to the clients whose subscribed
channels map to one of the event's *routes*, counts what it sent and injects faults. Everything that
depends on the exchange lives in one :class:`VenueEmulation` subclass per venue, in the venue's
folder, which its :class:`~collector_daemon.venues.Venue` returns from ``emulation()``.
Adding Bybit v5 or Kraken needs no change here.

Times are integers in **milliseconds since the Unix epoch (UTC)** unless a name says otherwise
(``*_us`` = microseconds).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, ClassVar, Protocol


class Event:
    """One notification-worthy thing on the replay timeline.

    Attributes:
        ts: timeline clock in ms since epoch (UTC): the exchange timestamp the emulator paces by.
            Monotonic over the timeline (the venue makes it so).
        kind: venue category, e.g. ``"ticker"``, ``"book"``, ``"trades"``.
        instrument: the instrument the event is about (one instrument per event).
        routes: routing keys the event is published on. A subscribed channel is delivered the event
            when :meth:`VenueEmulation.route` maps it to one of these keys; e.g. a Deribit option
            trade is published on ``trades.<name>``, ``trades.option.ETH``, ``trades.any.ETH``, ...
        data: the venue payload (JSON-serialisable dict or list), exactly what clients receive.
            Only the venue reads it, so a venue may leave it None on derived (loop / fan-out)
            events and materialise it when needed.
        trade_ids: ``(instrument_name, trade_id)`` of every trade in ``data`` (empty otherwise);
            the emulator keeps them per client for completeness proofs.
        encoded: cache of the serialised ``data`` (bytes), filled by the venue on first use so an
            event is serialised once however many clients and channels receive it.
    """

    __slots__ = ("ts", "kind", "instrument", "routes", "data", "trade_ids", "encoded")

    def __init__(
        self,
        ts: int,
        kind: str,
        instrument: str,
        routes: tuple[str, ...],
        data: Any,
        trade_ids: tuple[tuple[str, str], ...] = (),
    ) -> None:
        self.ts = ts
        self.kind = kind
        self.instrument = instrument
        self.routes = routes
        self.data = data
        self.trade_ids = trade_ids
        self.encoded: bytes | None = None

    def __repr__(self) -> str:
        return f"Event(ts={self.ts}, kind={self.kind!r}, instrument={self.instrument!r})"


class RpcError(Exception):
    """A request the venue answers with an error object (code and message as the venue sends them).

    ``http_status`` is the status used when the request came over HTTP.
    """

    def __init__(self, code: int, message: str, data: Any = None, http_status: int = 400) -> None:
        super().__init__(f"{code} {message}")
        self.code = code
        self.message = message
        self.data = data
        self.http_status = http_status


class Session(Protocol):
    """What a venue's message handler may do to the client connection it serves.

    Implemented by :class:`collector_daemon.emulator.replay.Client`.
    """

    id: int
    #: The path of the WebSocket the client connected to (``ws_paths``).
    path: str
    #: The peer's address, ``"host:port"`` (``"?"`` when unknown).
    remote: str

    def subscribe(self, channels: Sequence[str]) -> list[str]:
        """Subscribe to ``channels``; returns those actually subscribed, in request order.

        Unknown/refused channels (see :meth:`VenueEmulation.route` and ``Faults.refuse_channels``)
        are silently left out, like the real exchanges do.
        """
        ...

    def unsubscribe(self, channels: Sequence[str]) -> list[str]:
        """Remove subscriptions; returns the channels that were removed."""
        ...

    def unsubscribe_all(self) -> None:
        """Remove every subscription of this connection."""
        ...

    def set_heartbeat(self, interval_s: float | None) -> None:
        """Start (or, with None, stop) the server heartbeat: a test request every ``interval_s``
        wall-clock seconds, and a close when one stays unanswered for ``interval_s``."""
        ...

    def heartbeat_answered(self) -> None:
        """The client answered the heartbeat (e.g. Deribit ``public/test``)."""
        ...

    def rest_fault(self) -> str | None:
        """Fault decision for one data-request: None (serve it), ``"rpc"`` (answer with the venue's
        rate-limit error) or ``"http429"`` (HTTP only: status 429)."""
        ...


class VenueEmulation(ABC):
    """One venue's emulation: wire format, channels, timeline, loop/fan-out re-keying, REST.

    Subclasses set the class attributes and implement the abstract methods; the constructor
    receives ``fanout`` (number of copies of each option instrument, >= 1) and must be cheap.
    :meth:`load` is called once, before anything else.
    """

    #: Short venue name (``"deribit"``); also the package under ``collector_daemon.venues``.
    name: ClassVar[str]
    #: Path of the WebSocket endpoint, e.g. ``"/ws/api/v2"`` (the main one, see :attr:`ws_paths`).
    ws_path: ClassVar[str]
    #: Every WebSocket path served, when the venue has one endpoint per market (Bybit
    #: ``/v5/public/{linear,option,spot}``); empty = just :attr:`ws_path`. A handler sees the
    #: path a client connected to as ``Session.path``.
    ws_paths: ClassVar[tuple[str, ...]] = ()
    #: Prefix of the HTTP REST endpoints, e.g. ``"/api/v2"``; requests are ``<prefix>/<method>``.
    rest_prefix: ClassVar[str]
    #: Names of the malformed-frame kinds :meth:`malformed_frame` can build (used in this order).
    malformed_kinds: ClassVar[tuple[str, ...]]

    def __init__(self, fanout: int = 1, churn: bool = False) -> None:
        if fanout < 1:
            raise ValueError("fanout must be >= 1")
        self.fanout = fanout
        self.churn = churn

    # --- timeline -------------------------------------------------------------------------------

    @abstractmethod
    def load(self, capture: Path, trades: Path | None, align_trades: bool = False) -> list[Event]:
        """Read the capture (and optional trade source) and return the base timeline.

        Events must be ordered by ``Event.ts`` (non-decreasing). Loop 0 / copy 0 events carry the
        source payloads value-for-value, except that with ``align_trades`` the trade source is
        time-shifted so its first trade falls at the capture's first timestamp (a derived
        stream: one coherent timeline from a capture and a trade source recorded years apart).
        """

    @abstractmethod
    def instantiate(self, event: Event, loop_index: int) -> Sequence[Event]:
        """The events actually played for ``event`` in loop ``loop_index`` (0-based): the event
        itself (shifted to the loop's time and ids when ``loop_index > 0``) followed by its fan-out
        copies. Must return ``(event,)`` for loop 0 of a non-fanned-out instrument."""

    def loop_fields(self, event: Event) -> tuple[tuple[bytes, int], ...] | None:
        """What changes in ``event``'s notification from one loop to the next, for the replayer's
        fast path: ``(prefix, shift)`` pairs, each an integer field of the frame written as
        ``prefix`` + decimal digits (e.g. ``b'"timestamp":'``) whose loop-k value is the loop-0
        value + k x ``shift``. None when later loops change the event otherwise (new trade ids,
        ...): no fast path then. Default None (a venue opts in)."""
        return None

    @abstractmethod
    def publish(self, event: Event) -> None:
        """Called for every played event in timeline order, before it is sent, whether or not a
        client is subscribed: the venue updates the state its REST methods serve from (trades
        published so far, latest ticker per instrument, ...)."""

    # --- channels and frames --------------------------------------------------------------------

    @abstractmethod
    def route(self, channel: str) -> str | None:
        """Routing key a client-requested channel name listens on, or None if the venue would not
        subscribe it (unknown instrument, malformed name, interval refused, ...)."""

    @abstractmethod
    def channel_subject(self, channel: str) -> tuple[str, str | None]:
        """``(category, instrument or None)`` of a subscribed channel, for per-instrument stats."""

    @abstractmethod
    def frame(self, channel: str, event: Event) -> bytes:
        """The notification text (UTF-8 bytes) delivering ``event`` on ``channel``."""

    @abstractmethod
    def malformed_frame(
        self, kind: str, channel: str, event: Event, oversize_bytes: int
    ) -> tuple[bytes, bool]:
        """A malformed frame of ``kind`` (one of :attr:`malformed_kinds`) for a client subscribed to
        ``channel``, built from ``event``. Returns ``(payload, is_binary)``. Text payloads must be
        valid UTF-8 (a WebSocket text frame cannot carry anything else)."""

    # --- requests -------------------------------------------------------------------------------

    @abstractmethod
    def handle_message(self, session: Session, message: str | bytes, received_us: int) -> list[str]:
        """Handle one client WebSocket message; return the frames to send back (in order)."""

    @abstractmethod
    def heartbeat_frame(self) -> str:
        """The server's heartbeat request frame (the client must answer it)."""

    @abstractmethod
    def handle_http(
        self, method: str, query: dict[str, str], fault: str | None, received_us: int
    ) -> tuple[int, bytes]:
        """Serve ``GET <rest_prefix>/<method>?<query>``; ``fault`` is :meth:`Session.rest_fault`'s
        decision for this request. Returns ``(http_status, JSON body)``."""

    def handle_http_request(self, method: str, query: dict[str, str], raw_query: str,
                            headers: Mapping[str, str], fault: str | None,
                            received_us: int) -> tuple[int, bytes]:
        """Like :meth:`handle_http`, with the query string as sent and the request headers (for
        venues that check signed requests). Default: :meth:`handle_http`."""
        return self.handle_http(method, query, fault, received_us)


def load_venue(name: str, fanout: int = 1, churn: bool = False) -> VenueEmulation:
    """The emulation of the registered venue ``name`` (:meth:`collector_daemon.venues.Venue.emulation`).

    Raises:
        ValueError: no such venue (the message lists the known ones), or it has no emulation.
    """
    from collector_daemon.venues import UnknownVenue, get_venue
    try:
        venue = get_venue(name)
    except UnknownVenue as exc:
        raise ValueError(f"no emulation for venue {name!r}: {exc}") from None
    try:
        return venue.emulation(fanout=fanout, churn=churn)
    except NotImplementedError as exc:
        raise ValueError(f"no emulation for venue {name!r}") from exc
