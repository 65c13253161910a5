"""A tiny venue that exists only in the tests (``TICKVAULT_VENUE_PLUGINS=fake_venue``): two
streams in its own tables, a JSON wire protocol, a REST API over HTTP and recovery by time. It
proves that a venue plugs in with no edit outside its folder (tests/e2e/test_fake_venue.py).

Wire protocol (WebSocket):
    -> {"op": "sub", "id": 1, "args": ["ticks.A", "prints"]}
    <- {"id": 1, "ok": ["ticks.A", "prints"]}                 (refused channels left out)
    <- {"ch": "ticks.A", "ts": 1733390000123, "px": 1.5}      (ms since the epoch)
    <- {"ch": "prints", "data": [{"id": "p1", "s": "A", "ts": 1733390000124, "px": 1.5, "qty": 2.0}]}
REST (HTTP GET, JSON): ``{rest_url}/instruments`` -> ``["A", "B"]``;
``{rest_url}/prints?start=MS&end=MS`` -> the prints of ``[start, end]`` (the same objects).
"""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import httpx
from pydantic import Field
from pydantic_settings import SettingsConfigDict

from collector_daemon.rows import TableSpec, register_table
from collector_daemon.venues import (
    ConnectionLimits, Control, Data, Decoder, IdSource, RejectedFrame, Recovery, RecoveryPlan,
    Request, Response, RestClient, StreamSpec, Venue, VenueProtocol, VenueSettings,
)

NAME = "fakex"
TICKS = register_table(TableSpec(
    "fakex_ticks", ("venue", "instrument_name", "exchange_ts", "receive_ts", "price"),
    natural_key=("exchange_ts", "venue", "instrument_name"),
    timestamp_columns=("exchange_ts", "receive_ts")))
PRINTS = register_table(TableSpec(
    "fakex_prints", ("venue", "instrument_name", "trade_id", "exchange_ts", "receive_ts", "price",
                     "amount", "source"),
    natural_key=("exchange_ts", "venue", "instrument_name", "trade_id"),
    timestamp_columns=("exchange_ts", "receive_ts")))
CHANNEL_STREAMS = {"ticks.": "ticks", "prints": "prints"}


class FakeSettings(VenueSettings):
    """``TICKVAULT_FAKEX_*``."""

    model_config = SettingsConfigDict(env_prefix="TICKVAULT_FAKEX_", extra="ignore")

    ws_url: str = Field("ws://127.0.0.1:9/ws", description="WebSocket URL.")
    rest_url: str = Field("http://127.0.0.1:9/api", description="REST base URL.")
    top_n: int | None = Field(None, description="Instruments to subscribe (None = all).")

    def universe_groups(self) -> tuple[str, ...]:
        return ("FAKE",)


def _print_row(p: dict, receive_us: int, source: str) -> tuple:
    return (NAME, p["s"], p["id"], p["ts"] * 1000, receive_us, float(p["px"]), float(p["qty"]), source)


class FakeProtocol(VenueProtocol, Decoder):
    """The JSON protocol of the module docstring; stateless, so it is its own decoder."""

    name = NAME
    max_channels_per_subscribe = 50
    channel_streams = CHANNEL_STREAMS

    def channels_for(self, instruments: list[str]) -> list[str]:
        return ["prints"] + [f"ticks.{n}" for n in instruments]

    async def open_requests(self, next_id: IdSource) -> list[Request]:
        return []

    def subscribe_request(self, channels: list[str], next_id: IdSource) -> Request:
        rid = next_id()
        return Request(rid, json.dumps({"op": "sub", "id": rid, "args": channels}), tuple(channels))

    def unsubscribe_request(self, channels: list[str], next_id: IdSource) -> Request:
        rid = next_id()
        return Request(rid, json.dumps({"op": "unsub", "id": rid, "args": channels}), tuple(channels))

    def acknowledged_channels(self, request: Request, responses: list[Response]) -> list[str]:
        ok = {c for r in responses for c in (r.result or ())}
        return [c for c in request.channels if c in ok]

    def decoder(self) -> "FakeProtocol":
        return self

    def decode(self, frame: str | bytes, receive_us: int) -> Data | Response | Control:
        try:
            msg = json.loads(frame)
            if "id" in msg:
                return Response(msg["id"], msg.get("ok"), msg.get("error"))
            channel = msg["ch"]
            if channel.startswith("ticks."):
                return Data(TICKS, [(NAME, channel[6:], msg["ts"] * 1000, receive_us, float(msg["px"]))],
                            channel)
            if channel == "prints":
                return Data(PRINTS, [_print_row(p, receive_us, "ws") for p in msg["data"]], channel)
        except (ValueError, KeyError, TypeError) as exc:
            raise RejectedFrame(f"bad frame: {exc!r}") from None
        raise RejectedFrame(f"unknown channel {channel!r}")


class FakeRest(RestClient):
    """The fake venue's one REST client (httpx)."""

    def __init__(self, base_url: str) -> None:
        self._http = httpx.AsyncClient(base_url=base_url, timeout=5)
        self.calls = self.retries = 0

    async def get(self, path: str, **params) -> object:
        self.calls += 1
        resp = await self._http.get(path, params=params)
        resp.raise_for_status()
        return resp.json()

    async def aclose(self) -> None:
        await self._http.aclose()


@dataclass
class FakeUniverse:
    """What fetch_universe returns (``core.universe.FetchedUniverse``)."""

    selected: list[str]
    open_interest: dict[str, float] = field(default_factory=dict)

    def instrument_rows(self) -> list[tuple]:
        return [(NAME, n, "spot", "FAKE", "USD", None, None, None, None, None, None, None, True, None,
                 None) for n in self.selected]


class FakeVenue(Venue):
    """Ticks (no history: unrecoverable) and prints (recoverable by time window)."""

    name = NAME
    settings_class = FakeSettings
    limits = ConnectionLimits(subscribe_burst=10, subscribe_period_s=1.0)
    channel_streams = CHANNEL_STREAMS
    rest_errors = (httpx.HTTPError,)
    schema_dir = Path(__file__).parent / "schema"

    def streams(self, settings: FakeSettings) -> tuple[StreamSpec, ...]:
        return (StreamSpec("ticks", TICKS, Recovery.NONE, per_instrument=True,
                           unrecoverable_reason="the fake venue keeps no tick history"),
                StreamSpec("prints", PRINTS, Recovery.TIME))

    def channel_instrument(self, channel: str) -> str | None:
        return channel[6:] if channel.startswith("ticks.") else None

    def ws_endpoints(self, settings: FakeSettings) -> dict[str, str]:
        return {"public": settings.ws_url}

    def protocol(self, settings: FakeSettings) -> FakeProtocol:
        return FakeProtocol()

    def rest_client(self, settings: FakeSettings, *, base_url: str | None = None,
                    max_concurrency: int = 4) -> FakeRest:
        return FakeRest(base_url or settings.rest_url)

    async def fetch_universe(self, rest: FakeRest, settings: FakeSettings, group: str) -> FakeUniverse:
        return FakeUniverse(sorted(await rest.get("/instruments")))

    async def recovery_pages(self, rest: FakeRest, gap, plan: RecoveryPlan, settings: FakeSettings,
                             instrument_groups: Mapping[str, tuple[str, str]]) -> AsyncIterator[list[tuple]]:
        start_ms, end_ms = gap.gap_start // 1000, -(-gap.gap_end // 1000)
        prints = await rest.get("/prints", start=start_ms, end=end_ms)
        now_us = time.time_ns() // 1000
        yield [_print_row(p, now_us, "rest") for p in prints
               if gap.instrument_name in ("*", p["s"])]


VENUE = FakeVenue()
