"""``tickvault inspect --venue NAME FILE``: decode a capture offline with the venue's own decoders
and print, per frame, the table and row(s) it becomes, or why it is rejected.

Input (gzip allowed): the shared JSON-lines capture format (``shared/data/real/PROVENANCE.md``,
"Common format": only ``recv`` records are decoded, each by the decoder of the endpoint its
``url`` names, as the venue's settings configure them: e.g. ``TICKVAULT_BYBIT_CATEGORIES``
for Bybit's spot endpoint; frames of other endpoints are rejected saying so), or one frame per line, or a file holding one (pretty-printed) JSON frame; those
are decoded as ``--endpoint`` (default: the venue's first endpoint; ``private`` for account
streams, decoded for a placeholder account 0). Decoder state (Bybit's linear ticker deltas) is
kept per recorded connection, as the collector keeps it per socket.

Output, one block per frame: ``#N <endpoint> <table>: k row(s)`` and each row as JSON (column ->
value; timestamps as ISO-8601 UTC), or ``#N <endpoint> answer ...`` / ``control``, or
``#N <endpoint> REJECTED: <reason>``. Exit codes: 0 every frame decoded, 1 at least one frame
rejected, 2 bad usage (unknown venue or endpoint, unreadable file).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Iterator
from datetime import datetime, timezone
from pathlib import Path
from typing import TextIO
from urllib.parse import urlsplit

from collector_daemon.core.accounts import Account
from collector_daemon.venues import Data, Decoder, RejectedFrame, Response, Venue, get_venue

#: The account private frames are decoded for (no database, no secret).
PLACEHOLDER_ACCOUNT = Account(0, "inspect", "inspect", "env:UNUSED")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``tickvault inspect``."""
    parser.add_argument("--venue", required=True, help="the venue whose decoders read the file")
    parser.add_argument("--endpoint", help="endpoint of frames without a URL (default: the venue's first; "
                                           "'private' for account streams)")
    parser.add_argument("file", type=Path, help="a capture (JSON lines, gzip allowed) or frames, one per line")


def decoders(venue: Venue) -> dict[str, tuple[str, object]]:
    """Endpoint key -> (URL, a factory of its decoder), the private endpoint included."""
    settings = venue.load_settings()
    protocol = venue.protocol(settings)
    out: dict[str, tuple[str, object]] = {
        key: (url, lambda key=key: protocol.decoder_for(key))
        for key, url in venue.ws_endpoints(settings).items()}
    private = venue.private_ws_url(settings)
    if private:
        out["private"] = (private, lambda: venue.private_protocol(settings, PLACEHOLDER_ACCOUNT).decoder())
    return out


def _frames(path: Path, default: str, endpoint_of_url) -> Iterator[tuple[str, str, str]]:
    """(connection, endpoint, frame) of every frame to decode."""
    from collector_daemon.emulator.replay import open_text

    with open_text(path) as fh:
        text = fh.read()
    try:   # one (pretty-printed) frame
        whole = json.loads(text)
    except ValueError:
        whole = None
    if isinstance(whole, dict) and "\n" in text.strip():
        yield "", default, json.dumps(whole, separators=(",", ":"))
        return
    for line in text.splitlines():
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except ValueError:
            obj = None
        if isinstance(obj, dict) and "dir" in obj and "raw" in obj:   # a capture record
            if obj["dir"] == "recv" and obj.get("raw") is not None:
                url = obj.get("url")
                yield str(obj.get("conn")), (endpoint_of_url(url) if url else default), obj["raw"]
        else:
            yield "", default, line


def inspect(venue: Venue, path: Path, endpoint: str | None, out: TextIO) -> int:
    """Decode ``path`` and print every frame's outcome to ``out``; returns the exit code.

    Raises:
        ValueError: ``endpoint`` is not one of the venue's.
        OSError: the file cannot be read.
    """
    table = decoders(venue)
    if endpoint is not None and endpoint not in table:
        raise ValueError(f"venue {venue.name} has no endpoint {endpoint!r}; endpoints: {', '.join(table)}")
    default = endpoint or next(iter(table))
    by_path = {urlsplit(url).path: key for key, (url, _) in table.items()}

    def endpoint_of_url(url: str) -> str:
        return by_path.get(urlsplit(url).path) or f"unconfigured endpoint {url}"

    live: dict[tuple[str, str], Decoder] = {}
    rejected = 0
    n = 0
    for n, (conn, key, frame) in enumerate(_frames(path, default, endpoint_of_url), 1):
        if key not in table:
            rejected += 1
            print(f"#{n} REJECTED: {key} (the venue's settings leave it out)", file=out)
            continue
        decoder = live.get((conn, key))
        if decoder is None:
            decoder = live[(conn, key)] = table[key][1]()
        try:
            item = decoder.decode(frame, 0)
        except RejectedFrame as exc:
            rejected += 1
            print(f"#{n} {key} REJECTED: {exc}", file=out)
            continue
        if type(item) is Data:
            print(f"#{n} {key} {item.table.name}: {len(item.rows)} row(s)", file=out)
            stamps = set(item.table.timestamp_columns) - {"receive_ts"}
            for row in item.rows:
                print(json.dumps({c: _iso(v) if c in stamps and isinstance(v, int) else v
                                  for c, v in zip(item.table.columns, row) if c != "receive_ts"},
                                 default=str), file=out)
        elif type(item) is Response:
            print(f"#{n} {key} answer to request {item.request_id}: "
                  f"{'error ' + json.dumps(item.error) if item.error else 'ok'}", file=out)
        else:
            print(f"#{n} {key} control{' (needs a reply)' if item.reply else ''}", file=out)
    print(f"{n} frame(s), {rejected} rejected", file=out)
    return 1 if rejected else 0


def _iso(us: int) -> str:
    return datetime.fromtimestamp(us / 1e6, timezone.utc).isoformat(timespec="microseconds")


def main(args: argparse.Namespace) -> int:
    """Run ``tickvault inspect``."""
    try:
        venue = get_venue(args.venue)
        return inspect(venue, args.file, args.endpoint, sys.stdout)
    except (ValueError, OSError) as exc:
        print(f"tickvault inspect: {exc}", file=sys.stderr)
        return 2
