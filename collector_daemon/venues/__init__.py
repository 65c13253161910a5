"""The venue boundary. Each exchange lives in one sub-package (``deribit/``; ``bybit/`` and
``kraken/`` later) that provides a :class:`VenueProtocol`: how to name channels, build
subscribe/heartbeat frames, and decode frames into rows. The connection lifecycle
(``collector_daemon.connection``), the pipeline and the storage are shared and venue-agnostic.
"""

from __future__ import annotations

import abc
from typing import Any, NamedTuple

from collector_daemon.rows import TableSpec


class RejectedFrame(Exception):
    """A frame failed to decode or validate. ``str(exc)`` is the reason stored in rejected_messages."""


class Data(NamedTuple):
    """Decoded market data: ``rows`` (tuples in ``table.columns`` order) for ``table``."""

    table: TableSpec
    rows: list[tuple]
    channel: str


class Response(NamedTuple):
    """Answer to one of our requests: ``result`` (decoded JSON) or ``error`` (dict with code, message)."""

    request_id: int
    result: Any
    error: dict | None


class Control(NamedTuple):
    """A frame the venue wants answered (``reply``) or that only proves liveness (``reply`` None)."""

    reply: str | None


class Request(NamedTuple):
    """A frame we send that expects a Response: ``frame`` text, plus the channels it (un)subscribes."""

    request_id: int
    frame: str
    channels: tuple[str, ...] = ()


class VenueProtocol(abc.ABC):
    """What the shared connection needs to know about one exchange's WebSocket protocol.

    Implementations are stateless apart from configuration; one instance may serve several
    connections.
    """

    #: Short venue name stored in every row (``deribit``, ``bybit``, ``kraken``).
    name: str
    #: The most channels one subscribe frame may carry.
    max_channels_per_subscribe: int

    @abc.abstractmethod
    def channels_for(self, instruments: list[str]) -> list[str]:
        """The channels to subscribe for a universe of instrument names (plus any chain-wide ones)."""

    @abc.abstractmethod
    def open_requests(self, next_id: "IdSource") -> list[Request]:
        """Frames to send right after connecting, before subscribing (e.g. heartbeat setup)."""

    @abc.abstractmethod
    def subscribe_request(self, channels: list[str], next_id: "IdSource") -> Request:
        """One subscribe frame for at most ``max_channels_per_subscribe`` channels."""

    @abc.abstractmethod
    def unsubscribe_request(self, channels: list[str], next_id: "IdSource") -> Request:
        """One unsubscribe frame."""

    @abc.abstractmethod
    def acknowledged_channels(self, response: Response) -> list[str]:
        """The channels a subscribe/unsubscribe response confirms."""

    @abc.abstractmethod
    def table_of(self, channel: str) -> str | None:
        """The table (``quotes``, ``trades``) a channel's data lands in; None for other channels."""

    @abc.abstractmethod
    def decode(self, frame: str | bytes, receive_us: int) -> Data | Response | Control:
        """Decode one received frame.

        Args:
            frame: the WebSocket message as received.
            receive_us: local wall-clock receive time, µs since the Unix epoch (UTC).

        Raises:
            RejectedFrame: the frame is malformed, fails validation, or is of an unknown kind.
        """


class IdSource:
    """Monotonic request ids for one connection (JSON-RPC ``id``, Bybit ``req_id``, ...)."""

    __slots__ = ("_next",)

    def __init__(self) -> None:
        self._next = 0

    def __call__(self) -> int:
        self._next += 1
        return self._next
