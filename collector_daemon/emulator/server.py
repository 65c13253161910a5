"""The exchange emulator server: one loopback port serving the venue's WebSocket API, its REST
methods over HTTP GET, and ``GET /emulator/stats``.

In-process use (what ``tickvault collect --replay`` and the tests do)::

    from collector_daemon.emulator.server import EmulatorServer, EmulatorConfig
    from collector_daemon.emulator.replay import Faults

    server = EmulatorServer(EmulatorConfig(capture=path, speed="max", close_when_done=True))
    await server.start(host="127.0.0.1", port=0)      # port 0 = a free port
    server.ws_url                                      # ws://127.0.0.1:<port>/ws/api/v2
    server.rest_url                                    # http://127.0.0.1:<port>/api/v2
                                                       # (wss:// and https:// with tls_dir; the
                                                       # clients trust server.ca_file)
    await server.finished.wait()                       # the timeline is exhausted
    server.stats()                                     # same JSON as GET /emulator/stats
    await server.stop()

Command line: :func:`add_arguments` + :func:`main` (wired as ``tickvault emulate``).
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import email.utils
import json
import signal
import sys
import time
from dataclasses import dataclass, field
from http import HTTPStatus
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlsplit

from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.datastructures import Headers
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request, Response

from collector_daemon.emulator import tls
from collector_daemon.emulator.replay import Client, Faults, Replayer
from collector_daemon.emulator.tls import ServerTls
from collector_daemon.emulator.venue import load_venue

#: Path of the statistics endpoint.
STATS_PATH = "/emulator/stats"


@dataclass
class EmulatorConfig:
    """What to replay and how.

    Attributes:
        capture: capture file (JSON lines ``{"ts","dir","url","conn","raw"}``, gzip allowed).
        trades: optional trade source merged into the timeline (venue-specific formats; Deribit:
            ``get_last_trades_*`` JSON or cyri113-style CSV).
        align_trades: time-shift the trade source to start with the capture (one coherent
            timeline; a derived stream).
        speed: ``"max"`` (as fast as the slowest subscribed client drains) or a factor applied to
            the exchange-timestamp gaps (1 = real time).
        loop: play the timeline this many times (later loops re-keyed: new timestamps and ids).
        fanout: copies of each option instrument (1 = none), for benchmarks.
        churn: with fanout, copies are listed (and traded) only during a window of the replay,
            staggered over the timeline, so instruments appear and expire while it runs.
        max_idle: cap in wall seconds of a single pause between events.
        wait_for_clients: the replay clock starts when this many connections hold a subscription.
        close_when_done: close every connection with 1000 "replay finished" after the last frame.
        faults: fault injection (:class:`~collector_daemon.emulator.replay.Faults`).
        venue: a registered venue (``collector_daemon.venues``) whose emulation is used.
        start_grace: after the start condition, wait until no subscribe request came for this
            many seconds (a client subscribing in several requests misses nothing).
        heartbeat_unit: wall seconds per second of a client's heartbeat interval (1.0 like the
            exchange; tests shrink it). Never scaled by ``speed``.
        tls_dir: serve TLS (``wss://``, ``https://``) with a CA and server certificate generated
            at start into this directory (:mod:`.tls`); clients trust ``<tls_dir>/ca.crt``.
        fast: at ``speed="max"``, play later loops from pre-rendered frames
            (:class:`~collector_daemon.emulator.replay.Replayer`, "fast path"); the faithful path
            is used when the timeline or the faults do not allow it (``stats()["replay"]["path"]``
            says which one played).
        rest_ip_limit: REST requests per :data:`IP_WINDOW_S` per client IP (:class:`RestIpLimit`);
            None = unlimited.
        rest_ban_s: how long a client IP that keeps exceeding ``rest_ip_limit`` is banned (s).
    """

    capture: Path
    trades: Path | None = None
    align_trades: bool = False
    speed: float | str = "max"
    loop: int = 1
    fanout: int = 1
    churn: bool = False
    max_idle: float = 2.0
    wait_for_clients: int = 1
    close_when_done: bool = False
    faults: Faults = field(default_factory=Faults)
    venue: str = "deribit"
    start_grace: float = 0.1
    heartbeat_unit: float = 1.0
    tls_dir: Path | None = None
    fast: bool = False
    rest_ip_limit: int | None = None
    rest_ban_s: float = 600.0


#: The window of the REST IP limit (s): Bybit counts requests per 5 s per IP.
IP_WINDOW_S = 5.0


class RestIpLimit:
    """An exchange's REST limit per client IP, as Bybit applies it (``docs/v5/rate-limit``):
    at most ``limit`` requests in any :data:`IP_WINDOW_S` seconds (every request arriving
    counts, answered or not). A request over the limit gets the venue's rate-limit error (the
    ``rpc`` REST fault: Bybit retCode 10006); an IP whose requests in a window exceed the limit by
    more than a tenth of it (at least 1) is banned for ``ban_s`` seconds, every request answered
    with the venue's ban (the ``http429`` fault: Bybit HTTP 403) until the ban ends; then the
    count starts afresh. Bybit's exact rules past the first 403 are not documented: this is the
    simplest model that punishes a client which keeps going after 10006.

    ``stats()``: ``{"limit", "window_s", "ban_s", "requests", "limited", "banned_answers", "bans",
    "max_in_window"}`` (per the whole server; max over IPs and windows).
    """

    def __init__(self, limit: int, ban_s: float) -> None:
        if limit < 1 or ban_s <= 0:
            raise ValueError("rest_ip_limit must be >= 1 and rest_ban_s > 0")
        self.limit, self.ban_s = limit, ban_s
        self._ban_over = max(1, limit // 10)
        self._seen: dict[str, collections.deque[float]] = {}
        self._banned_until: dict[str, float] = {}
        self.requests = self.limited = self.banned_answers = self.bans = self.max_in_window = 0

    def check(self, ip: str, now: float) -> str | None:
        """Count a request from ``ip`` at ``now`` (monotonic s): None (serve it), ``"rpc"``
        (over the limit) or ``"http429"`` (banned)."""
        self.requests += 1
        seen = self._seen.setdefault(ip, collections.deque())
        if ip in self._banned_until:
            if now < self._banned_until[ip]:
                self.banned_answers += 1
                return "http429"
            del self._banned_until[ip]
            seen.clear()        # the ban is over: counting starts afresh
        while seen and seen[0] <= now - IP_WINDOW_S:
            seen.popleft()
        seen.append(now)
        self.max_in_window = max(self.max_in_window, len(seen))
        if len(seen) > self.limit + self._ban_over:
            self._banned_until[ip] = now + self.ban_s
            self.bans += 1
            self.banned_answers += 1
            return "http429"
        if len(seen) > self.limit:
            self.limited += 1
            return "rpc"
        return None

    def stats(self) -> dict[str, Any]:
        """See the class docstring."""
        return {"limit": self.limit, "window_s": IP_WINDOW_S, "ban_s": self.ban_s,
                "requests": self.requests, "limited": self.limited,
                "banned_answers": self.banned_answers, "bans": self.bans,
                "max_in_window": self.max_in_window}


def _json_response(status: int, body: bytes) -> Response:
    headers = Headers([
        ("Date", email.utils.formatdate(usegmt=True)),
        ("Connection", "close"),
        ("Content-Length", str(len(body))),
        ("Content-Type", "application/json"),
    ])
    return Response(status, HTTPStatus(status).phrase, headers, body)


class EmulatorServer:
    """WebSocket + HTTP server replaying one capture (see the module docstring for the API).

    Loading the capture happens in the constructor; :meth:`start` binds the port and starts the
    replay task, whose clock starts when ``config.wait_for_clients`` clients have subscribed.
    """

    def __init__(self, config: EmulatorConfig) -> None:
        self.config = config
        self.venue = load_venue(config.venue, config.fanout, config.churn)
        events = self.venue.load(Path(config.capture),
                                 Path(config.trades) if config.trades else None, config.align_trades)
        self.replayer = Replayer(
            self.venue, events, speed=config.speed, loop=config.loop, max_idle=config.max_idle,
            wait_for_clients=config.wait_for_clients, start_grace=config.start_grace,
            close_when_done=config.close_when_done, faults=config.faults, fast=config.fast)
        self.tls: ServerTls | None = tls.generate(Path(config.tls_dir)) if config.tls_dir else None
        self.ip_limit = (RestIpLimit(config.rest_ip_limit, config.rest_ban_s)
                         if config.rest_ip_limit is not None else None)
        self.host = "127.0.0.1"
        self.port = 0
        self._server: Server | None = None
        self._replay_task: asyncio.Task[None] | None = None

    @property
    def finished(self) -> asyncio.Event:
        """Set when the whole timeline (all loops) has been played."""
        return self.replayer.finished

    @property
    def ca_file(self) -> Path | None:
        """The generated CA certificate clients must trust (None without TLS)."""
        return self.tls.ca_file if self.tls else None

    def _base(self, scheme: str) -> str:
        return f"{scheme}{'s' if self.tls else ''}://{self.host}:{self.port}"

    @property
    def ws_url(self) -> str:
        return self._base("ws") + self.venue.ws_path

    @property
    def ws_urls(self) -> dict[str, str]:
        """URL per WebSocket path served (``VenueEmulation.ws_paths``; one entry for most venues)."""
        return {p: self._base("ws") + p for p in (self.venue.ws_paths or (self.venue.ws_path,))}

    @property
    def rest_url(self) -> str:
        return self._base("http") + self.venue.rest_prefix

    @property
    def stats_url(self) -> str:
        return self._base("http") + STATS_PATH

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> None:
        """Listen on ``host:port`` (0 = a free port, see :attr:`port`) and start the replay."""
        self._server = await serve(
            self._handle, host, port,
            process_request=self._process_request,
            compression=None,
            ping_interval=None,  # the venue's own heartbeat is emulated instead
            max_size=1 << 20,  # > 32 kB so the venue can answer "request entity too large"
            write_limit=(1 << 20, 1 << 18),
            ssl=self.tls.server_context() if self.tls else None,
        )
        self.host = host
        self.port = next(iter(self._server.sockets)).getsockname()[1]
        self._replay_task = asyncio.create_task(self.replayer.run(), name="emulator-replay")

    def stats(self, trade_ids: bool = False) -> dict[str, Any]:
        """Counts for completeness proofs; see :meth:`Replayer.stats` for the shape, plus
        ``rest_ip_limit`` (:meth:`RestIpLimit.stats`) when a limit is configured."""
        stats = self.replayer.stats(trade_ids)
        if self.ip_limit is not None:
            stats["rest_ip_limit"] = self.ip_limit.stats()
        return stats

    async def stop(self) -> None:
        """Stop the replay (letting a finished one complete its closing) and the server."""
        task = self._replay_task
        if task is not None and not task.done():
            if self.finished.is_set():
                await asyncio.wait({task}, timeout=5.0)
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None

    # WebSocket ------------------------------------------------------------------------------------

    async def _handle(self, ws: ServerConnection) -> None:
        client = self.replayer.add_client(ws)
        heartbeat = asyncio.create_task(self._heartbeat(client))
        try:
            if self.config.close_when_done and self.finished.is_set():
                await ws.close(1000, "replay finished")  # nothing more will be played
            async for message in ws:
                received_us = time.time_ns() // 1000
                if client.silent:
                    continue
                for reply in self.venue.handle_message(client, message, received_us):
                    await ws.send(reply)
        except ConnectionClosed:
            pass
        finally:
            heartbeat.cancel()
            self.replayer.remove_client(client, ws.close_code, ws.close_reason)

    async def _heartbeat(self, client: Client) -> None:
        """Send the venue's heartbeat request every interval; close 4000 "heartbeat close" when the
        previous one is still unanswered (Deribit ``public/set_heartbeat``, section A.4)."""
        awaiting = False
        while True:
            interval = client.heartbeat_interval
            client.heartbeat_changed.clear()
            if interval is None:
                await client.heartbeat_changed.wait()
                awaiting = False
                continue
            try:
                await asyncio.wait_for(client.heartbeat_changed.wait(),
                                       interval * self.config.heartbeat_unit)
                awaiting = False  # re-configured: start a new cycle
                continue
            except TimeoutError:
                pass
            if client.silent or self.config.faults.ignore_heartbeat or not client.is_open:
                continue
            if awaiting and not client.heartbeat_ok:
                # no notification after this point: one dispatched during the close handshake
                # would be counted as sent and then discarded by write_pending (socket closing)
                client.blocked = True
                client.write_pending()   # what was counted as sent leaves before the close frame
                await client.ws.close(4000, "heartbeat close")
                return
            client.heartbeat_ok = False
            awaiting = True
            try:
                await client.ws.send(self.venue.heartbeat_frame())
            except ConnectionClosed:
                return

    # HTTP -----------------------------------------------------------------------------------------

    def _process_request(self, connection: ServerConnection, request: Request) -> Response | None:
        url = urlsplit(request.path)
        if url.path in (self.venue.ws_paths or (self.venue.ws_path,)):
            return None  # WebSocket handshake
        received_us = time.time_ns() // 1000
        query = dict(parse_qsl(url.query, keep_blank_values=True))
        if url.path == STATS_PATH:
            body = json.dumps(self.stats(trade_ids=query.get("trade_ids") == "true")).encode()
            return _json_response(200, body)
        prefix = self.venue.rest_prefix + "/"
        if url.path.startswith(prefix):
            limited = (self.ip_limit.check(str(connection.remote_address[0]), time.monotonic())
                       if self.ip_limit is not None else None)
            status, body = self.venue.handle_http_request(url.path[len(prefix):], query, url.query,
                                                          request.headers,
                                                          limited or self.replayer.rest_fault(),
                                                          received_us)
            return _json_response(status, body)
        return _json_response(404, b'{"error":"not found"}')


# --------------------------------------------------------------------------------------------------
# Command line
# --------------------------------------------------------------------------------------------------


def _speed(text: str) -> float | str:
    if text == "max":
        return text
    value = float(text)
    if value <= 0:
        raise argparse.ArgumentTypeError("speed must be > 0 or 'max'")
    return value


def _delay(text: str) -> float | tuple[float, float]:
    low, sep, high = text.partition("-")
    return (float(low), float(high)) if sep else float(low)


def _refuse(text: str) -> float | str:
    try:
        return float(text)
    except ValueError:
        return text


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``tickvault emulate``."""
    parser.add_argument("capture", type=Path, help="capture file (JSON lines, gzip allowed)")
    parser.add_argument("--trades", type=Path, help="trade source merged into the timeline "
                        "(Deribit: get_last_trades_* JSON or cyri113-style CSV)")
    parser.add_argument("--align-trades", action="store_true",
                        help="time-shift the trade source to start with the capture")
    parser.add_argument("--venue", default="deribit", help="registered venue to emulate (default deribit)")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8765)
    parser.add_argument("--speed", type=_speed, default=1.0,
                        help="1 = real time, N = N times faster, max = as fast as clients read")
    parser.add_argument("--loop", type=int, default=1, help="play the timeline K times")
    parser.add_argument("--churn", action="store_true",
                        help="with --fanout: copies are listed only during staggered windows")
    parser.add_argument("--fanout", type=int, default=1,
                        help="replicate each option instrument F times (re-keyed strikes)")
    parser.add_argument("--max-idle", type=float, default=2.0,
                        help="cap of any single pause, wall seconds (default 2)")
    parser.add_argument("--wait-for-clients", type=int, default=1,
                        help="start the clock when N clients have subscribed (default 1)")
    parser.add_argument("--start-grace", type=float, default=0.1,
                        help="then wait until no subscribe request came for this long (s, default "
                             "0.1): a client subscribing in many requests misses nothing")
    parser.add_argument("--exit-when-done", action="store_true",
                        help="close clients (1000) and exit when the replay is over")
    parser.add_argument("--tls", type=Path, metavar="DIR",
                        help="serve wss:// and https:// with a CA and server certificate generated "
                             "at start into DIR; clients trust DIR/ca.crt (e.g. SSL_CERT_FILE)")
    parser.add_argument("--fast", action="store_true",
                        help="with --speed max: later loops sent from pre-rendered frames (load "
                             "generator; the stats say which path played)")
    faults = parser.add_argument_group("faults (all seeded by --seed)")
    faults.add_argument("--seed", type=int, default=0)
    faults.add_argument("--drop-every", type=int, help="abort a connection every N notifications")
    faults.add_argument("--drop-random", type=float, help="abort probability per notification")
    faults.add_argument("--drop-count", type=int, help="maximum number of drops in total")
    faults.add_argument("--delay-ms", type=_delay, help="extra delay per event: MS or LOW-HIGH")
    faults.add_argument("--malformed", type=int, default=0, help="inject N malformed frames")
    faults.add_argument("--malformed-size", type=int, default=2_000_000,
                        help="bytes of the oversized malformed frame (default 2 MB)")
    faults.add_argument("--refuse-channels", type=_refuse,
                        help="fraction (0-1) or regex of channels refused on first subscribe")
    faults.add_argument("--silent-after", type=int,
                        help="go silent on a connection after N notifications")
    faults.add_argument("--ignore-heartbeat", action="store_true",
                        help="never send heartbeat requests")
    faults.add_argument("--rest-errors", type=float,
                        help="probability of a rate-limit failure per REST call")
    faults.add_argument("--rest-ip-limit", type=int, metavar="N",
                        help="REST requests per 5 s per client IP: beyond, the venue's rate-limit "
                             "error (Bybit 10006); over by a tenth more, a ban (Bybit HTTP 403)")
    faults.add_argument("--rest-ban-s", type=float, default=600.0,
                        help="length of a --rest-ip-limit ban (s, default 600 like Bybit)")


def config_from_args(args: argparse.Namespace) -> EmulatorConfig:
    """:class:`EmulatorConfig` from parsed :func:`add_arguments` arguments."""
    return EmulatorConfig(
        capture=args.capture, trades=args.trades, align_trades=args.align_trades,
        speed=args.speed, loop=args.loop,
        fanout=args.fanout, churn=args.churn, max_idle=args.max_idle, wait_for_clients=args.wait_for_clients,
        close_when_done=args.exit_when_done, venue=args.venue, tls_dir=args.tls, fast=args.fast,
        start_grace=args.start_grace, rest_ip_limit=args.rest_ip_limit, rest_ban_s=args.rest_ban_s,
        faults=Faults(
            seed=args.seed, drop_every=args.drop_every, drop_random=args.drop_random,
            drop_count=args.drop_count, delay_ms=args.delay_ms, malformed=args.malformed,
            malformed_oversize_bytes=args.malformed_size, refuse_channels=args.refuse_channels,
            silent_after=args.silent_after, ignore_heartbeat=args.ignore_heartbeat,
            rest_errors=args.rest_errors))


def format_summary(stats: dict[str, Any]) -> str:
    """Human-readable summary of :meth:`EmulatorServer.stats`."""
    r, t = stats["replay"], stats["totals"]
    lines = [
        f"replay {r['state']}: {r['events_played']}/{r['events_total']} events, "
        f"loop {r['loop'] + 1}/{r['loops']}, replay time {r['replay_time_ms']} ms",
        f"totals: {t['clients']} clients, {t['notifications']} notifications, "
        f"{t['trades_sent']} trades, {t['malformed_sent']} malformed, {t['drops']} drops",
    ]
    for category, per in sorted(t["frames_by_instrument"].items()):
        lines.append(f"  {category}: {sum(per.values())} over {len(per)} instruments")
    for c in stats["clients"]:
        state = "connected" if c["connected"] else f"closed {c['close_code']}"
        lines.append(f"  client {c['id']} {c['remote']} ({state}): {c['notifications']} "
                     f"notifications, {c['trades_sent']} trades, {c['malformed_sent']} malformed, "
                     f"{len(c['subscriptions'])} subscriptions")
    for w in stats["disconnect_windows"]:
        lines.append(f"  window: client {w['client']} {w['reason']} after {w['last_sent_ms']}, "
                     f"resumed by {w['resumed_client']} at {w['first_sent_ms']}")
    return "\n".join(lines)


async def main(args: argparse.Namespace) -> int:
    """``tickvault emulate``: serve until the replay is over (with ``--exit-when-done``) or until
    SIGINT/SIGTERM, printing the summary when the replay ends and when stopped."""
    config = config_from_args(args)
    server = EmulatorServer(config)
    await server.start(args.host, args.port)
    print(f"emulator ({config.venue}): ws {' '.join(server.ws_urls.values())}  rest {server.rest_url}  "
          f"stats {server.stats_url}  ({len(server.replayer.events)} events x {config.loop} loops)"
          + (f"  ca {server.ca_file}" if server.ca_file else ""), flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError, RuntimeError):  # non-Unix
            loop.add_signal_handler(sig, stop.set)
    finished = asyncio.create_task(server.finished.wait())
    stopped = asyncio.create_task(stop.wait())
    try:
        await asyncio.wait({finished, stopped}, return_when=asyncio.FIRST_COMPLETED)
        if server.finished.is_set():
            print(format_summary(server.stats()), flush=True)
        if not config.close_when_done and not stop.is_set():
            await stop.wait()
        if stop.is_set():
            print(format_summary(server.stats()), flush=True)
    finally:
        finished.cancel()
        stopped.cancel()
        await server.stop()
    return 0


if __name__ == "__main__":  # pragma: no cover
    _parser = argparse.ArgumentParser(prog="tickvault emulate")
    add_arguments(_parser)
    sys.exit(asyncio.run(main(_parser.parse_args())))
