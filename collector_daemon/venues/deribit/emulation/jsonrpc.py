"""The emulated Deribit as the generic emulator sees it (:class:`DeribitEmulation`): JSON-RPC 2.0
over WebSocket and HTTP (A.4: subscriptions, heartbeat, request size, ``usIn``/``usOut``), channel
routing, and the frames of the timeline's events."""

from __future__ import annotations

import json
import logging
import secrets
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import msgspec

from collector_daemon.emulator.venue import Event, RpcError, Session, VenueEmulation
from collector_daemon.venues.deribit.emulation.frames import (
    MALFORMED_KINDS,
    event_frame,
    malformed_frame,
)
from collector_daemon.venues.deribit.emulation.instruments import TRADE_KINDS
from collector_daemon.venues.deribit.emulation.rest_methods import DeribitRest, invalid_param
from collector_daemon.venues.deribit.emulation.timeline import DeribitTimeline

#: Intervals an unauthenticated connection may subscribe (A.2); ``raw`` is refused.
ALLOWED_INTERVALS = frozenset({"100ms", "agg2"})
#: The interval only an authenticated connection may subscribe (A.2); served as ``100ms``.
RAW = "raw"
#: Lifetime of the emulator's access tokens (s), like Deribit's (one year).
TOKEN_EXPIRES_S = 31536000

log = logging.getLogger(__name__)
#: Largest WebSocket request Deribit accepts (A.4).
MAX_REQUEST_BYTES = 32 * 1024


class DeribitEmulation(VenueEmulation):
    """Deribit API v2 (see the package docstring for the documentation sections followed): the
    wire format here, the timeline in :class:`DeribitTimeline`, the REST data methods in
    :class:`DeribitRest`."""

    name = "deribit"
    ws_path = "/ws/api/v2"
    rest_prefix = "/api/v2"
    malformed_kinds = MALFORMED_KINDS

    def __init__(self, fanout: int = 1, churn: bool = False) -> None:
        super().__init__(fanout, churn)
        self._timeline = DeribitTimeline(self.fanout, self.churn)
        self._authenticated: set[int] = set()  # Session.id of connections after public/auth
        #: the REST data methods (``public/get_instruments`` etc.), also used by benchmarks/ingest.py
        self.rest = DeribitRest(self._timeline)

    # --- timeline -------------------------------------------------------------------------------

    def load(self, capture: Path, trades: Path | None, align_trades: bool = False) -> list[Event]:
        """Base timeline from a capture and an optional trade source (see
        :meth:`DeribitTimeline.load`)."""
        return self._timeline.load(capture, trades, align_trades)

    def instantiate(self, event: Event, loop_index: int) -> Sequence[Event]:
        return self._timeline.instantiate(event, loop_index)

    def publish(self, event: Event) -> None:
        self._timeline.publish(event)

    def loop_fields(self, event: Event) -> tuple[tuple[bytes, int], ...] | None:
        """See :meth:`DeribitTimeline.loop_fields`."""
        return self._timeline.loop_fields(event)

    def listing_windows(self) -> dict[str, tuple[int, int]]:
        """Churn: instrument -> (listed from, delisted after), replay ms of the first loop."""
        return self._timeline.listing_windows()

    # --- channels and frames --------------------------------------------------------------------

    def route(self, channel: str) -> str | None:
        """Routing key of a channel; ``raw`` routes like ``100ms`` (the capture was recorded on
        ``raw``); whether the connection may have it is decided in :meth:`handle_message`."""
        parts = channel.split(".")
        if len(parts) == 3 and parts[0] in ("ticker", "book", "trades") \
                and (parts[2] in ALLOWED_INTERVALS or parts[2] == RAW) \
                and parts[1] in self._timeline.info:
            return f"{parts[0]}.{parts[1]}"
        if len(parts) == 4 and parts[0] == "trades" and parts[1] in TRADE_KINDS \
                and parts[2] in self._timeline.currencies \
                and (parts[3] in ALLOWED_INTERVALS or parts[3] == RAW):
            return f"trades.{parts[1]}.{parts[2]}"
        return None

    def channel_subject(self, channel: str) -> tuple[str, str | None]:
        parts = channel.split(".")
        if len(parts) == 3:
            return parts[0], parts[1]
        return parts[0], None

    def frame(self, channel: str, event: Event) -> bytes:
        return event_frame(self._timeline, channel, event)

    def malformed_frame(
        self, kind: str, channel: str, event: Event, oversize_bytes: int
    ) -> tuple[bytes, bool]:
        """See :func:`~collector_daemon.venues.deribit.emulation.frames.malformed_frame`."""
        return malformed_frame(self._timeline, kind, channel, event, oversize_bytes)

    # --- requests -------------------------------------------------------------------------------

    def heartbeat_frame(self) -> str:
        return '{"jsonrpc":"2.0","method":"heartbeat","params":{"type":"test_request"}}'

    def handle_message(self, session: Session, message: str | bytes, received_us: int) -> list[str]:
        """JSON-RPC 2.0 over WebSocket: ``public/subscribe``, ``public/unsubscribe``,
        ``public/unsubscribe_all``, ``public/set_heartbeat``, ``public/disable_heartbeat``,
        ``public/test``, ``public/hello``, ``public/get_time``, the REST data methods, and what
        cryptofeed sends: ``public/auth`` (any credentials, from a loopback peer only; logged) and
        ``private/subscribe`` / ``private/unsubscribe`` (authenticated connections; 13009
        ``unauthorized`` otherwise). ``raw`` channels are subscribed on authenticated
        connections only (left out of the result otherwise, A.2)."""
        try:
            request = json.loads(message)
        except ValueError:
            request = None
        request_id = request.get("id") if isinstance(request, dict) else None
        if len(message) > MAX_REQUEST_BYTES:  # the id is echoed when the request parses
            return [self._response(request_id, received_us, error=RpcError(
                -32600, "request entity too large"))]
        if request is None:
            return [self._response(None, received_us, error=RpcError(-32700, "Parse error"))]
        if not isinstance(request, dict) or not isinstance(request.get("method"), str):
            return [self._response(request_id, received_us,
                                   error=RpcError(-32600, "Invalid Request"))]
        try:
            result = self._call_ws(session, request["method"], request.get("params") or {})
        except RpcError as exc:
            return [self._response(request_id, received_us, error=exc)]
        return [self._response(request_id, received_us, result=result)]

    def _call_ws(self, session: Session, method: str, params: Any) -> Any:
        if not isinstance(params, dict):
            raise RpcError(-32602, "Invalid params")
        if method == "public/auth":
            return self._auth(session, params)
        if method in ("public/subscribe", "public/unsubscribe",
                      "private/subscribe", "private/unsubscribe"):
            channels = params.get("channels")
            if not isinstance(channels, list) or not all(isinstance(c, str) for c in channels):
                raise invalid_param("channels", "must be a list of strings")
            authenticated = session.id in self._authenticated
            if method.startswith("private/") and not authenticated:
                raise RpcError(13009, "unauthorized")
            if method.endswith("/subscribe"):
                if not authenticated:
                    channels = [c for c in channels if c.rpartition(".")[2] != RAW]
                return session.subscribe(channels)
            return session.unsubscribe(channels)
        if method == "public/unsubscribe_all":
            session.unsubscribe_all()
            return "ok"
        if method == "public/set_heartbeat":
            interval = params.get("interval")
            if isinstance(interval, bool) or not isinstance(interval, int | float) \
                    or interval < 10:
                raise invalid_param("interval", "must be a number >= 10")
            session.set_heartbeat(float(interval))
            return "ok"
        if method == "public/disable_heartbeat":
            session.set_heartbeat(None)
            return "ok"
        if method == "public/test":
            session.heartbeat_answered()
            return {"version": "emulator"}
        if method == "public/hello":
            return {"version": "emulator"}
        if method == "public/get_time":
            return int(time.time() * 1000)
        handler = self.rest.methods.get(method)
        if handler is None:
            raise RpcError(-32601, "Method not found")
        if session.rest_fault():
            raise RpcError(10028, "too_many_requests", http_status=429)
        return handler(params)

    def _auth(self, session: Session, params: dict[str, Any]) -> dict[str, Any]:
        """``public/auth`` (grant types ``client_credentials``, ``client_signature``,
        ``refresh_token``): any credentials are accepted from a loopback peer, and the log says
        so; other peers get 13009 ``unauthorized``. The result has Deribit's shape (access and
        refresh tokens, ``expires_in`` s, ``scope``, ``token_type``)."""
        grant = params.get("grant_type")
        if grant not in ("client_credentials", "client_signature", "refresh_token"):
            raise invalid_param("grant_type", "wrong format")
        host = session.remote.rpartition(":")[0]
        if not (host.startswith("127.") or host in ("::1", "localhost")):
            raise RpcError(13009, "unauthorized")
        if session.id not in self._authenticated:
            self._authenticated.add(session.id)
            log.warning("emulator: public/auth (%s) of connection %d from %s accepted without "
                        "checking its credentials (client_id %r): loopback only", grant,
                        session.id, session.remote, params.get("client_id"))
        scope = params.get("scope")
        return {"access_token": secrets.token_hex(16), "refresh_token": secrets.token_hex(16),
                "expires_in": TOKEN_EXPIRES_S, "token_type": "bearer",
                "scope": f"connection mainaccount {scope}" if isinstance(scope, str)
                else "connection mainaccount", "enabled_features": []}

    def handle_http(
        self, method: str, query: dict[str, str], fault: str | None, received_us: int
    ) -> tuple[int, bytes]:
        """``GET /api/v2/public/<method>?<params>`` → the JSON-RPC-shaped body Deribit sends
        (``{"jsonrpc","result","usIn","usOut","usDiff","testnet"}``; errors with HTTP 400, the
        rate-limit fault with 10028 over HTTP 400 or a plain HTTP 429)."""
        try:
            if method == "public/get_time":
                result: Any = int(time.time() * 1000)
            else:
                handler = self.rest.methods.get(method)
                if handler is None:
                    raise RpcError(-32601, "Method not found")
                if fault == "http429":
                    raise RpcError(10028, "too_many_requests", http_status=429)
                if fault:
                    raise RpcError(10028, "too_many_requests")
                result = handler(dict(query))
        except RpcError as exc:
            return exc.http_status, self._response(None, received_us, error=exc).encode()
        return 200, self._response(None, received_us, result=result).encode()

    @staticmethod
    def _response(request_id: Any, received_us: int, result: Any = None,
                  error: RpcError | None = None) -> str:
        body: dict[str, Any] = {"jsonrpc": "2.0"}
        if request_id is not None:
            body["id"] = request_id
        if error is not None:
            err: dict[str, Any] = {"code": error.code, "message": error.message}
            if error.data is not None:
                err["data"] = error.data
            body["error"] = err
        else:
            body["result"] = result
        out_us = time.time_ns() // 1000
        body.update(usIn=received_us, usOut=out_us, usDiff=out_us - received_us, testnet=False)
        return msgspec.json.encode(body).decode()
