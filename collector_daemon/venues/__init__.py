"""The venue boundary and the venue registry.

Each exchange is one package ``collector_daemon/venues/<name>/`` that exports ``VENUE``, an
instance of :class:`Venue`: its settings (own ``TICKVAULT_<NAME>_*`` variables), WebSocket
endpoints, connection limits, wire protocol (:class:`VenueProtocol`), the streams it produces
with their tables and gap policy (:class:`StreamSpec`), its REST client, universe fetch and gap
recovery strategy, and its emulation. The daemon, ``tickvault collect --venue NAME``, the
emulator, ``tickvault status`` and the Dagster definitions are all built from the registry
(:func:`venues`, :func:`get_venue`); nothing outside a venue's folder names it.

Discovery: every sub-package of ``collector_daemon.venues`` that exports ``VENUE``, plus the
modules named in ``TICKVAULT_VENUE_PLUGINS`` (comma-separated, e.g. a venue kept outside this
repository, or the fake venue of the tests). ``docs/venues.md`` has the checklist for a new venue
and the path a frame takes.
"""

from __future__ import annotations

import abc
import enum
import importlib
import os
import pkgutil
from collections.abc import AsyncIterator, Callable, Container, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, NamedTuple

import msgspec
from pydantic_settings import BaseSettings
from tenacity import (
    AttemptManager, AsyncRetrying, retry_if_exception, stop_after_attempt, wait_random_exponential,
)

from collector_daemon.rows import TableSpec

if TYPE_CHECKING:   # only for annotations: the core modules import this one
    from collector_daemon.core.accounts import Account
    from collector_daemon.core.gaps import Gap
    from collector_daemon.core.rest_budget import RequestRate, RestBudget
    from collector_daemon.core.universe import FetchedUniverse


def _stream_of(channel_streams: Mapping[str, str], channel: str) -> str | None:
    for prefix, stream in channel_streams.items():
        if channel.startswith(prefix):
            return stream
    return None


class RejectedFrame(Exception):
    """A frame failed to decode or validate. ``str(exc)`` is the reason stored in rejected_messages."""


class RecoveryIncomplete(Exception):
    """Raised by :meth:`Venue.recovery_pages` after it yielded every row it could: part of the gap
    lies beyond what the venue's REST serves (Bybit's recent-trade returns only the latest
    trades). ``str(exc)`` says which part and why; the gap becomes ``unrecoverable`` with it, and
    the rows fetched stay stored."""


_json_decode = msgspec.json.Decoder().decode


def decode_json_object(frame: str | bytes) -> dict:
    """One WebSocket frame as its JSON object (a decoder's first step).

    Raises:
        RejectedFrame: not JSON, or JSON that is not an object.
    """
    try:
        msg = _json_decode(frame)
    except msgspec.DecodeError as exc:
        raise RejectedFrame(f"decode error: {exc}") from None
    if not isinstance(msg, dict):
        raise RejectedFrame("not a JSON object")
    return msg


class Data(NamedTuple):
    """Decoded market data: ``rows`` (tuples in ``table.columns`` order) for ``table``."""

    table: TableSpec
    rows: list[tuple]
    channel: str


class Response(NamedTuple):
    """Answer to one of our requests: ``result`` (decoded JSON) or ``error`` (dict with code,
    message). ``request_id`` is the id of the :class:`Request` it answers (int or str, as the
    venue's protocol chose)."""

    request_id: int | str
    result: Any
    error: dict | None


class Control(NamedTuple):
    """A frame the venue wants answered (``reply``) or that only proves liveness (``reply`` None).
    ``status``: the venue's own system status the frame announces (Kraken ``status`` channel:
    ``online``, ``maintenance``, ``cancel_only``, ``post_only``), recorded by the connection as a
    ``status`` connection event; None for frames that announce none."""

    reply: str | None
    status: str | None = None


class Request(NamedTuple):
    """A frame we send that expects answers: ``frame`` text, the channels it (un)subscribes, and
    how many :class:`Response` frames answer it (Kraken v2 acknowledges a subscription once per
    symbol; most venues once per request)."""

    request_id: int | str
    frame: str
    channels: tuple[str, ...] = ()
    responses: int = 1


def screen_frame(frame: str | bytes, max_frame_chars: int) -> str | None:
    """Why the reader refuses ``frame`` before decoding it, or None: ``binary frame`` (every
    venue here sends text) or ``oversized frame: N characters`` (longer than ``max_frame_chars``)."""
    if type(frame) is not str:
        return "binary frame"
    if len(frame) > max_frame_chars:
        return f"oversized frame: {len(frame)} characters"
    return None


class ReadBatch:
    """What the frames of one socket read decoded to (:meth:`Decoder.decode_read`).

    Attributes:
        tables: table name -> ``(table, rows)``: the rows of this read's accepted data frames,
            in arrival order (tuples in ``table.columns`` order). A table whose frames carried
            no rows (Deribit's trades ``"data":[]``) is present with an empty list: its stream
            is alive.
        messages: accepted data frames (notifications), empty ones included.
        rejects: ``(frame text, reason)`` of every frame refused: malformed, binary, oversized,
            or data of a channel not in ``accepting`` (``data on a channel not subscribed: ...``).
        controls: the :class:`Response` and :class:`Control` frames, in arrival order.
    """

    __slots__ = ("tables", "messages", "rejects", "controls")

    def __init__(self) -> None:
        self.tables: dict[str, tuple[TableSpec, list[tuple]]] = {}
        self.messages = 0
        self.rejects: list[tuple[str, str]] = []
        self.controls: list[Response | Control] = []

    def rows_of(self, table: TableSpec) -> list[tuple]:
        """The list this read's rows of ``table`` go into (made on first use)."""
        entry = self.tables.get(table.name)
        if entry is None:
            entry = self.tables[table.name] = (table, [])
        return entry[1]

    def add_frame(self, decoder: "Decoder", frame: str | bytes, receive_us: int,
                  accepting: Container[str], max_frame_chars: int) -> None:
        """Screen and decode one frame with ``decoder.decode`` and file the result: the general
        path, which every frame a venue's fast path does not take goes through (it also gives
        the precise rejection reasons)."""
        reason = screen_frame(frame, max_frame_chars)
        if reason is not None:
            text = frame if type(frame) is str else frame.decode("utf-8", "backslashreplace")
            self.rejects.append((text, reason))
            return
        try:
            item = decoder.decode(frame, receive_us)
        except RejectedFrame as exc:
            self.rejects.append((frame, str(exc)))
            return
        if type(item) is Data:
            if item.channel not in accepting:
                self.rejects.append((frame, f"data on a channel not subscribed: {item.channel[:200]}"))
                return
            self.messages += 1
            self.rows_of(item.table).extend(item.rows)
        else:
            self.controls.append(item)


class Decoder(abc.ABC):
    """Turns the frames of ONE connection into rows; may keep state across frames (e.g. Bybit's
    linear tickers are a snapshot followed by deltas per symbol). A new decoder is made for every
    (re)connection, so state never leaks from a dead socket into a new one.

    The connection hands it every frame of one socket read at once (:meth:`decode_read`); a
    venue implements :meth:`decode` (one frame) and may override :meth:`decode_read` with a
    fast path for its hot notifications that files rows straight into the batch."""

    @abc.abstractmethod
    def decode(self, frame: str | bytes, receive_us: int) -> Data | Response | Control:
        """Decode one received frame.

        Args:
            frame: the WebSocket message as received.
            receive_us: local wall-clock receive time, µs since the Unix epoch (UTC).

        Raises:
            RejectedFrame: the frame is malformed, fails validation, or is of an unknown kind.
        """

    def decode_read(self, frames: Sequence[str | bytes], receive_us: int, accepting: Container[str],
                    max_frame_chars: int) -> ReadBatch:
        """Decode the frames of one socket read into one :class:`ReadBatch`.

        Args:
            frames: the WebSocket messages of the read, in arrival order.
            receive_us: local wall-clock receive time of the read, µs since the Unix epoch (UTC).
            accepting: channels whose data is accepted (subscribed or being subscribed on this
                socket); data of any other channel is rejected.
            max_frame_chars: longer frames are rejected without decoding (:func:`screen_frame`).

        Never raises for bad input: every bad frame is in ``rejects``. The default decodes frame
        by frame with :meth:`decode` (:meth:`ReadBatch.add_frame`); an override must give the
        same batch, values and reasons included.
        """
        batch = ReadBatch()
        for frame in frames:
            batch.add_frame(self, frame, receive_us, accepting, max_frame_chars)
        return batch


class VenueProtocol(abc.ABC):
    """What the shared connection needs to know about one exchange's WebSocket protocol.

    One instance serves every connection of a daemon; per-connection state lives in the
    :class:`Decoder` that :meth:`decoder` makes.
    """

    #: Short venue name stored in every row (``deribit``, ``bybit``, ``kraken``).
    name: str
    #: The most channels one subscribe frame may carry.
    max_channels_per_subscribe: int
    #: Seconds between client pings (:meth:`ping_frame`); None = the venue pings us (or needs none).
    ping_interval_s: float | None = None
    #: Channel prefix -> stream name: which stream a subscribed channel feeds (the venue's one
    #: map, as data; :attr:`Venue.channel_streams` is the same object).
    channel_streams: Mapping[str, str] = {}

    def stream_of(self, channel: str) -> str | None:
        """The stream a channel feeds, None for control channels."""
        return _stream_of(self.channel_streams, channel)

    @abc.abstractmethod
    def channels_for(self, instruments: list[str]) -> list[str]:
        """The channels to subscribe for a universe of instrument names (plus any chain-wide ones)."""

    def endpoint_of(self, channel: str) -> str:
        """Which of the venue's WebSocket endpoints (:meth:`Venue.ws_endpoints` key) serves
        ``channel``; one endpoint ``"public"`` unless the venue has several."""
        return "public"

    @abc.abstractmethod
    async def open_requests(self, next_id: "IdSource") -> list[Request]:
        """Frames to send right after connecting, before subscribing (heartbeat setup, an
        authentication request whose signature or token may need I/O to obtain)."""

    @abc.abstractmethod
    def subscribe_request(self, channels: list[str], next_id: "IdSource") -> Request:
        """One subscribe frame for at most ``max_channels_per_subscribe`` channels."""

    @abc.abstractmethod
    def unsubscribe_request(self, channels: list[str], next_id: "IdSource") -> Request:
        """One unsubscribe frame."""

    @abc.abstractmethod
    def acknowledged_channels(self, request: Request, responses: list[Response]) -> list[str]:
        """The channels of ``request`` that its ``responses`` confirm (the rest were refused)."""

    def ping_frame(self, next_id: "IdSource") -> str | None:
        """The application-level ping sent every ``ping_interval_s`` (its answer decodes to a
        :class:`Control`)."""
        return None

    @abc.abstractmethod
    def decoder(self) -> Decoder:
        """A decoder for one new connection."""

    def decoder_for(self, endpoint: str) -> Decoder:
        """A decoder for one new connection to ``endpoint`` (a :meth:`Venue.ws_endpoints` key):
        venues whose endpoints send the same topics for different markets (Bybit linear and
        spot) decode per endpoint. Default: :meth:`decoder`."""
        return self.decoder()

    def subscribe_batches(self, channels: list[str]) -> list[list[str]]:
        """``channels`` split into the groups one (un)subscribe frame may carry: chunks of
        :attr:`max_channels_per_subscribe` in order. Kraken overrides it: one frame names one
        channel kind (``trade``, ``ohlc`` of one interval) for several symbols."""
        step = self.max_channels_per_subscribe
        return [channels[i:i + step] for i in range(0, len(channels), step)]

    def min_reconnect_delay_s(self, status: str | None) -> float:
        """The shortest wait before reconnecting while the venue's last announced system status
        (:attr:`Control.status`) is ``status`` (Kraken: 5 s during maintenance); 0 = no minimum."""
        return 0.0

    def max_channels_per_connection(self, channels: list[str]) -> int | None:
        """The most of ``channels`` (one endpoint's) one connection may carry (Bybit: the args
        of a connection stay under 21,000 characters), or None for no venue limit; the daemon
        takes the smaller of this and ``TICKVAULT_CHANNELS_PER_CONNECTION``."""
        return None


class IdSource:
    """Monotonic request ids for one connection (JSON-RPC ``id``, Bybit ``req_id``, ...)."""

    __slots__ = ("_next",)

    def __init__(self) -> None:
        self._next = 0

    def __call__(self) -> int:
        self._next += 1
        return self._next


class Recovery(enum.Enum):
    """How a stream's lost data can be fetched again.

    * ``SEQUENCE``: rows carry a per-instrument sequence number rising by exactly 1
      (:attr:`StreamSpec.sequence_column`); a jump is a gap with exact bounds, fetched by
      sequence range; disconnect windows are fetched by time.
    * ``TIME``: fetched by time window only.
    * ``NONE``: the venue serves no history of it; its gaps are recorded ``unrecoverable``.
    """

    SEQUENCE = "sequence"
    TIME = "time"
    NONE = "none"


@dataclass(frozen=True)
class StreamSpec:
    """One stream a venue produces: the ``data_gaps.stream`` name, its table and gap policy.

    Attributes:
        name: stream name (``quotes``, ``trades``, ...), unique within the venue.
        table: where its rows go.
        recovery: gap policy (:class:`Recovery`).
        sequence_column: with ``Recovery.SEQUENCE``, the per-instrument column that rises by 1.
        unrecoverable_reason: with ``Recovery.NONE``, why (stored with each of its gaps).
        stale_warn_s / stale_reconnect_s: the watchdog warns / reconnects when no data of the
            stream arrived on a connection for this long (None = never); quiet streams (trades
            at night, private wallet updates) must never force a reconnect.
        per_instrument: rows arrive per instrument at a steady pace (tickers), so the daily audit
            looks for silences of each instrument.
    """

    name: str
    table: TableSpec
    recovery: Recovery
    sequence_column: str | None = None
    unrecoverable_reason: str = ""
    stale_warn_s: float | None = None
    stale_reconnect_s: float | None = None
    per_instrument: bool = False

    def __post_init__(self) -> None:
        if (self.recovery is Recovery.SEQUENCE) != (self.sequence_column is not None):
            raise ValueError(f"stream {self.name}: a sequence_column goes with Recovery.SEQUENCE")
        for col in ("venue", "instrument_name", "exchange_ts", "receive_ts"):
            if col not in self.table.columns:
                raise ValueError(f"stream {self.name}: table {self.table.name} lacks column {col}")

    @property
    def recoverable(self) -> bool:
        """True unless the venue serves no history of this stream."""
        return self.recovery is not Recovery.NONE


@dataclass(frozen=True)
class ConnectionLimits:
    """A venue's limits on connections and subscriptions (its docs' numbers).

    Attributes:
        connections_per_ip: the most WebSocket connections per IP (None = no documented limit).
        rest_counts_as_connection: concurrent REST requests count toward ``connections_per_ip``
            (Deribit).
        subscribe_burst / subscribe_period_s: subscribe frames: ``burst`` per ``period`` (a token
            bucket shared by the daemon's connections).
        connects_per_period: ``(connects, period_s)``: the most (re)connects per period and IP
            (a token bucket shared by the daemon's connections; Kraken behind Cloudflare: about
            150 per 10 minutes); None = no limit beyond each connection's backoff.
    """

    connections_per_ip: int | None = None
    rest_counts_as_connection: bool = False
    subscribe_burst: int = 10
    subscribe_period_s: float = 1.0
    connects_per_period: tuple[int, float] | None = None


class RecoveryPlan(NamedTuple):
    """How one gap can be recovered.

    Attributes:
        method: ``seq`` (by sequence range), ``time`` (by time window) or ``none``.
        host: which REST host (``main`` or ``history``); None for ``none``.
        reason: why not, for ``none``.
    """

    method: str
    host: str | None = None
    reason: str | None = None

    @property
    def recoverable(self) -> bool:
        """True unless ``method`` is ``none``."""
        return self.method != "none"


class VenueSettings(BaseSettings):
    """Base of a venue's settings (a pydantic-settings model with the venue's own env prefix,
    ``TICKVAULT_<NAME>_``). Subclasses add their fields; these are common to every venue."""

    top_n: int | None = None
    rest_url: str = ""
    history_url: str | None = None

    def universe_groups(self) -> tuple[str, ...]:
        """The groups the universe is kept in (``universe_versions.currency``): currencies,
        categories, ... One group ``"*"`` unless the venue says otherwise."""
        return ("*",)


class RestClient(abc.ABC):
    """What the shared code needs of a venue's REST client: an async context manager with
    request counters. The venue's own methods are used by its own universe and recovery code."""

    calls: int
    retries: int
    #: The pace shared with other clients (:func:`collector_daemon.core.rest_budget.budgeted_client`
    #: sets it when the venue has a :meth:`Venue.request_budget`); closed with the client.
    budget: "RestBudget | None" = None

    async def __aenter__(self) -> "RestClient":
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()
        if self.budget is not None:
            await self.budget.aclose()

    async def attempts(self, retryable: Callable[[BaseException], bool], *, tries: int,
                       backoff_max_s: float) -> AsyncIterator[AttemptManager]:
        """tenacity attempts of one call: ``async for attempt in self.attempts(...): with attempt:
        ...`` retries the errors ``retryable`` accepts with capped exponential backoff and jitter
        (0.5 s doubling up to ``backoff_max_s``), at most ``tries`` times, then re-raises; each
        retry is counted in :attr:`retries`."""
        async for attempt in AsyncRetrying(
            retry=retry_if_exception(retryable),
            wait=wait_random_exponential(multiplier=0.5, max=backoff_max_s),
            stop=stop_after_attempt(tries), reraise=True,
        ):
            if attempt.retry_state.attempt_number > 1:
                self.retries += 1
            yield attempt

    @abc.abstractmethod
    async def aclose(self) -> None:
        """Close the HTTP connections."""


class Venue(abc.ABC):
    """One exchange, as the daemon, the emulator, ``status`` and Dagster see it.

    Subclasses set the class attributes and implement the methods; an instance is exported as
    ``VENUE`` from ``collector_daemon/venues/<name>/__init__.py``.
    """

    #: Registry name, also the ``venue`` column of every row.
    name: ClassVar[str]
    #: The settings model (own env prefix).
    settings_class: ClassVar[type[VenueSettings]]
    #: Connection and subscription limits.
    limits: ClassVar[ConnectionLimits]
    #: Channel prefix -> stream name: which stream a subscribed channel feeds (as data; the
    #: daily audit reads disconnect windows through it).
    channel_streams: ClassVar[Mapping[str, str]]
    #: REST errors a recovery survives (the gap stays open and is retried); others propagate.
    rest_errors: ClassVar[tuple[type[BaseException], ...]] = ()
    #: Folder of the venue's own migrations (its tables), applied after ``schema/``; None = none.
    schema_dir: ClassVar[Path | None] = None
    #: The venue's own tables (from :attr:`schema_dir`) the nightly Parquet export covers,
    #: beside the shared quotes, trades and candles (``orchestration.lib.export``): each needs a
    #: ``venue`` column and a unique key with a timestamptz column; a table with an
    #: ``account_id`` column is private and exported per account.
    export_tables: ClassVar[tuple[str, ...]] = ()
    #: How far back the venue's main REST host serves a time window (s); None = no limit.
    recent_horizon_s: ClassVar[float | None] = None
    #: How far back (days) the collector looks for the last stored sequence number per
    #: instrument at start (``GapKeeper.seed``); None = the whole table (Kraken: REST serves all
    #: history, so the first live trade opens the gap from the last stored one to now).
    sequence_seed_days: ClassVar[int | None] = 3
    #: The streams of an account's private connection (``data_gaps.stream`` of its lost windows,
    #: with ``account_id``) -> why REST reconciliation cannot restore what a lost window held
    #: ("" = it can: the gap is ``backfilled`` once a reconciliation after the window succeeded;
    #: else the gap is ``unrecoverable`` with this reason). Empty: no private data.
    private_streams: ClassVar[Mapping[str, str]] = {}
    #: The private streams whose past windows REST history serves (a day's reconciliation
    #: backfills a lost window of any past day); the others' REST answer is the current
    #: snapshot only (a lost window is restored by the reconciliation right after it, or the
    #: current day's, and is ``unrecoverable`` once its day is past).
    private_history_streams: ClassVar[frozenset[str]] = frozenset()
    #: Columns of the ``trades`` stream's table that order trades sharing a millisecond of
    #: ``exchange_ts`` deterministically (candles' open and close, ``orchestration.lib.candles``);
    #: the table itself is the ``trades`` stream's (:meth:`trades_table`).
    trade_order: ClassVar[tuple[str, ...]] = ("trade_seq", "trade_id")

    def load_settings(self, **overrides: Any) -> VenueSettings:
        """The venue's settings from the environment with ``overrides`` on top.

        Raises:
            pydantic.ValidationError: a value is missing or invalid.
        """
        return self.settings_class(**{k: v for k, v in overrides.items() if v is not None})

    @abc.abstractmethod
    def streams(self, settings: VenueSettings) -> tuple[StreamSpec, ...]:
        """The streams this venue produces (with watchdog limits from ``settings``)."""

    def stream_of_channel(self, channel: str) -> str | None:
        """The stream a channel feeds (:attr:`channel_streams` by prefix), None for control channels."""
        return _stream_of(self.channel_streams, channel)

    def channel_instrument(self, channel: str) -> str | None:
        """The instrument of a per-instrument channel; None for chain-wide ones."""
        return None

    @abc.abstractmethod
    def ws_endpoints(self, settings: VenueSettings) -> dict[str, str]:
        """WebSocket URL per endpoint key (:meth:`VenueProtocol.endpoint_of`)."""

    @abc.abstractmethod
    def protocol(self, settings: VenueSettings) -> VenueProtocol:
        """The wire protocol configured by ``settings``."""

    @abc.abstractmethod
    def rest_client(self, settings: VenueSettings, *, base_url: str | None = None,
                    max_concurrency: int = 4) -> RestClient:
        """A new REST client (``base_url`` overrides the settings', e.g. the history host)."""

    def request_budget(self, settings: VenueSettings) -> "RequestRate | None":
        """The venue's per-IP REST request limit as the pace every client on one IP shares
        (:mod:`collector_daemon.core.rest_budget`); None (the default) = no shared pace. A venue
        returning one paces its client's requests with :attr:`RestClient.budget`."""
        return None

    @abc.abstractmethod
    async def fetch_universe(self, rest: RestClient, settings: VenueSettings,
                             group: str) -> "FetchedUniverse":
        """The live instruments of one universe group and the ranked subscription set."""

    def universe_kinds(self, settings: VenueSettings) -> tuple[str, ...]:
        """Instrument kinds the universe is chosen from (stored with each universe version)."""
        return ("*",)

    def plan_recovery(self, gap: "Gap", stream: StreamSpec, *, now_us: int,
                      history_available: bool) -> RecoveryPlan:
        """How ``gap`` can be recovered over REST at venue time ``now_us`` (µs), or why not.

        The default: nothing for a ``Recovery.NONE`` stream; by sequence range when the gap has
        one; by time window while the window is within :attr:`recent_horizon_s` (less a
        10-minute margin: a recovery takes time) on the main host, else on the history host when
        one is configured, else unrecoverable.
        """
        if stream.recovery is Recovery.NONE:
            return RecoveryPlan("none", reason=stream.unrecoverable_reason or
                                f"{self.name} serves no history of {stream.name}")
        horizon = self.recent_horizon_s
        recent = horizon is None or gap.gap_start >= now_us - int((horizon - 600) * 1e6)
        if (stream.recovery is Recovery.SEQUENCE and gap.instrument_name != "*"
                and gap.seq_from is not None and gap.seq_to is not None):
            return RecoveryPlan("seq", "main" if recent or not history_available else "history")
        if recent:
            return RecoveryPlan("time", "main")
        if history_available:
            return RecoveryPlan("time", "history")
        return RecoveryPlan("none", reason=self.horizon_reason())

    def horizon_reason(self) -> str:
        """Why a window older than :attr:`recent_horizon_s` cannot be recovered without a history host."""
        return (f"window older than {self.recent_horizon_s / 3600:g} h: {self.name}'s REST serves "
                "only more recent data and no history host is configured")

    @abc.abstractmethod
    def recovery_pages(self, rest: RestClient, gap: "Gap", plan: RecoveryPlan,
                       settings: VenueSettings,
                       instrument_groups: Mapping[str, tuple[str, str]],
                       ) -> AsyncIterator[list[tuple] | tuple[TableSpec, list[tuple]]]:
        """Rows of ``gap``'s stream table fetched over REST for ``plan``, page by page, already
        limited to the gap (its instrument, sequence range or time window), stamped with the
        receive time (µs, when the page arrived) and the source ``rest``.
        A page may also be ``(table, rows)``: rows of another table the same window lost (Kraken's
        ``exchange_candles`` from REST OHLC), written by the table's own rules (upsert or insert-if-absent).
        ``instrument_groups`` maps the instrument names of specific gaps to
        ``(universe group, kind)`` as stored in ``instruments``."""

    async def open_interest(self, rest: RestClient, settings: VenueSettings) -> dict[str, float] | None:
        """Open interest per instrument now, from REST (the ``open_interest_vs_rest`` check);
        None when the venue offers no such snapshot."""
        return None

    def private_ws_url(self, settings: VenueSettings) -> str | None:
        """The WebSocket URL of the venue's private (per account) connections; None when the
        venue records no private data (the default)."""
        return None

    def private_protocol(self, settings: VenueSettings, account: "Account") -> VenueProtocol:
        """The wire protocol of ``account``'s private connection (authentication, topics, rows
        carrying the account id).

        Raises:
            NotImplementedError: the venue records no private data.
        """
        raise NotImplementedError(f"venue {self.name} records no private data")

    def reconcile_account(self, rest: RestClient, settings: VenueSettings, account: "Account",
                          since_us: int | None, until_us: int | None = None,
                          ) -> AsyncIterator[tuple[TableSpec, list[tuple]]]:
        """What ``account``'s private streams may have missed in ``[since_us, until_us)`` (µs;
        since None = as far back as the venue's settings say; until None = up to now, with
        snapshots of the current state), fetched over REST as ``(table, rows)`` pages (rows
        stamped source ``rest``; rows already stored are skipped by the tables' natural keys).
        Run at start and after every reconnect, and per day by Dagster.

        Raises:
            NotImplementedError: the venue records no private data.
        """
        raise NotImplementedError(f"venue {self.name} records no private data")

    def emulation(self, fanout: int = 1, churn: bool = False) -> Any:
        """The venue's emulation for ``tickvault emulate`` (a
        :class:`collector_daemon.emulator.venue.VenueEmulation`).

        Raises:
            NotImplementedError: the venue has no emulation.
        """
        raise NotImplementedError(f"venue {self.name} has no emulation")

    def stream_specs(self) -> tuple[StreamSpec, ...]:
        """The streams with the settings' defaults (their tables and gap policies do not depend
        on settings; only watchdog limits do)."""
        return self.streams(self.settings_class.model_construct())

    def trades_table(self) -> TableSpec | None:
        """The table of the venue's ``trades`` stream (every trade once, with ``exchange_ts``,
        ``price``, ``amount`` and the :attr:`trade_order` columns), None when it has none."""
        for spec in self.stream_specs():
            if spec.name == "trades":
                return spec.table
        return None

    def stream(self, settings: VenueSettings, name: str) -> StreamSpec:
        """The stream called ``name``.

        Raises:
            KeyError: the venue has no such stream.
        """
        for spec in self.streams(settings):
            if spec.name == name:
                return spec
        raise KeyError(f"venue {self.name} has no stream {name!r}")


# ------------------------------------------------------------------------------- registry

_REGISTRY: dict[str, Venue] = {}
_discovered = False


class UnknownVenue(ValueError):
    """A venue name that is not registered; the message lists the known ones."""


def register(venue: Venue) -> Venue:
    """Add ``venue`` to the registry (idempotent for the same object); returns it.

    Raises:
        ValueError: another venue is registered under the same name.
    """
    other = _REGISTRY.get(venue.name)
    if other is not None and other is not venue:
        raise ValueError(f"venue {venue.name!r} registered twice ({type(other).__name__}, "
                         f"{type(venue).__name__})")
    _REGISTRY[venue.name] = venue
    return venue


def _discover() -> None:
    global _discovered
    if _discovered:
        return
    _discovered = True
    for info in pkgutil.iter_modules(__path__, __name__ + "."):
        if info.ispkg:
            module = importlib.import_module(info.name)
            if isinstance(getattr(module, "VENUE", None), Venue):
                register(module.VENUE)
    for name in filter(None, (s.strip() for s in os.environ.get("TICKVAULT_VENUE_PLUGINS", "").split(","))):
        module = importlib.import_module(name)
        venue = getattr(module, "VENUE", None)
        if not isinstance(venue, Venue):
            raise ValueError(f"TICKVAULT_VENUE_PLUGINS: module {name} exports no VENUE")
        register(venue)


def venues() -> dict[str, Venue]:
    """Every registered venue by name (built-in packages and ``TICKVAULT_VENUE_PLUGINS``)."""
    _discover()
    return dict(sorted(_REGISTRY.items()))


def select_venues(names: str | None) -> dict[str, Venue]:
    """The venues named in ``names`` (comma-separated, e.g. ``TICKVAULT_VENUES``), or every
    registered venue when ``names`` is empty or None.

    Raises:
        UnknownVenue: a name is not registered; the message lists the known ones.
    """
    wanted = [n.strip() for n in (names or "").split(",") if n.strip()]
    return {n: get_venue(n) for n in wanted} if wanted else venues()


def get_venue(name: str) -> Venue:
    """The venue called ``name``.

    Raises:
        UnknownVenue: no such venue; the message lists the known ones.
    """
    known = venues()
    try:
        return known[name]
    except KeyError:
        raise UnknownVenue(f"unknown venue {name!r}; known venues: {', '.join(known)}") from None


__all__: Sequence[str] = (
    "ConnectionLimits", "Control", "Data", "Decoder", "IdSource", "ReadBatch", "RejectedFrame",
    "Recovery", "RecoveryIncomplete", "RecoveryPlan", "Request", "Response", "RestClient",
    "StreamSpec", "UnknownVenue", "Venue", "VenueProtocol", "VenueSettings", "decode_json_object",
    "get_venue", "register", "screen_frame",
    "select_venues", "venues",
)
