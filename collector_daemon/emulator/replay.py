"""Venue-agnostic replay engine: capture reading, the played timeline, pacing, loops, faults,
per-client subscriptions and send counting.

A :class:`Replayer` plays the venue's base timeline (``list[Event]``, see :mod:`.venue`) ``loop``
times, like an exchange broadcasts: the clock starts once ``wait_for_clients`` connections hold a
subscription, and a client that is not connected while part of the timeline plays misses that part.
Events are spaced by their exchange timestamps divided by ``speed`` (each gap capped at
``max_idle`` wall seconds), or sent as fast as the slowest client drains with ``speed="max"``.

Frames are serialised once per (event, channel) and written straight to each connection's transport
as pre-built WebSocket text frames, batched, with the connection's own ``drain()`` for
back-pressure; nothing is ever dropped for being slow.

**Fast path** (``fast=True``, a load generator for benchmarks): at ``speed="max"`` with more than
one loop and no frame faults, loop 0 is played faithfully (every event instantiated, published,
routed and serialised) and recorded per connection; every later loop is then one copy of that
connection's recorded byte stream with the fields the venue declares per loop
(:meth:`~collector_daemon.emulator.venue.VenueEmulation.loop_fields`: exchange timestamps, book
change ids) re-written with the same digit count (so every WebSocket header stays valid), written in chunks of about :data:`_FAST_CHUNK` bytes with the same back-pressure
(each chunk is its static pieces joined with the loop's field values: one ``b"".join`` per
chunk, no Python work per frame beyond formatting its fields). The
bytes equal the faithful path's (a test compares them). What it does not do in later loops: call
``publish`` (the REST state stays the one of loop 0's end), follow subscriptions changed after
loop 0, or serve a connection opened after loop 0. When the timeline has events the venue cannot
re-key this way (Deribit trades: new trade ids) or a frame fault is configured, the faithful path
plays every loop and ``stats()["replay"]["fast_fallback"]`` says why.
"""

from __future__ import annotations

import asyncio
import contextlib
import gzip
import json
import random
import re
import struct
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any
from urllib.parse import urlsplit

from websockets.asyncio.server import ServerConnection
from websockets.protocol import State

from collector_daemon.emulator.venue import Event, VenueEmulation

# --------------------------------------------------------------------------------------------------
# Capture files
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class CaptureRecord:
    """One line of a capture file (``shared/data/real/PROVENANCE.md``, "Common format").

    Attributes:
        ts: local receive time in epoch seconds (float), None for ``config`` records.
        dir: ``"config" | "connect" | "send" | "recv" | "http_response"``.
        url: WebSocket or REST URL (None for config).
        conn: connection id within the recording.
        raw: the frame / response body text exactly as recorded (None for ``connect``).
    """

    ts: float | None
    dir: str
    url: str | None
    conn: str | None
    raw: str | None


def open_text(path: Path) -> IO[str]:
    """Open a text file that may be gzip-compressed (detected by its magic bytes, not its name)."""
    with open(path, "rb") as fh:
        magic = fh.read(2)
    if magic == b"\x1f\x8b":
        return gzip.open(path, "rt", encoding="utf-8", newline="")
    return open(path, encoding="utf-8", newline="")


def read_capture(path: Path) -> Iterator[CaptureRecord]:
    """Yield the records of a JSON-lines capture file (gzip allowed), in file order."""
    with open_text(path) as fh:
        for line in fh:
            if not line.strip():
                continue
            obj = json.loads(line)
            yield CaptureRecord(obj.get("ts"), obj["dir"], obj.get("url"), obj.get("conn"),
                                obj.get("raw"))


# --------------------------------------------------------------------------------------------------
# Faults
# --------------------------------------------------------------------------------------------------


@dataclass
class Faults:
    """Fault injection, all reproducible from ``seed``. Plain config: usable in-process and from
    the CLI. Counts are per client connection unless said otherwise.

    Attributes:
        seed: seed of every random decision below.
        drop_every: abort the connection (client sees close code 1006) after every N notifications
            sent to it.
        drop_random: probability per notification of aborting the connection after it.
        drop_count: maximum number of drops over the whole run (None = unlimited).
        delay_ms: extra wall delay before each event that has recipients: a number, or a
            ``(low, high)`` range drawn uniformly.
        malformed: number of malformed frames injected at seeded positions spread over the whole
            replay (all loops); each position sends one to every subscribed client. Kinds cycle
            through the venue's ``malformed_kinds`` (truncated JSON, not JSON, wrong types, missing
            fields, unknown channel, NaN/Infinity literals, huge numbers, binary, oversized).
            Counted as ``malformed_sent``, never as notifications.
        malformed_oversize_bytes: size of the "oversized" malformed frame.
        inject: caller-made bad frames (text, or bytes for binary frames), sent in order at
            seeded positions spread over the replay, each to every subscribed client; counted as
            ``malformed_sent`` (fuzz tests generate them with hypothesis).
        refuse_channels: leave channels out of the subscribe result the first time anyone requests
            them (a later request succeeds): a fraction in [0, 1] (seeded per channel name) or a
            regular expression (``re.search``).
        silent_after: after N notifications to a connection, send nothing more on it and answer
            nothing (socket stays open): for watchdog tests.
        ignore_heartbeat: accept ``set_heartbeat`` but never send heartbeat requests (and never
            close for a missing answer).
        rest_errors: probability that a data request (REST method, over HTTP or WebSocket) fails;
            failures alternate between the venue's rate-limit error (Deribit 10028
            ``too_many_requests``) and HTTP 429 (over WebSocket always the former).
    """

    seed: int = 0
    drop_every: int | None = None
    drop_random: float | None = None
    drop_count: int | None = None
    delay_ms: float | tuple[float, float] | None = None
    malformed: int = 0
    malformed_oversize_bytes: int = 2_000_000
    inject: tuple[str | bytes, ...] = ()
    refuse_channels: float | str | None = None
    silent_after: int | None = None
    ignore_heartbeat: bool = False
    rest_errors: float | None = None

    def __post_init__(self) -> None:
        if self.drop_every is not None and self.drop_every < 1:
            raise ValueError("drop_every must be >= 1")
        for name in ("drop_random", "rest_errors"):
            p = getattr(self, name)
            if p is not None and not 0.0 <= p <= 1.0:
                raise ValueError(f"{name} must be a probability in [0, 1]")
        if isinstance(self.refuse_channels, float) and not 0.0 <= self.refuse_channels <= 1.0:
            raise ValueError("refuse_channels fraction must be in [0, 1]")

    def per_frame(self) -> bool:
        """True when a decision must be taken after every notification sent."""
        return bool(self.drop_every or self.drop_random or self.silent_after is not None)


# --------------------------------------------------------------------------------------------------
# WebSocket framing (server to client frames are unmasked, RFC 6455 section 5.2)
# --------------------------------------------------------------------------------------------------


def ws_frame(payload: bytes, binary: bool = False) -> bytes:
    """A complete unfragmented WebSocket frame (FIN, text or binary opcode) with ``payload``."""
    first = 0x82 if binary else 0x81
    n = len(payload)
    if n < 126:
        return bytes((first, n)) + payload
    if n < 65536:
        return struct.pack("!BBH", first, 126, n) + payload
    return struct.pack("!BBQ", first, 127, n) + payload


# --------------------------------------------------------------------------------------------------
# Clients
# --------------------------------------------------------------------------------------------------


class Client:
    """One WebSocket connection: its subscriptions, outgoing buffer, heartbeat state and counters.

    Implements :class:`collector_daemon.emulator.venue.Session` for the venue's message handler.
    Counters: ``notifications`` (valid notifications handed to the connection), ``by_channel``
    (per channel name as sent), ``trade_ids`` (``(instrument_name, trade_id)`` sent, in order),
    ``malformed_sent``, ``drops``; ``first_sent_ms`` / ``last_sent_ms`` are the replay times (ms)
    of the first and last notification sent.
    """

    def __init__(self, replayer: Replayer, client_id: int, ws: ServerConnection) -> None:
        self.replayer = replayer
        self.id = client_id
        self.ws = ws
        self.transport = ws.transport
        self.remote = ":".join(map(str, ws.remote_address[:2])) if ws.remote_address else "?"
        request = getattr(ws, "request", None)
        self.path = urlsplit(request.path).path if request is not None else ""
        self.connected_at = time.time()
        self.connected = True
        self.close_code: int | None = None
        self.close_reason: str | None = None
        self.subscriptions: dict[str, str] = {}  # channel -> route
        self.counted = False  # counted towards Replayer.wait_for_clients
        self.pending: list[bytes] = []
        self.pending_bytes = 0
        self.blocked = False  # no more notifications (silent or about to be dropped)
        self.silent = False
        self.dropped = False
        self.notifications = 0
        self.by_channel: dict[str, int] = {}
        self.trade_ids: list[tuple[str, str]] = []
        self.malformed_sent = 0
        self.drops = 0
        self.first_sent_ms: int | None = None
        self.last_sent_ms: int | None = None
        self.heartbeat_interval: float | None = None
        self.heartbeat_ok = True
        self.heartbeat_changed = asyncio.Event()

    # Session API ----------------------------------------------------------------------------------

    def subscribe(self, channels: Sequence[str]) -> list[str]:
        return self.replayer.subscribe(self, channels)

    def unsubscribe(self, channels: Sequence[str]) -> list[str]:
        return self.replayer.unsubscribe(self, channels)

    def unsubscribe_all(self) -> None:
        self.replayer.unsubscribe(self, list(self.subscriptions))

    def set_heartbeat(self, interval_s: float | None) -> None:
        self.heartbeat_interval = interval_s
        self.heartbeat_ok = True
        self.heartbeat_changed.set()

    def heartbeat_answered(self) -> None:
        self.heartbeat_ok = True

    def rest_fault(self) -> str | None:
        fault = self.replayer.rest_fault()
        return "rpc" if fault else None  # no HTTP status over a WebSocket

    # ----------------------------------------------------------------------------------------------

    @property
    def is_open(self) -> bool:
        return self.connected and self.ws.protocol.state is State.OPEN

    def write_pending(self) -> None:
        """Hand the buffered frames to the transport (discarded if the connection is gone)."""
        if self.pending:
            if self.is_open and not self.transport.is_closing():
                self.transport.writelines(self.pending)
            self.pending.clear()
            self.pending_bytes = 0

    def stats(self, venue: VenueEmulation, trade_ids: bool = False) -> dict[str, Any]:
        """JSON-ready counters of this connection (shape: see :meth:`Replayer.stats`)."""
        out: dict[str, Any] = {
            "id": self.id,
            "remote": self.remote,
            "connected": self.connected,
            "connected_at": self.connected_at,
            "close_code": self.close_code,
            "close_reason": self.close_reason,
            "subscriptions": list(self.subscriptions),
            "notifications": self.notifications,
            "by_channel": dict(self.by_channel),
            "frames_by_instrument": _frames_by_instrument(venue, self.by_channel, self.trade_ids),
            "trades_sent": len(self.trade_ids),
            "malformed_sent": self.malformed_sent,
            "drops": self.drops,
            "first_sent_ms": self.first_sent_ms,
            "last_sent_ms": self.last_sent_ms,
        }
        if trade_ids:
            out["trade_ids"] = [list(k) for k in self.trade_ids]
        return out


def _frames_by_instrument(
    venue: VenueEmulation, by_channel: dict[str, int], trade_ids: list[tuple[str, str]]
) -> dict[str, dict[str, int]]:
    """``{category: {instrument: frames}}`` from per-channel counts; for ``trades`` the number of
    trades per instrument (a trades frame can carry several instruments' trades)."""
    out: dict[str, dict[str, int]] = {}
    for channel, n in by_channel.items():
        category, instrument = venue.channel_subject(channel)
        if instrument is not None and category != "trades":
            per = out.setdefault(category, {})
            per[instrument] = per.get(instrument, 0) + n
    if trade_ids:
        out["trades"] = dict(Counter(name for name, _ in trade_ids))
    return out


# --------------------------------------------------------------------------------------------------
# The replayer
# --------------------------------------------------------------------------------------------------

#: At max speed, frames are handed to the transports (and drained) every this many events ...
_MAX_SPEED_BATCH = 256
#: ... or as soon as one client has this many bytes buffered.
_FLUSH_BYTES = 1 << 20
#: Fast path: bytes handed to a transport at a time (cut at frame boundaries).
_FAST_CHUNK = 1 << 18


class _Chunk:
    """Fast path: about :data:`_FAST_CHUNK` bytes of one connection's stream, cut at frame
    boundaries: static byte pieces alternating with the per-loop integer fields
    (``parts[1::2]``), so a loop's bytes are ``b"".join(parts)`` once the fields are written."""

    __slots__ = ("parts", "values", "shifts", "shift", "frames")

    def __init__(self) -> None:
        self.parts: list[bytes] = [b""]
        self.values: list[int] = []
        self.shifts: list[int] = []
        self.shift: int | None = None  # the one shift of every field, when they share it
        self.frames = 0                 # frames of the stream up to the end of this chunk

    def render(self, k: int) -> bytes:
        """This chunk's bytes in loop ``k`` (a new object: transports may keep it)."""
        if self.values:
            if self.shift is not None:
                self.parts[1::2] = map(_FORMAT, map((k * self.shift).__add__, self.values))
            else:
                self.parts[1::2] = map(_FORMAT, map(_add, self.values,
                                                    map((k).__mul__, self.shifts)))
        return b"".join(self.parts)


_FORMAT = b"%d".__mod__
_add = int.__add__


class _Recording:
    """Fast path: one connection's loop-0 frames (recorded while playing it) and, once compiled,
    its byte stream as :class:`_Chunk` objects.

    Attributes:
        frames: the WebSocket frames sent in loop 0, in order; ``channels``: the channel of each;
        ``stamps``: replay time (ms) of each frame's event; ``fields``: the venue's
        ``loop_fields`` of each. :meth:`compile` moves the bytes into ``chunks`` (and empties
        ``frames`` and ``fields``); ``n_frames`` is their number.
    """

    __slots__ = ("frames", "channels", "stamps", "fields", "chunks", "by_channel", "ts_shift",
                 "n_frames")

    def __init__(self) -> None:
        self.frames: list[bytes] = []
        self.channels: list[str] = []
        self.stamps: list[int] = []
        self.fields: list[tuple[tuple[bytes, int], ...]] = []
        self.chunks: list[_Chunk] = []
        self.by_channel: Counter[str] = Counter()
        self.ts_shift = 0
        self.n_frames = 0

    def compile(self, loops: int) -> str | None:
        """Cut the stream into chunks of static pieces and fields; the reason it cannot be
        done (a field twice in a frame, a field gaining a digit within ``loops``), or None."""
        chunk = _Chunk()
        size = 0
        shifts: set[int] = set()
        for i, (frame, fields) in enumerate(zip(self.frames, self.fields), 1):
            spans = []
            for prefix, shift in fields:
                at = frame.find(prefix)
                if at < 0:
                    continue                    # field absent (a book snapshot's prev_change_id)
                if frame.find(prefix, at + 1) >= 0:
                    return f"field {prefix!r} occurs twice in a frame"
                start = end = at + len(prefix)
                while end < len(frame) and 48 <= frame[end] <= 57:
                    end += 1
                if end == start:
                    return f"field {prefix!r} is not a non-negative integer"
                value = int(frame[start:end])
                if len(_FORMAT(value + (loops - 1) * shift)) != end - start:
                    return f"field {prefix!r} changes its digit count within {loops} loops"
                spans.append((start, end, value, shift))
                if prefix == b'"timestamp":':
                    self.ts_shift = shift
            pos = 0
            for start, end, value, shift in sorted(spans):
                chunk.parts[-1] += frame[pos:start]
                chunk.parts.append(b"")         # the field's digits, written per loop
                chunk.parts.append(b"")
                chunk.values.append(value)
                chunk.shifts.append(shift)
                shifts.add(shift)
                pos = end
            chunk.parts[-1] += frame[pos:]
            size += len(frame)
            if size >= _FAST_CHUNK or i == len(self.frames):
                chunk.frames = i
                chunk.shift = shifts.pop() if len(shifts) == 1 else None
                self.chunks.append(chunk)
                chunk, size, shifts = _Chunk(), 0, set()
        self.by_channel = Counter(self.channels)
        self.n_frames = len(self.frames)
        self.frames, self.fields = [], []   # the chunks hold the bytes now
        return None


class Replayer:
    """Plays a venue timeline to the connected clients.

    Args:
        venue: the loaded venue emulation.
        events: its base timeline (``VenueEmulation.load``).
        speed: ``"max"`` or a positive factor (1 = real time).
        loop: number of times the timeline is played (loop k > 0 re-keyed by the venue).
        max_idle: cap in wall seconds of any single pause between two events.
        wait_for_clients: the clock starts when this many connections hold a subscription (0 =
            immediately) ...
        start_grace: ... and no subscribe request arrived for this many seconds (so a client that
            subscribes in several requests misses nothing).
        close_when_done: close every connection (1000 "replay finished") after the last event,
            once its frames are written.
        faults: fault injection config.
        fast: play loops after the first from pre-rendered frames (see the module docstring).
    """

    def __init__(
        self,
        venue: VenueEmulation,
        events: list[Event],
        *,
        speed: float | str = "max",
        loop: int = 1,
        max_idle: float = 2.0,
        wait_for_clients: int = 1,
        start_grace: float = 0.1,
        close_when_done: bool = False,
        faults: Faults | None = None,
        fast: bool = False,
    ) -> None:
        if speed != "max" and (not isinstance(speed, (int, float)) or speed <= 0):
            raise ValueError("speed must be 'max' or a positive number")
        if loop < 1:
            raise ValueError("loop must be >= 1")
        self.venue = venue
        self.events = events
        self.speed = speed
        self.loop = loop
        self.max_idle = max_idle
        self.wait_for_clients = wait_for_clients
        self.start_grace = start_grace
        self.close_when_done = close_when_done
        self.faults = faults or Faults()
        self.fast = fast
        #: "faithful" or "fast" (what played the loops after the first)
        self.path = "faithful"
        self.fast_fallback: str | None = None
        self._recordings: dict[Client, _Recording] | None = None

        self.clients: list[Client] = []
        self._index: dict[str, dict[str, set[Client]]] = {}  # route -> channel -> clients
        self._dirty: set[Client] = set()
        self._to_drop: list[Client] = []
        self._subscribed_clients = 0
        self._last_subscribe = 0.0
        self._subscribed = asyncio.Event()

        self.state = "waiting"  # -> running -> finished
        self.finished = asyncio.Event()
        self.replay_time_ms: int | None = None
        self.current_loop = 0
        self.events_played = 0
        self.started_at: float | None = None
        self.finished_at: float | None = None
        self.windows: list[dict[str, Any]] = []
        self.drops_total = 0
        self._malformed_count = 0
        self._per_frame = self.faults.per_frame()

        seed = self.faults.seed
        self._drop_rng = random.Random(f"{seed}:drop")
        self._delay_rng = random.Random(f"{seed}:delay")
        self._rest_rng = random.Random(f"{seed}:rest")
        self._rest_fault_next = "rpc"
        self.rest_faults: Counter[str] = Counter()
        self._refused: set[str] = set()
        self._refuse_re = (re.compile(self.faults.refuse_channels)
                           if isinstance(self.faults.refuse_channels, str) else None)
        total = len(events) * loop
        rng = random.Random(f"{seed}:malformed")
        self._malformed_at = Counter(rng.randrange(total) for _ in range(self.faults.malformed)) \
            if total else Counter()
        rng = random.Random(f"{seed}:inject")
        self._inject_at = Counter(rng.randrange(total) for _ in self.faults.inject) \
            if total else Counter()
        self._injected = 0

    # clients --------------------------------------------------------------------------------------

    def add_client(self, ws: ServerConnection) -> Client:
        client = Client(self, len(self.clients) + 1, ws)
        self.clients.append(client)
        return client

    def remove_client(self, client: Client, code: int | None, reason: str | None) -> None:
        """The connection is gone: forget its subscriptions and record a disconnect window."""
        if not client.connected:
            return
        client.connected = False
        client.close_code, client.close_reason = code, reason
        self.unsubscribe(client, list(client.subscriptions))
        client.pending.clear()
        self._dirty.discard(client)
        if self.state == "running" and client.last_sent_ms is not None:
            self.windows.append({
                "client": client.id,
                "reason": "drop" if client.dropped else f"closed {code}",
                "last_sent_ms": client.last_sent_ms,
                "resumed_client": None,
                "first_sent_ms": None,
            })

    def subscribe(self, client: Client, channels: Sequence[str]) -> list[str]:
        accepted: list[str] = []
        for channel in channels:
            if not isinstance(channel, str):
                continue
            if channel in client.subscriptions:
                if channel not in accepted:
                    accepted.append(channel)
                continue
            route = self.venue.route(channel)
            if route is None or self._refuse(channel):
                continue
            client.subscriptions[channel] = route
            self._index.setdefault(route, {}).setdefault(channel, set()).add(client)
            accepted.append(channel)
        if accepted and client.subscriptions:
            self._last_subscribe = asyncio.get_running_loop().time()
            if not client.counted:
                client.counted = True
                self._subscribed_clients += 1
            self._subscribed.set()
        return accepted

    def unsubscribe(self, client: Client, channels: Sequence[str]) -> list[str]:
        removed: list[str] = []
        for channel in channels:
            route = client.subscriptions.pop(channel, None) if isinstance(channel, str) else None
            if route is None:
                continue
            by_channel = self._index.get(route)
            if by_channel is not None:
                members = by_channel.get(channel)
                if members is not None:
                    members.discard(client)
                    if not members:
                        del by_channel[channel]
                if not by_channel:
                    del self._index[route]
            removed.append(channel)
        return removed

    def _refuse(self, channel: str) -> bool:
        """``Faults.refuse_channels``: refuse a matching channel the first time it is requested."""
        spec = self.faults.refuse_channels
        if spec is None or channel in self._refused:
            return False
        if self._refuse_re is not None:
            hit = self._refuse_re.search(channel) is not None
        else:
            hit = random.Random(f"{self.faults.seed}:refuse:{channel}").random() < float(spec)
        if hit:
            self._refused.add(channel)
        return hit

    def rest_fault(self) -> str | None:
        """``Faults.rest_errors`` decision for one data request: None, ``"rpc"`` or ``"http429"``
        (alternating between the two kinds)."""
        p = self.faults.rest_errors
        if not p or self._rest_rng.random() >= p:
            return None
        fault = self._rest_fault_next
        self._rest_fault_next = "http429" if fault == "rpc" else "rpc"
        self.rest_faults[fault] += 1
        return fault

    # playing --------------------------------------------------------------------------------------

    async def run(self) -> None:
        """Wait for the start condition, play every loop, then finish (and maybe close clients)."""
        await self._wait_for_start()
        self.state = "running"
        self.started_at = time.time()
        loop = asyncio.get_running_loop()
        venue, faults = self.venue, self.faults
        timed = self.speed != "max"
        n_base = len(self.events)
        deadline = loop.time()
        prev_ts: int | None = None
        batch = 0
        if self.fast:
            self.fast_fallback = self._fast_refusal()
            if self.fast_fallback is None:
                self._recordings = {}
        for k in range(self.loop):
            self.current_loop = k
            if k == 1 and self._recordings is not None:
                await self._flush()
                if await self._play_fast():
                    break
            for i, base in enumerate(self.events):
                played = venue.instantiate(base, k)
                n_bad = self._malformed_at.get(k * n_base + i)
                if n_bad:
                    self._inject_malformed(played[0], n_bad)
                n_custom = self._inject_at.get(k * n_base + i)
                if n_custom:
                    self._inject_custom(n_custom)
                for ev in played:
                    venue.publish(ev)
                    self.replay_time_ms = ev.ts
                    if timed:
                        if prev_ts is not None:
                            deadline += min((ev.ts - prev_ts) / 1000.0 / self.speed,
                                            self.max_idle)
                        prev_ts = ev.ts
                        wait = deadline - loop.time()
                        if wait > 0:
                            await self._flush()
                            await asyncio.sleep(wait)
                    if faults.delay_ms is not None and self._has_recipients(ev):
                        await self._flush()
                        await asyncio.sleep(self._delay_s())
                    self._dispatch(ev)
                    self.events_played += 1
                    if self._to_drop:
                        await self._perform_drops()
                batch += 1
                if timed or batch >= _MAX_SPEED_BATCH:
                    batch = 0
                    await self._flush()
                    if not timed:
                        await asyncio.sleep(0)  # let handlers (subscribe, heartbeat) run
        await self._flush()
        self.state = "finished"
        self.finished_at = time.time()
        self.finished.set()
        if self.close_when_done:
            await asyncio.gather(*(c.ws.close(1000, "replay finished")
                                   for c in self.clients if c.is_open),
                                 return_exceptions=True)

    async def _wait_for_start(self) -> None:
        loop = asyncio.get_running_loop()
        while self._subscribed_clients < self.wait_for_clients:
            self._subscribed.clear()
            await self._subscribed.wait()
        if self.wait_for_clients > 0:
            while (quiet := loop.time() - self._last_subscribe) < self.start_grace:
                await asyncio.sleep(self.start_grace - quiet)

    def _delay_s(self) -> float:
        spec = self.faults.delay_ms
        if isinstance(spec, tuple):
            return self._delay_rng.uniform(*spec) / 1000.0
        return float(spec or 0) / 1000.0

    def _has_recipients(self, ev: Event) -> bool:
        index = self._index
        return any(route in index for route in ev.routes)

    def _dispatch(self, ev: Event) -> None:
        """Buffer ``ev``'s notification for every subscribed client (hot path)."""
        index = self._index
        ts = ev.ts
        trade_ids = ev.trade_ids
        per_frame = self._per_frame
        dirty = self._dirty
        for route in ev.routes:
            channels = index.get(route)
            if not channels:
                continue
            for channel, members in channels.items():
                frame = None
                size = 0
                for c in members:
                    if c.blocked:
                        continue
                    if frame is None:
                        frame = ws_frame(self.venue.frame(channel, ev))
                        size = len(frame)
                    c.pending.append(frame)
                    c.pending_bytes += size
                    dirty.add(c)
                    c.notifications += 1
                    counts = c.by_channel
                    counts[channel] = counts.get(channel, 0) + 1
                    if c.first_sent_ms is None:
                        c.first_sent_ms = ts
                        self._resume_windows(c)
                    c.last_sent_ms = ts
                    if trade_ids:
                        c.trade_ids.extend(trade_ids)
                    if self._recordings is not None:
                        self._record(c, frame, channel, ev)
                    if per_frame:
                        self._frame_faults(c)
                    if c.pending_bytes >= _FLUSH_BYTES:
                        c.write_pending()

    # fast path -----------------------------------------------------------------------------------

    def _fast_refusal(self) -> str | None:
        """Why the fast path cannot play this replay (None: it can)."""
        f = self.faults
        if self.speed != "max":
            return "only at speed max"
        if self.loop < 2:
            return "a single loop"
        if f.per_frame() or f.malformed or f.inject or f.delay_ms is not None:
            return "frame faults are configured"
        return None

    def _record(self, c: Client, frame: bytes, channel: str, ev: Event) -> None:
        fields = self.venue.loop_fields(ev)
        if fields is None:
            self._recordings = None
            self.fast_fallback = f"the venue cannot re-key {ev.kind} events per loop"
            return
        rec = self._recordings.get(c)  # type: ignore[union-attr]
        if rec is None:
            rec = self._recordings[c] = _Recording()  # type: ignore[index]
        rec.frames.append(frame)
        rec.channels.append(channel)
        rec.stamps.append(ev.ts)
        rec.fields.append(fields)

    async def _play_fast(self) -> bool:
        """Play loops 1..loop-1 from the recordings; False (faithful path goes on) if they
        cannot be compiled."""
        recs = self._recordings or {}
        self._recordings = None
        for rec in recs.values():
            reason = rec.compile(self.loop)
            if reason is not None:
                self.fast_fallback = reason
                return False
        self.path = "fast"
        per_loop = self.events_played
        active = [(c, rec) for c, rec in recs.items() if rec.n_frames]
        for k in range(1, self.loop):
            self.current_loop = k
            sent = {c: 0 for c, _ in active}
            n_chunks = max((len(rec.chunks) for _, rec in active), default=0)
            for j in range(n_chunks):
                for c, rec in active:
                    if j >= len(rec.chunks) or not c.is_open or c.transport.is_closing():
                        continue
                    chunk = rec.chunks[j]
                    c.transport.write(chunk.render(k))
                    sent[c] = chunk.frames
                for c, _ in active:
                    if c.is_open and c.ws.paused:
                        with contextlib.suppress(Exception):
                            await c.ws.drain()
                await asyncio.sleep(0)   # let handlers (heartbeat, requests) run
            for c, rec in active:
                n = sent[c]
                if n == 0:
                    continue
                c.notifications += n
                counts = c.by_channel
                part = rec.by_channel if n == rec.n_frames else Counter(rec.channels[:n])
                for channel, m in part.items():
                    counts[channel] = counts.get(channel, 0) + m
                c.last_sent_ms = rec.stamps[n - 1] + k * rec.ts_shift
                self.replay_time_ms = max(self.replay_time_ms or 0, c.last_sent_ms)
            self.events_played += per_loop
        return True

    def _frame_faults(self, c: Client) -> None:
        f = self.faults
        n = c.notifications
        if f.silent_after is not None and n >= f.silent_after:
            c.silent = c.blocked = True
            return
        if f.drop_count is not None and self.drops_total + len(self._to_drop) >= f.drop_count:
            return
        if (f.drop_every and n % f.drop_every == 0) or (
                f.drop_random and self._drop_rng.random() < f.drop_random):
            c.blocked = True
            self._to_drop.append(c)

    async def _perform_drops(self) -> None:
        """Abort the doomed connections once their frames left the process (client sees 1006)."""
        doomed, self._to_drop = self._to_drop, []
        loop = asyncio.get_running_loop()
        for c in doomed:
            c.write_pending()
            self._dirty.discard(c)
            give_up = loop.time() + 5.0
            while (c.is_open and c.transport.get_write_buffer_size() > 0
                   and loop.time() < give_up):
                await asyncio.sleep(0.001)
            if c.connected:
                c.dropped = True
                c.drops += 1
                self.drops_total += 1
                c.transport.abort()

    def _resume_windows(self, c: Client) -> None:
        for w in self.windows:
            if w["resumed_client"] is None and w["client"] < c.id:
                w["resumed_client"] = c.id
                w["first_sent_ms"] = c.first_sent_ms

    def _inject_malformed(self, ev: Event, n: int) -> None:
        kinds = self.venue.malformed_kinds
        size = self.faults.malformed_oversize_bytes
        for _ in range(n):
            kind = kinds[self._malformed_count % len(kinds)]
            self._malformed_count += 1
            for c in self.clients:
                if c.blocked or not c.subscriptions or not c.is_open:
                    continue
                channel = next((ch for ch, r in c.subscriptions.items() if r in ev.routes),
                               next(iter(c.subscriptions)))
                payload, binary = self.venue.malformed_frame(kind, channel, ev, size)
                frame = ws_frame(payload, binary)
                c.pending.append(frame)
                c.pending_bytes += len(frame)
                self._dirty.add(c)
                c.malformed_sent += 1

    def _inject_custom(self, n: int) -> None:
        for frame_data in self.faults.inject[self._injected:self._injected + n]:
            binary = isinstance(frame_data, bytes)
            frame = ws_frame(frame_data if binary else frame_data.encode(), binary)
            for c in self.clients:
                if c.blocked or not c.subscriptions or not c.is_open:
                    continue
                c.pending.append(frame)
                c.pending_bytes += len(frame)
                self._dirty.add(c)
                c.malformed_sent += 1
        self._injected += n

    async def _flush(self) -> None:
        """Write every buffered frame, then wait for the connections that are over their write
        limit (at max speed this paces the replay by the slowest client)."""
        dirty = self._dirty
        if not dirty:
            return
        self._dirty = set()
        for c in dirty:
            c.write_pending()
        for c in dirty:
            if c.is_open and c.ws.paused:
                with contextlib.suppress(Exception):  # it died: remove_client cleans up
                    await c.ws.drain()

    # stats ----------------------------------------------------------------------------------------

    def stats(self, trade_ids: bool = False) -> dict[str, Any]:
        """Counts for completeness proofs (JSON-ready).

        Shape::

            {"venue": "deribit",
             "replay": {"state": "waiting|running|finished", "speed", "loops", "loop",
                        "events_total", "events_played", "replay_time_ms", "started_at",
                        "finished_at"},
             "totals": {"notifications", "by_channel": {channel: n},
                        "frames_by_instrument": {"ticker": {instrument: n}, "book": {...},
                                                 "trades": {instrument: trades}},
                        "trades_sent", "malformed_sent", "drops", "clients",
                        "rest_faults": {"rpc": n, "http429": n}},
             "clients": [{"id", "remote", "connected", "close_code", "close_reason",
                          "subscriptions", "notifications", "by_channel",
                          "frames_by_instrument", "trades_sent", "malformed_sent", "drops",
                          "first_sent_ms", "last_sent_ms", ["trade_ids": [[inst, id], ...]]}],
             "disconnect_windows": [{"client", "reason", "last_sent_ms", "resumed_client",
                                     "first_sent_ms"}]}

        Replay times are the timeline clock (exchange ms, shifted in later loops).
        ``trade_ids=True`` adds each client's list of ``[instrument_name, trade_id]`` sent.
        """
        by_channel: Counter[str] = Counter()
        all_trades: list[tuple[str, str]] = []
        for c in self.clients:
            by_channel.update(c.by_channel)
            all_trades.extend(c.trade_ids)
        return {
            "venue": self.venue.name,
            "replay": {
                "state": self.state,
                "speed": self.speed,
                "loops": self.loop,
                "loop": self.current_loop,
                "events_total": len(self.events) * self.loop,
                "events_played": self.events_played,
                "replay_time_ms": self.replay_time_ms,
                "started_at": self.started_at,
                "finished_at": self.finished_at,
                "path": self.path,
                "fast_fallback": self.fast_fallback,
            },
            "totals": {
                "clients": len(self.clients),
                "rest_faults": dict(self.rest_faults),
                "notifications": sum(c.notifications for c in self.clients),
                "by_channel": dict(by_channel),
                "frames_by_instrument": _frames_by_instrument(self.venue, dict(by_channel),
                                                              all_trades),
                "trades_sent": len(all_trades),
                "malformed_sent": sum(c.malformed_sent for c in self.clients),
                "drops": self.drops_total,
            },
            "clients": [c.stats(self.venue, trade_ids) for c in self.clients],
            "disconnect_windows": [dict(w) for w in self.windows],
        }
