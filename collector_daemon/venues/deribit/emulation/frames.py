"""Notification frames of the emulated Deribit: the ``subscription`` notification of an event,
and the malformed frames the fault injection sends (built from the event's real payload)."""

from __future__ import annotations

from typing import Any

import msgspec

from collector_daemon.emulator.venue import Event
from collector_daemon.venues.deribit.emulation.timeline import DeribitTimeline

#: Malformed-frame kinds :func:`malformed_frame` builds (in the order the fault injection uses).
MALFORMED_KINDS = (
    "truncated_json", "not_json", "timestamp_string", "price_string", "missing_fields",
    "unknown_channel", "nan_literal", "infinity_literal", "huge_number", "binary", "oversized",
)

_LITERAL = "__emulator_literal__"
_NOTIFICATION = b'{"jsonrpc":"2.0","method":"subscription","params":{"channel":"%s","data":%s}}'


def event_frame(timeline: DeribitTimeline, channel: str, event: Event) -> bytes:
    """The ``subscription`` notification delivering ``event`` on ``channel`` (A.1)."""
    return _NOTIFICATION % (channel.encode(), event.encoded or timeline.encoded(event))


def _notification(channel: str, data: Any) -> bytes:
    return _NOTIFICATION % (channel.encode(), msgspec.json.encode(data))


def malformed_frame(timeline: DeribitTimeline, kind: str, channel: str, event: Event,
                    oversize_bytes: int) -> tuple[bytes, bool]:
    """Malformed frames of :data:`MALFORMED_KINDS`, built from ``event``'s real payload:
    ``truncated_json`` (first half of a notification), ``not_json`` (an HTML error page),
    ``timestamp_string`` (``"timestamp":"abc"``), ``price_string`` (a price as a JSON string),
    ``missing_fields`` (no ``timestamp``/``instrument_name``/``trade_id``), ``unknown_channel``
    (a channel nobody subscribed), ``nan_literal`` / ``infinity_literal`` (bare ``NaN`` /
    ``Infinity``), ``huge_number`` (a 40-digit timestamp), ``binary`` (a binary frame) and
    ``oversized`` (a notification padded to ``oversize_bytes`` without required fields)."""
    if kind == "not_json":
        return b"<html><body><h1>502 Bad Gateway</h1></body></html>", False
    if kind == "truncated_json":
        whole = event_frame(timeline, channel, event)
        return whole[: len(whole) // 2].decode("utf-8", "ignore").encode(), False
    if kind == "binary":
        return b"\x00\xff\xfe\x80" + event_frame(timeline, channel, event)[:64], True
    if kind == "oversized":
        data = {"instrument_name": event.instrument, "padding": "x" * oversize_bytes}
        return _notification(channel, data), False
    if kind == "unknown_channel":
        prefix, _, interval = channel.partition(".")
        return _notification(f"{prefix}.NOSUCH-1JAN70-1-C.{interval.rpartition('.')[2]}",
                             timeline.payload(event)), False
    payload = timeline.payload(event)
    first = dict(payload[0] if isinstance(payload, list) else payload)
    price_field = next((f for f in ("price", "best_bid_price", "mark_price", "bids")
                        if first.get(f) is not None), "mark_price")
    literal = b""
    if kind == "timestamp_string":
        first["timestamp"] = "abc"
    elif kind == "price_string":
        first[price_field] = str(first.get(price_field))
    elif kind == "missing_fields":
        for f in ("timestamp", "instrument_name", "trade_id"):
            first.pop(f, None)
    elif kind in ("nan_literal", "infinity_literal", "huge_number"):
        target = "timestamp" if kind == "huge_number" else price_field
        first[target] = _LITERAL
        literal = {"nan_literal": b"NaN", "infinity_literal": b"Infinity",
                   "huge_number": b"1" + b"0" * 39}[kind]
    else:
        raise ValueError(f"unknown malformed kind {kind!r}")
    data: Any = [first, *payload[1:]] if isinstance(payload, list) else first
    frame = _notification(channel, data)
    if literal:
        frame = frame.replace(b'"%s"' % _LITERAL.encode(), literal)
    return frame, False
