"""Venue-agnostic WebSocket connection lifecycle.

One :class:`Connection` owns a set of channels on one socket and keeps them subscribed:

connect -> a new decoder (per-connection state) -> venue open requests (heartbeat setup,
authentication) -> client pings every ``venue.ping_interval_s`` if the venue wants them ->
subscribe in frames of at most
``venue.max_channels_per_subscribe`` channels, paced by a shared rate limiter -> diff every ack
against the request, over every response it gets (Kraken acknowledges per symbol; refused
channels are recorded and retried on the next reconcile) -> read
frames until the socket closes -> record the disconnect -> capped exponential backoff with jitter
(:func:`backoff_delay`: every delay within [backoff_min_s, backoff_max_s]) -> reconnect and
resubscribe.

Every connect, subscribe ack and disconnect becomes a ``connection_events`` row, and so does each
change of the venue's announced system status (``Control.status``, event ``status``, the status in
``reason``; while it is one the venue names in ``min_reconnect_delay_s``, e.g. Kraken's
maintenance, reconnects wait at least that long). The first ack
after a reconnect carries the lost window: ``window_start`` = last frame received before the
disconnect, ``window_end`` = when the resubscription was confirmed.

The reader never blocks on the database: rows go to the :class:`~collector_daemon.pipeline.Pipeline`,
which applies backpressure by making the reader wait when the writer queue is full. A frame that
fails to decode is counted and stored in ``rejected_messages``; it never ends the connection.
A notification with no rows (Deribit may send ``"data":[]`` on a trades channel) counts as a
message and as liveness of its stream, and adds nothing. An unexpected exception while handling
one frame (a bug, not bad input) is logged with its traceback and the frame is stored in
``rejected_messages`` with the exception as the reason; reading goes on. One while connecting or
subscribing is logged likewise and handled as a disconnect (backoff, reconnect).

The WebSocket client is picows through its websockets-compatible API (``picows.websockets``):
~1.3 µs of CPU per received frame against ~10 µs for the websockets library, which halved the
collector's CPU per row (docs/benchmarks.md, "WebSocket client").
"""

from __future__ import annotations

import asyncio
import functools
import logging
import random
import socket
import ssl
import time
import types
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Generator, Iterator
from dataclasses import dataclass, field
from operator import itemgetter
from typing import Any, TypeVar

from aiolimiter import AsyncLimiter
from picows import websockets
from picows import WSParsedURL
from picows.websockets import ClientConnection, connect

from collector_daemon.metrics import Stats
from collector_daemon.pipeline import Pipeline
from collector_daemon.rows import CONNECTION_EVENTS, REJECTED_MESSAGES, REJECTED_RAW_CAP, TableSpec
from collector_daemon.venues import (
    Decoder, IdSource, ReadBatch, Request, Response, VenueProtocol,
)

log = logging.getLogger(__name__)
T = TypeVar("T")

#: Transport limit: larger frames close the socket (websockets error 1009), so keep it generous
#: and reject oversized frames ourselves (``max_frame_chars``) without losing the connection.
TRANSPORT_MAX_SIZE = 64 * 2**20


def receive_buffer_socket_factory(recv_buffer_bytes: int) -> Callable[[WSParsedURL], Awaitable[socket.socket]]:
    """A picows ``socket_factory``: a TCP socket to the host's first address, with
    ``SO_RCVBUF = recv_buffer_bytes`` set before connecting so the TCP window is scaled to it.

    Why: picows doubles its read buffer whenever a read fills it, and parses (and queues) every
    frame of a read at once; its ``max_queue`` pause only stops the *next* read. With the
    kernel's autotuned receive buffer (up to ``net.ipv4.tcp_rmem`` max, 32 MiB here) a saturated
    collector's reads grew to tens of MB per socket: ~200 MB of queued frames at max speed
    (docs/benchmarks.md). A fixed buffer bounds one read to about twice this size.

    Raises:
        OSError (``socket.gaierror``, ``ConnectionRefusedError``, ...): the host does not resolve
            or refuses (a reconnect is attempted later).
    """
    async def factory(url: WSParsedURL) -> socket.socket:
        loop = asyncio.get_running_loop()
        family, _, _, _, address = (await loop.getaddrinfo(url.host, url.port,
                                                           type=socket.SOCK_STREAM))[0]
        sock = socket.socket(family, socket.SOCK_STREAM)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, recv_buffer_bytes)
            sock.setblocking(False)
            await loop.sock_connect(sock, address)   # resolved once, here
        except BaseException:
            sock.close()
            raise
        return sock
    return factory


@functools.cache
def _exchange_ts_index(table: TableSpec) -> int | None:
    return table.exchange_ts_index


@types.coroutine
def _resume(recv: Coroutine[Any, Any, T], waiting: Any) -> Generator[Any, None, T]:
    """Await a ``recv()`` coroutine that :func:`read_batches` started and that suspended on the
    future ``waiting``: hand that future to the task, then run the coroutine on. A cancellation
    meanwhile goes into the coroutine (picows resets its receive state) before it propagates."""
    try:
        yield waiting
    except BaseException as exc:
        try:
            recv.throw(exc)
        finally:
            recv.close()
        raise
    return (yield from recv.__await__())


async def read_batches(ws: ClientConnection) -> AsyncIterator[list[str | bytes]]:
    """The messages of ``ws`` in batches: each batch is every message picows has parsed and
    queued by the time the previous batch was handled, at least one (picows parses all the
    frames of a socket read at once, so a batch is about one read). Ends when the socket closes
    normally; raises ``ConnectionClosedError`` otherwise, after the messages received before it.

    How: each ``recv()`` is started by hand (``send(None)``): with a message queued it completes
    at once (``StopIteration``); on an empty queue it suspends on a future, and the next batch
    starts by awaiting that same coroutine (:func:`_resume`). No event-loop round trip and no
    async-generator step per message.
    """
    recv = ws.recv
    pending: Coroutine[Any, Any, str | bytes] | None = None   # a recv() suspended on ``waiting``
    waiting: Any = None
    try:
        while True:
            try:
                if pending is None:
                    first = await recv()
                else:
                    coro, pending = pending, None
                    first = await _resume(coro, waiting)
            except websockets.exceptions.ConnectionClosedOK:
                return
            batch = [first]
            while True:
                coro = recv()
                try:
                    waiting = coro.send(None)
                except StopIteration as done:
                    batch.append(done.value)
                    continue
                except websockets.exceptions.ConnectionClosed:
                    break    # closed and nothing queued: the next recv() says so, after this batch
                pending = coro
                break
            yield batch
    finally:
        if pending is not None:
            pending.close()


class ReplayFinished(Exception):
    """The server closed the socket normally with reason 'replay finished' (the emulator)."""


def _now_us() -> int:
    return time.time_ns() // 1000


class Connection:
    """Keeps ``desired`` channels subscribed on one WebSocket and feeds decoded rows to the pipeline.

    Args:
        venue: the venue's protocol.
        url: WebSocket URL.
        connection_id: stable name of this connection (stored in events and rejected rows).
        pipeline: where rows go.
        stats: shared counters.
        subscribe_limiter: paces subscribe frames across the venue's connections.
        backoff_min_s / backoff_max_s: bounds of every reconnect delay (s); see
            :func:`backoff_delay` (``ValueError`` here when ``0 < min <= max`` does not hold).
        request_timeout_s: how long to wait for a subscribe/heartbeat acknowledgement.
        refused_retry_s: channels the exchange refused are requested again after this long.
        recv_buffer_bytes: SO_RCVBUF of the socket (:func:`receive_buffer_socket_factory`);
            0 = the OS's autotuned buffer.
        max_frame_chars: frames longer than this are rejected (kept, capped) without decoding.
        stop_on_replay_end: return from :meth:`run` when the server closes with code 1000 and
            reason 'replay finished' (``tickvault collect --replay``).
        watchdog: staleness limits (:class:`Watchdog`); None = no watchdog.
        observers: table name -> callback given the rows of every frame for that table (the
            sequence gap detector watches the venue's sequenced streams).
        on_lost_window: called ``(connection_id, start_us, end_us, streams)`` with the window a
            reconnect lost **in exchange time** (µs): from the newest exchange timestamp received
            before the disconnect to the exchange timestamp of the first data frame after the
            resubscription (``end_us`` None when the connection stopped before one arrived).
        stream_tables: stream name -> table name of the venue's streams (default: a stream is
            named after its table); the watchdog's limits are per table.
        endpoint: the venue's endpoint key this connection serves (``VenueProtocol.endpoint_of``).
        connect_limiter: paces (re)connects across the venue's connections
            (``ConnectionLimits.connects_per_period``); None = only the backoff.
    """

    def __init__(self, venue: VenueProtocol, url: str, connection_id: str, pipeline: Pipeline,
                 stats: Stats, subscribe_limiter: AsyncLimiter, *, backoff_min_s: float = 1.0,
                 backoff_max_s: float = 60.0, request_timeout_s: float = 10.0,
                 max_frame_chars: int = 2**20, stop_on_replay_end: bool = False,
                 refused_retry_s: float = 10.0, recv_buffer_bytes: int = 2**20,
                 watchdog: "Watchdog | None" = None,
                 observers: dict[str, Callable[[list[tuple]], None]] | None = None,
                 on_lost_window: Callable[[str, int, int | None, tuple[str, ...]], None] | None = None,
                 stream_tables: dict[str, str] | None = None, endpoint: str = "public",
                 connect_limiter: AsyncLimiter | None = None) -> None:
        self.venue = venue
        self.url = url
        self.connection_id = connection_id
        self.pipeline = pipeline
        self.stats = stats
        self.subscribe_limiter = subscribe_limiter
        backoff_delay(0, backoff_min_s, backoff_max_s)   # bad bounds fail here, not at a reconnect
        self.backoff_min_s = backoff_min_s
        self.backoff_max_s = backoff_max_s
        self.request_timeout_s = request_timeout_s
        self.max_frame_chars = max_frame_chars
        self.stop_on_replay_end = stop_on_replay_end
        self.refused_retry_s = refused_retry_s
        self._socket_options: dict[str, object] = (
            {"socket_factory": receive_buffer_socket_factory(recv_buffer_bytes)}
            if recv_buffer_bytes > 0 else {})
        if url.startswith("wss://"):
            # TLS through asyncio's own SSL transport: picows' default (aiofastnet) dropped the
            # decrypted data it still held when the server closed the socket while reading was
            # paused (tests/emulator/test_emulator_tls.py lost two thirds of a replay). The CA
            # is the default context's: the system's, or SSL_CERT_FILE.
            self._socket_options["use_aiofastnet"] = False
        self.watchdog = watchdog
        self.observers = observers or {}
        self.on_lost_window = on_lost_window
        self.stream_tables = stream_tables or {}
        self.endpoint = endpoint
        self.connect_limiter = connect_limiter
        #: the venue's last announced system status (``Control.status``), None before any
        self.venue_status: str | None = None
        self._last_by_table: dict[str, int] = {}
        self.watchdog_reconnects = 0
        self.desired: list[str] = []
        self.subscribed: set[str] = set()
        self.refused: set[str] = set()
        # channels whose data is accepted: requested on this socket and not unsubscribed since
        # (data may arrive right behind the subscribe ack, before the ack is processed)
        self._accepting: set[str] = set()
        # True once the venue's open requests of the current socket are answered: reconciles
        # before that only record ``desired`` (the open's own reconcile subscribes it)
        self._open_done = False
        self._ws: ClientConnection | None = None
        self._decoder = venue.decoder_for(endpoint)
        self._ids = IdSource()
        # request id -> (future, responses so far, responses expected)
        self._pending: dict[int | str, tuple[asyncio.Future[list[Response]], list[Response], int]] = {}
        self._reconcile_lock = asyncio.Lock()
        self._retry_task: asyncio.Task | None = None
        self._disconnect_reason: str | None = None
        self._last_frame_us = 0
        self._lost_since_us: int | None = None
        #: Windows lost by reconnects, as the ``subscribed`` events carry them (µs, receive time:
        #: last frame before the disconnect, resubscription confirmed), kept only once a consumer
        #: (the private session) set a list here and takes them out; None: not kept.
        self.lost_windows: list[tuple[int, int]] | None = None
        self._max_exchange_us = 0                      # newest exchange timestamp received
        # set at a disconnect, reported at the first data frame of the next connection (data
        # passes the ``_accepting`` check only once a channel is being resubscribed)
        self._lost_exchange_from: int | None = None
        self._stopping = False
        self._stopped = asyncio.Event()     # set by stop(): ends a connect attempt or back-off
        self._unreachable_attempts = 0      # failed connects in a row that never reached the host
        self.connects = 0
        #: monotonic time since when the socket is down (None while connected)
        self.down_since: float | None = time.monotonic()

    # ----------------------------------------------------------------- public API
    async def set_channels(self, channels: list[str]) -> None:
        """Replace the desired channel set; when connected, (un)subscribe only the difference.
        Called while the connection is still opening (its open requests unanswered), it only
        records the set: the open subscribes whatever is desired once the requests are answered."""
        self.desired = list(dict.fromkeys(channels))
        if self._ws is not None:
            await self.reconcile()

    async def run(self) -> None:
        """Connect and keep the channels subscribed until :meth:`stop` (or the replay ends)."""
        attempt = 0
        while not self._stopping:
            try:
                if self.connect_limiter is not None:   # a stop ends the wait for a connect slot
                    if not (await unless_set(self._stopped, self.connect_limiter.acquire()))[0]:
                        break
                _, ws = await unless_set(self._stopped, connect(
                    self.url, max_size=TRANSPORT_MAX_SIZE, compression=None, open_timeout=10,
                    close_timeout=2, **self._socket_options))
                if ws is None or self._stopping:   # stopped while connecting: nothing received
                    if ws is not None:
                        await ws.close(1000, "collector shutdown")
                    break
                async with ws:
                    self._unreachable_attempts = 0
                    # a new socket has nothing subscribed; cleared before the socket is visible
                    # to reconcile(), never after (channels subscribed meanwhile would be lost)
                    self._open_done = False
                    self.subscribed.clear()
                    self._accepting.clear()
                    self._ws = ws
                    self.down_since = None
                    self.connects += 1
                    self.stats.connected += 1
                    await self._event("connect")
                    self._decoder = self.venue.decoder_for(self.endpoint)   # no state from a dead socket
                    helpers: list[asyncio.Task] = []
                    try:
                        reader = asyncio.create_task(self._read(ws), name=f"read-{self.connection_id}")
                        if self.watchdog is not None:
                            helpers.append(asyncio.create_task(self._watch(ws),
                                                               name=f"watch-{self.connection_id}"))
                        if self.venue.ping_interval_s:
                            helpers.append(asyncio.create_task(self._ping(ws),
                                                               name=f"ping-{self.connection_id}"))
                        await self._open(ws)
                        attempt = 0
                        await reader
                    finally:
                        self.stats.connected -= 1
                        self._ws = None
                        self._open_done = False
                        self.down_since = time.monotonic()
                        self._fail_pending()
                        reader.cancel()
                        for task in helpers:
                            task.cancel()
            except ReplayFinished:
                await self._event("disconnect", reason="replay finished")
                return
            except Exception as exc:  # noqa: BLE001 - a connection never dies on an error
                if self.stop_on_replay_end and _is_replay_end(exc):
                    await self._event("disconnect", reason="replay finished")
                    return
                if not isinstance(exc, (OSError, asyncio.TimeoutError,
                                        websockets.exceptions.WebSocketException)):
                    log.exception("%s: unexpected error on the connection", self.connection_id)
                reason = self._disconnect_reason or _describe(exc)
                self._disconnect_reason = None
                if self._stopping:
                    await self._event("disconnect", reason="shutdown")
                    return
                self._mark_lost()
                await self._event("disconnect", reason=reason,
                                  window_start=self._last_frame_us or None)
                self.stats.reconnects += 1
                delay = max(backoff_delay(attempt, self.backoff_min_s, self.backoff_max_s),
                            self.venue.min_reconnect_delay_s(self.venue_status))
                attempt += 1
                self._report_unreachable(exc)
                log.warning("%s: disconnected (%s); reconnecting in %.1f s",
                            self.connection_id, reason, delay)
                await unless_set(self._stopped, asyncio.sleep(delay))   # a stop ends the back-off
        await self._event("disconnect", reason="shutdown")

    def _report_unreachable(self, exc: BaseException) -> None:
        """After ``UNREACHABLE_REPORT_AFTER`` failed connects in a row that never reached the
        exchange (name resolution failed, connection refused or timed out), say so plainly,
        once per outage, and point to the replay; the reconnects go on."""
        cause = unreachable_cause(exc)
        if cause is None:
            return
        self._unreachable_attempts += 1
        if self._unreachable_attempts == UNREACHABLE_REPORT_AFTER:
            log.error("%s: cannot reach the exchange at %s after %d attempts: %s. Is this machine "
                      "offline? Still retrying (back-off capped at %g s). Without internet, "
                      "replay a capture instead: scripts/run --replay CAPTURE", self.connection_id,
                      self.url, self._unreachable_attempts, cause, self.backoff_max_s)

    async def stop(self) -> None:
        """Stop reading without dropping what the exchange has already sent: unsubscribe every
        subscribed channel and wait for the acks (at most ``STOP_UNSUBSCRIBE_S``; the exchange
        answers after the data it sent before, which the reader keeps), then close the socket.
        Closing at once dropped the frames in flight (sent, never read). Rows already received
        stay in the pipeline."""
        self._stopping = True
        self._stopped.set()
        if self._retry_task is not None:
            self._retry_task.cancel()
        ws = self._ws
        if ws is None:
            return
        try:
            await asyncio.wait_for(self._unsubscribe_all(ws), STOP_UNSUBSCRIBE_S)
        except (OSError, asyncio.TimeoutError, websockets.exceptions.WebSocketException) as exc:
            log.info("%s: unsubscribe at shutdown not confirmed (%s); closing", self.connection_id,
                     _describe(exc))
        await ws.close(1000, "collector shutdown")

    async def _unsubscribe_all(self, ws: ClientConnection) -> None:
        """Unsubscribe what is subscribed (after a subscribe in flight); no events recorded: the
        ``disconnect`` event with reason ``shutdown`` follows."""
        async with self._reconcile_lock:
            for chunk in self.venue.subscribe_batches(sorted(self.subscribed)):
                await self._request(ws, self.venue.unsubscribe_request(chunk, self._ids))

    async def reconcile(self) -> None:
        """Subscribe desired channels that are not subscribed (including ones refused before),
        unsubscribe subscribed ones no longer desired. Does nothing while disconnected or while
        the socket's open requests are unanswered (the open reconciles when they are)."""
        async with self._reconcile_lock:
            ws = self._ws
            if ws is None or not self._open_done:
                return
            desired = set(self.desired)
            missing = [c for c in self.desired if c not in self.subscribed]
            extra = [c for c in self.subscribed if c not in desired]
            for chunk in self.venue.subscribe_batches(extra):
                request = self.venue.unsubscribe_request(chunk, self._ids)
                gone = set(self.venue.acknowledged_channels(request, await self._request(ws, request)))
                self.subscribed -= gone
                self._accepting -= gone
                await self._event("unsubscribed", channels=sorted(gone))
            for chunk in self.venue.subscribe_batches(missing):
                async with self.subscribe_limiter:
                    self._accepting.update(chunk)
                    request = self.venue.subscribe_request(chunk, self._ids)
                    responses = await self._request(ws, request)
                acked = set(self.venue.acknowledged_channels(request, responses)) & set(chunk)
                errors = [r.error for r in responses if r.error is not None]
                refused = [c for c in chunk if c not in acked]
                self.subscribed |= acked
                self.refused = (self.refused - acked) | set(refused)
                if refused:
                    self.stats.refused_channels += len(refused)
                    log.warning("%s: exchange refused %d of %d channels (%s)%s", self.connection_id,
                                len(refused), len(chunk), ", ".join(refused[:3]),
                                f"; error {errors[0]}" if errors else "")
                window_start = window_end = None
                if self._lost_since_us is not None and acked:
                    window_start, window_end = self._lost_since_us, _now_us()
                    self._lost_since_us = None
                    if self.lost_windows is not None:
                        self.lost_windows.append((window_start, window_end))
                await self._event("subscribed", channels=sorted(acked), refused_channels=refused,
                                  reason=str(errors[0]) if errors else None,
                                  window_start=window_start, window_end=window_end)
            if self.refused and (self._retry_task is None or self._retry_task.done()):
                self._retry_task = asyncio.create_task(self._retry_refused(),
                                                       name=f"retry-{self.connection_id}")

    # ----------------------------------------------------------------- internals
    async def _retry_refused(self) -> None:
        """Subscribe the channels the exchange refused again after ``refused_retry_s``."""
        await asyncio.sleep(self.refused_retry_s)
        if self.refused and self._ws is not None:
            log.info("%s: retrying %d refused channel(s)", self.connection_id, len(self.refused))
            try:
                await self.reconcile()
            except (OSError, asyncio.TimeoutError, websockets.exceptions.WebSocketException) as exc:
                log.warning("%s: retry of refused channels failed: %s", self.connection_id, exc)

    async def _open(self, ws: ClientConnection) -> None:
        for request in await self.venue.open_requests(self._ids):
            for response in await self._request(ws, request):
                if response.error is not None:
                    log.error("%s: setup request failed: %s", self.connection_id, response.error)
        now = _now_us()
        # in place: the reader task (already running) holds a reference to this dict
        self._last_by_table.clear()
        self._last_by_table.update({t: now for t in self._tables_of(self.desired)})
        self._open_done = True
        await self.reconcile()   # what is desired now, including channels handed in meanwhile

    def _tables_of(self, channels: list[str]) -> set[str]:
        """Tables fed by ``channels`` (the watchdog's keys)."""
        return {t for c in channels if (t := self.watchdog_table(c)) is not None}

    def watchdog_table(self, channel: str) -> str | None:
        """The table a channel's data lands in, per the venue's channel -> stream map."""
        stream = self.venue.stream_of(channel)
        return None if stream is None else self.stream_tables.get(stream, stream)

    async def _request(self, ws: ClientConnection, request: Request) -> list[Response]:
        """Send ``request``; the responses that answer it (``request.responses`` of them, or
        those that arrived within ``request_timeout_s``).

        Raises:
            TimeoutError: no response at all within ``request_timeout_s``.
            ConnectionError: the socket closed meanwhile.
        """
        future: asyncio.Future[list[Response]] = asyncio.get_running_loop().create_future()
        got: list[Response] = []
        self._pending[request.request_id] = (future, got, request.responses)
        try:
            await ws.send(request.frame)
            try:
                return await asyncio.wait_for(future, self.request_timeout_s)
            except TimeoutError:
                if got:
                    return list(got)   # the rest never came: those channels are refused
                raise
        finally:
            self._pending.pop(request.request_id, None)

    def _answer(self, response: Response) -> None:
        entry = self._pending.get(response.request_id)
        if entry is not None:
            future, got, expected = entry
            got.append(response)
            if len(got) >= expected and not future.done():
                future.set_result(list(got))

    async def _ping(self, ws: ClientConnection) -> None:
        """Send the venue's application ping every ``ping_interval_s`` (its answer is a Control)."""
        while True:
            await asyncio.sleep(self.venue.ping_interval_s)
            frame = self.venue.ping_frame(self._ids)
            if frame is not None:
                await ws.send(frame)

    def _fail_pending(self) -> None:
        for future, _, _ in self._pending.values():
            if not future.done():
                future.set_exception(ConnectionError("connection closed"))
        self._pending.clear()

    def _mark_lost(self) -> None:
        if self._lost_since_us is None:
            self._lost_since_us = self._last_frame_us or _now_us()
        if self._lost_exchange_from is None and self._max_exchange_us:
            self._lost_exchange_from = self._max_exchange_us

    def _report_window(self, end_us: int | None) -> None:
        """Hand the exchange-time window lost by the last reconnect to ``on_lost_window``."""
        start, self._lost_exchange_from = self._lost_exchange_from, None
        if start is not None and self.on_lost_window is not None:
            streams = tuple(sorted({s for c in self.desired if (s := self.venue.stream_of(c)) is not None}))
            self.on_lost_window(self.connection_id, start, end_us, streams)

    @property
    def exchange_clock_us(self) -> int:
        """Newest exchange timestamp received on this connection (µs; 0 before any data)."""
        return self._max_exchange_us

    def close_pending_window(self) -> None:
        """At shutdown: report a lost window that no data frame closed (end unknown)."""
        if self._lost_exchange_from is not None:
            self._report_window(None)

    async def _read(self, ws: ClientConnection) -> None:
        """Read until the socket closes: every batch of frames picows holds (:func:`read_batches`)
        is decoded at once (``Decoder.decode_read``) and booked once per table (stats, watermarks,
        observers, one ``pipeline.add``). A read whose handling raises unexpectedly (a bug, not
        bad input) is handled again frame by frame, so only the frame at fault is rejected (the
        observers may then see rows of that read twice; the gap keeper ignores repeats); one
        while booking a decoded read is logged with its traceback, and reading goes on."""
        decode_read = self._decoder.decode_read
        max_chars = self.max_frame_chars
        accepting = self._accepting
        observers = self.observers
        try:
            async for frames in read_batches(ws):
                receive_us = time.time_ns() // 1000
                self._last_frame_us = self.stats.last_frame_us = receive_us
                try:
                    batch = decode_read(frames, receive_us, accepting, max_chars)
                    if observers:
                        for name, (_, rows) in batch.tables.items():
                            observer = observers.get(name)
                            if observer is not None and rows:
                                observer(rows)
                except Exception:  # noqa: BLE001 - a bug: find the frame at fault
                    log.debug("%s: handling a read failed; again frame by frame", self.connection_id,
                              exc_info=True)
                    for frame in frames:
                        await self._handle_frame(ws, frame, receive_us)
                    continue
                try:
                    await self._book(ws, batch, receive_us)
                except websockets.exceptions.WebSocketException:
                    raise
                except Exception:  # noqa: BLE001 - a bug while booking never ends the connection
                    log.exception("%s: unexpected error booking a read of %d frames", self.connection_id,
                                  len(frames))
        except websockets.exceptions.ConnectionClosed as exc:
            if self.stop_on_replay_end and _is_replay_end(exc):
                raise ReplayFinished() from None
            raise
        if self._stopping:
            return
        rcvd = ws.close_code
        if self.stop_on_replay_end and rcvd == 1000 and ws.close_reason == "replay finished":
            raise ReplayFinished()
        raise ConnectionError(f"closed by server: code {rcvd} {ws.close_reason or ''}".strip())

    async def _handle_frame(self, ws: ClientConnection, frame: str | bytes, receive_us: int) -> None:
        """One frame through the general path (``Decoder.decode_read`` of the base class) and the
        observers; an unexpected exception is logged with its traceback and the frame rejected
        with it as the reason."""
        try:
            batch = Decoder.decode_read(self._decoder, [frame], receive_us, self._accepting,
                                        self.max_frame_chars)
            for name, (_, rows) in batch.tables.items():
                observer = self.observers.get(name)
                if observer is not None and rows:
                    observer(rows)
            await self._book(ws, batch, receive_us)
        except websockets.exceptions.WebSocketException:
            raise
        except Exception as exc:  # noqa: BLE001 - one frame never ends the connection
            log.exception("%s: unexpected error handling a frame; frame rejected", self.connection_id)
            await self._reject(frame if isinstance(frame, str) else frame.decode("utf-8", "replace"),
                               f"internal error: {type(exc).__name__}: {exc}", receive_us)

    async def _book(self, ws: ClientConnection, batch: ReadBatch, receive_us: int) -> None:
        """Account for one decoded read: rejected frames, then per table the counters, the
        watchdog's and the exchange clock's watermarks and one ``pipeline.add``, then the
        responses and control frames."""
        stats = self.stats
        stats.messages += batch.messages
        for frame, reason in batch.rejects:
            await self._reject(frame, reason, receive_us)
        pipeline = self.pipeline
        for name, (table, rows) in batch.tables.items():
            self._last_by_table[name] = receive_us
            if not rows:   # e.g. Deribit trades "data":[]: alive, nothing to store
                continue
            stats.rows_received[name] = stats.rows_received.get(name, 0) + len(rows)
            ts = _exchange_ts_index(table)
            if ts is not None:   # tables without exchange_ts (candles) move no clock
                exchange_us = max(map(itemgetter(ts), rows))
                if exchange_us > self._max_exchange_us:
                    self._max_exchange_us = exchange_us
                if self._lost_exchange_from is not None:
                    self._report_window(rows[0][ts])
            if pipeline.add(table, rows):
                await pipeline.seal(table)
        for item in batch.controls:
            if type(item) is Response:
                self._answer(item)
                continue
            if item.status is not None and item.status != self.venue_status:
                self.venue_status = item.status
                await self._event("status", reason=item.status)
            if item.reply is not None:
                await ws.send(item.reply)

    async def _watch(self, ws: ClientConnection) -> None:
        """Staleness watchdog: warn when a stream is quiet past its warn limit; reconnect when the
        socket is silent (not even heartbeats) or a stream is quiet past its reconnect limit."""
        dog = self.watchdog
        warned: set[str] = set()
        while True:
            await asyncio.sleep(dog.check_interval_s)
            now = _now_us()
            silent_s = (now - self._last_frame_us) / 1e6 if self._last_frame_us else 0.0
            reason = None
            if silent_s > dog.silence_reconnect_s:
                reason = f"no frame for {silent_s:.1f} s"
            for table, last in self._last_by_table.items():
                quiet_s = (now - last) / 1e6
                warn_s, reconnect_s = dog.limits.get(table, (None, None))
                if reconnect_s is not None and quiet_s > reconnect_s:
                    reason = reason or f"no {table} data for {quiet_s:.0f} s"
                elif warn_s is not None and quiet_s > warn_s and table not in warned:
                    warned.add(table)
                    log.warning("%s: no %s data for %.0f s", self.connection_id, table, quiet_s)
                elif warn_s is not None and quiet_s <= warn_s:
                    warned.discard(table)
            if reason is not None:
                self.watchdog_reconnects += 1
                self._disconnect_reason = f"watchdog: {reason}"
                log.error("%s: watchdog: %s; reconnecting", self.connection_id, reason)
                # close handshake bounded by close_timeout, then the socket is dropped
                await ws.close(1001, "watchdog")
                return

    async def _reject(self, frame: str, reason: str, receive_us: int) -> None:
        self.stats.rejected += 1
        if self.stats.rejected <= 10 or self.stats.rejected % 1000 == 0:
            log.warning("%s: rejected frame #%d: %s", self.connection_id, self.stats.rejected, reason)
        raw = frame[:REJECTED_RAW_CAP].replace("\x00", "\\x00")
        if self.pipeline.add(REJECTED_MESSAGES, [(receive_us, self.venue.name, self.connection_id,
                                                  reason[:1000], raw, len(frame.encode("utf-8", "surrogatepass")))]):
            await self.pipeline.seal(REJECTED_MESSAGES)

    async def _event(self, event: str, *, channels: list[str] | None = None,
                     refused_channels: list[str] | None = None, reason: str | None = None,
                     window_start: int | None = None, window_end: int | None = None) -> None:
        row = (self.venue.name, self.connection_id, event, _now_us(), channels,
               refused_channels or None, reason, window_start, window_end)
        if self.pipeline.add(CONNECTION_EVENTS, [row]):
            await self.pipeline.seal(CONNECTION_EVENTS)


@dataclass(frozen=True)
class Watchdog:
    """Staleness limits of one connection (seconds).

    Attributes:
        silence_reconnect_s: reconnect when no frame at all (data or heartbeat) arrived for this long.
        limits: table -> (warn after, reconnect after or None). A quiet option ticker can be
            silent for a minute, the trade channel for much longer at night, so trades only warn.
        check_interval_s: how often the limits are checked.
    """

    silence_reconnect_s: float = 30.0
    limits: dict[str, tuple[float | None, float | None]] = field(default_factory=lambda: {
        "quotes": (60.0, 600.0), "trades": (3600.0, None)})
    check_interval_s: float = 1.0


def backoff_delay(attempt: int, min_s: float, max_s: float, rng: random.Random | None = None) -> float:
    """Reconnect delay (s) after ``attempt`` consecutive failures (0 = the first reconnect).

    Capped exponential backoff with "equal jitter": the ceiling doubles from ``2 * min_s`` and is
    capped at ``max_s``; the delay is drawn uniformly from its upper half, never below ``min_s``::

        ceiling = min(max_s, min_s * 2 ** (attempt + 1))
        delay   = uniform(max(min_s, ceiling / 2), ceiling)

    So every delay lies in ``[min_s, max_s]`` (1 s to 60 s by default: 1-2, 2-4, 4-8, ...,
    30-60, 30-60, ...), and connections dropped together never retry in lockstep, not even at
    the cap. ``rng``: source of the jitter (default: the ``random`` module).

    Raises:
        ValueError: ``min_s <= 0``, ``max_s < min_s`` or ``attempt < 0``.
    """
    if min_s <= 0 or max_s < min_s or attempt < 0:
        raise ValueError(f"bad backoff: attempt {attempt}, min {min_s} s, max {max_s} s")
    ceiling = min(max_s, min_s * 2.0 ** min(attempt + 1, 64))
    return (rng or random).uniform(max(min_s, ceiling / 2), ceiling)


async def unless_set(event: asyncio.Event, awaitable: Awaitable[T]) -> tuple[bool, T | None]:
    """Await ``awaitable`` unless ``event`` is set first (then it is cancelled): ``(True,
    its result)`` or ``(False, None)``. Its exception, if it finished with one, is raised. Every
    wait a stop must be able to end goes through this (connecting, the reconnect back-off, the
    database and the exchange at start)."""
    task = asyncio.ensure_future(awaitable)
    waiter = asyncio.ensure_future(event.wait())
    try:
        await asyncio.wait([task, waiter], return_when=asyncio.FIRST_COMPLETED)
    finally:
        waiter.cancel()
        if not task.done():
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
    if task.cancelled():
        return False, None
    return True, task.result()


#: Failed connects in a row (host not reached) before the plain "cannot reach" error is logged.
UNREACHABLE_REPORT_AFTER = 3
#: Longest wait at shutdown for the unsubscribe acks before the socket is closed (s).
STOP_UNSUBSCRIBE_S = 1.0


def unreachable_cause(exc: BaseException) -> str | None:
    """A plain-words reason when ``exc`` means the host was never reached (``socket.gaierror``:
    name resolution failed; ``ConnectionRefusedError``; a connect timeout; no route), else None
    (the host answered: a closed or refused WebSocket is not "unreachable"). Exceptions that
    wrap another (an HTTP client's ``ConnectError``) are looked through."""
    if certificate_error(exc) is not None:   # the host answered, with a certificate we refuse
        return None
    return next((c for e in _chain(exc) if (c := _unreachable_cause(e)) is not None), None)


def certificate_error(exc: BaseException) -> ssl.SSLCertVerificationError | None:
    """The TLS certificate verification failure behind ``exc`` (looked through wrappers such as
    an HTTP client's ``ConnectError``), else None. It is a configuration problem (the trusted CA,
    ``SSL_CERT_FILE``), not an outage: start-up fails on it rather than retrying."""
    return next((e for e in _chain(exc) if isinstance(e, ssl.SSLCertVerificationError)), None)


def _chain(exc: BaseException | None) -> Iterator[BaseException]:
    """``exc`` and the exceptions it wraps (``__cause__``, else ``__context__``), each once."""
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        yield exc
        exc = exc.__cause__ or exc.__context__


def _unreachable_cause(exc: BaseException) -> str | None:
    if isinstance(exc, socket.gaierror):
        return f"name resolution failed ({exc.strerror or exc})"
    if isinstance(exc, ConnectionRefusedError):
        return "connection refused"
    if isinstance(exc, (TimeoutError, asyncio.TimeoutError)):
        return "connection timed out"
    if isinstance(exc, OSError) and not isinstance(exc, ConnectionResetError):
        return f"{exc.strerror or exc}"
    return None


def _is_replay_end(exc: BaseException) -> bool:
    """The server closed normally with reason 'replay finished' (the emulator's end of replay)."""
    return (isinstance(exc, websockets.exceptions.ConnectionClosed) and exc.rcvd is not None
            and exc.rcvd.code == 1000 and exc.rcvd.reason == "replay finished")


def _describe(exc: BaseException) -> str:
    if isinstance(exc, ssl.SSLCertVerificationError):
        return (f"TLS certificate verification failed ({exc.verify_message}): check the CA the "
                "collector trusts (SSL_CERT_FILE) and the host name of the URL")
    if isinstance(exc, websockets.exceptions.ConnectionClosed):
        frame = exc.rcvd or exc.sent
        if frame is None:
            return "connection lost (no close frame, 1006)"
        return f"closed: code {frame.code} {frame.reason}".strip()
    return f"{type(exc).__name__}: {exc}"
