"""The emulator over TLS (``emulate --tls DIR``): a CA and a server certificate generated at start,
``wss://`` and ``https://`` on one port, and our collector's TLS path against it: with the CA it
stores every ticker exactly once; trusting another CA it stores nothing and says why (certificate
verification failed) instead of retrying silently."""

from __future__ import annotations

import asyncio
import json
import ssl
import urllib.request
from pathlib import Path

import psycopg
import pytest
import websockets

from collector_daemon.connection import _describe
from collector_daemon.daemon import Collector
from collector_daemon.emulator.server import EmulatorConfig, EmulatorServer
from collector_daemon.emulator.tls import make_ca, pem
from replay_helpers import CAPTURE, capture_tickers, db_quotes, settings_for

pytestmark = pytest.mark.realdata


def test_tls_server_certificate_verifies_with_the_generated_ca_only(real_data_dir, tmp_path):
    async def main() -> None:
        server = EmulatorServer(EmulatorConfig(capture=real_data_dir / CAPTURE, tls_dir=tmp_path / "tls"))
        await server.start()
        try:
            assert server.ws_url.startswith("wss://127.0.0.1:") and server.rest_url.startswith("https://")
            assert server.ca_file == tmp_path / "tls" / "ca.crt"
            assert (tmp_path / "tls" / "server.key").stat().st_mode & 0o077 == 0
            ctx = ssl.create_default_context(cafile=server.ca_file)
            url = server.rest_url + "/public/get_instruments?currency=ETH&kind=option"
            body = await asyncio.to_thread(lambda: urllib.request.urlopen(url, context=ctx).read())
            assert len(json.loads(body)["result"]) == 7
            async with websockets.connect(server.ws_url, ssl=ctx) as ws:
                await ws.send(json.dumps({"jsonrpc": "2.0", "id": 1, "method": "public/test"}))
                assert json.loads(await ws.recv())["result"] == {"version": "emulator"}
            other = tmp_path / "other-ca.crt"
            other.write_bytes(pem(make_ca("another CA")[1]))
            with pytest.raises(ssl.SSLCertVerificationError, match="certificate verify failed") as info:
                await websockets.connect(server.ws_url, ssl=ssl.create_default_context(cafile=other))
            # what the collector's connection records as the disconnect reason
            assert _describe(info.value) == (
                "TLS certificate verification failed (unable to get local issuer certificate): "
                "check the CA the collector trusts (SSL_CERT_FILE) and the host name of the URL")
            # a plain-text client gets no WebSocket from a TLS port
            with pytest.raises(Exception):  # noqa: B017 - the handshake fails one way or another
                await websockets.connect(server.ws_url.replace("wss://", "ws://"), open_timeout=5)
        finally:
            await server.stop()

    asyncio.run(main())


async def _collect_over_tls(real: Path, tmp_path: Path, dsn: str, ca_file: Path,
                            timeout: float) -> tuple[object, dict]:
    server = EmulatorServer(EmulatorConfig(capture=real / CAPTURE, close_when_done=True,
                                           tls_dir=tmp_path / "tls"))
    await server.start()
    try:
        collector = Collector(settings_for(dsn, tmp_path), ws_url=server.ws_url,
                              rest_url=server.rest_url, stop_on_replay_end=True)
        summary = await asyncio.wait_for(collector.run(), timeout)
        return summary, server.stats()
    finally:
        await server.stop()


def test_collector_over_wss_with_the_ca_stores_every_ticker_once(migrated_db_url, tmp_path,
                                                                 real_data_dir, monkeypatch):
    # the CA file is only known once the emulator generated it: SSL_CERT_FILE is read by
    # ssl.create_default_context() at each connect (picows, httpx)
    monkeypatch.setenv("SSL_CERT_FILE", str(tmp_path / "tls" / "ca.crt"))
    summary, stats = asyncio.run(_collect_over_tls(real_data_dir, tmp_path, migrated_db_url,
                                                   tmp_path / "tls" / "ca.crt", 120))
    expected = capture_tickers(real_data_dir / CAPTURE, "ETH")
    assert len(expected) == 197 and set(db_quotes(migrated_db_url)) == set(expected)
    assert sum(stats["totals"]["frames_by_instrument"]["ticker"].values()) == 197
    assert summary.rows_written["quotes"] == 197


def test_collector_trusting_another_ca_fails_with_a_clear_error(migrated_db_url, tmp_path,
                                                                real_data_dir, monkeypatch):
    other = tmp_path / "other-ca.crt"
    other.write_bytes(pem(make_ca("another CA")[1]))
    monkeypatch.setenv("SSL_CERT_FILE", str(other))
    with pytest.raises(Exception) as info:   # noqa: B017, PT011 - the message is asserted
        asyncio.run(_collect_over_tls(real_data_dir, tmp_path, migrated_db_url, other, 60))
    # the universe is read over https first: it fails at start, naming the cause
    assert "CERTIFICATE_VERIFY_FAILED" in str(info.value)
    with psycopg.connect(migrated_db_url) as conn:
        assert conn.execute("SELECT count(*) FROM quotes").fetchone()[0] == 0
