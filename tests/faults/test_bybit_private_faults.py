"""Bybit private streams of 3 accounts under process and database faults (issue 11, "Tests":
"database stopped 30 s; SIGKILL with the stated bound").

The emulator runs in this process (:class:`~faults.conftest.EmulatorThread`: its accounts and
private traffic are set up in Python, and its counts survive the collector), replaying the real
2026-08-09 linear capture with every account's private traffic made of Nautilus' real v5
execution, order, position and wallet messages, re-keyed per account and copy and timed when
played (``collector_daemon/venues/bybit/emulation.py``), as in
``tests/e2e/test_bybit_private_drops.py``. The collector is the real ``tickvault collect``
process on a PostgreSQL of the test's own (``own_pg``), which the test stops or kills. What was
sent is the emulator's own count per account; figures are printed at the end of the session
("fault-suite figures") and quoted in docs/reliability.md.
"""

from __future__ import annotations

import json
import signal
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from collector_daemon.emulator.server import EmulatorConfig, EmulatorServer
from collector_daemon.venues.bybit.private import EXECUTIONS
from e2e.test_bybit_private_drops import CAPTURE, FRAMES, SECRETS
from faults.conftest import (
    RssSampler, collector_env, counts, emulator_thread, spooled_rows, stop_collector, tickvault, wait_for,
)

pytestmark = pytest.mark.realdata

#: Collectors (one public linear connection + one private per account) the replay waits for.
CLIENTS = 1 + len(SECRETS)


def add_accounts(dsn: str) -> dict[str, int]:
    """The 3 accounts (secrets by environment reference) -> API key: account_id."""
    return dict(counts(dsn, "INSERT INTO accounts (label, venue, key_id, secret_ref) VALUES "
                       + ", ".join(f"('acct{i}', 'bybit', '{k}', 'env:TV_SECRET_{i}')" for i, k in enumerate(SECRETS))
                       + " RETURNING key_id, account_id"))


def private_traffic(real: Path, copies: int) -> tuple[Callable[[EmulatorServer], None], str]:
    """``prepare`` for :func:`~faults.conftest.emulator_thread`: the emulator knows the accounts'
    keys and plays, for each, ``copies`` copies of each real private message spread evenly over
    the replay (none on subscribe: the stream or REST carries each copy once). Also returns the
    real fill's execId (copy k of account ``key`` is ``{execId}-{key}-t{k}``)."""
    frames = [json.loads((real / f).read_text()) for f in FRAMES]

    def prepare(server: EmulatorServer) -> None:
        emu = server.venue
        emu.accounts, emu.private_frames, emu.private_copies = dict(SECRETS), frames, 0
        events = server.replayer.events
        events += emu.private_events(list(SECRETS), copies, events[0].ts, events[-1].ts)
        events.sort(key=lambda e: e.ts)
    return prepare, frames[0]["data"][0]["execId"]


def bybit_env(dsn: str, tmp_path: Path, server: EmulatorServer, **extra: str) -> dict[str, str]:
    """``tickvault collect`` on Bybit linear BTCUSDT and the private streams, against the emulator."""
    return collector_env(
        dsn, tmp_path, TICKVAULT_VENUE="bybit", TICKVAULT_BYBIT_CATEGORIES="linear",
        TICKVAULT_BYBIT_LINEAR_SYMBOLS="BTCUSDT", TICKVAULT_BYBIT_LINEAR_WS_URL=server.ws_urls["/v5/public/linear"],
        TICKVAULT_BYBIT_PRIVATE_WS_URL=server.ws_urls["/v5/private"], TICKVAULT_BYBIT_REST_URL=server.rest_url,
        TICKVAULT_BYBIT_PRIVATE_CATEGORIES="linear", TICKVAULT_BYBIT_RECONCILE_LOOKBACK_DAYS="1",
        TICKVAULT_BYBIT_REST_BAN_WAIT_S="0.05",
        **{f"TV_SECRET_{i}": secret for i, secret in enumerate(SECRETS.values())}, **extra)


def executions_sent(stats: dict) -> dict[str, list[int]]:
    """API key -> execution messages (one fill each) the emulator handed to each of the account's
    private connections, in connection order."""
    out: dict[str, list[int]] = {key: [] for key in SECRETS}
    for client in stats["clients"]:
        for key in SECRETS:
            n = client["by_channel"].get(f"private|{key}|execution")
            if n is not None:
                out[key].append(n)
    return out


def stored(dsn: str) -> list[tuple[int, str, str]]:
    """(account_id, exec_id, source) of every stored execution."""
    return counts(dsn, "SELECT account_id, exec_id, source FROM bybit_executions")


def assert_every_execution_once(dsn: str, rows: list[tuple[int, str, str]], ids: dict[str, int], fill: str,
                                copies: int) -> None:
    """Each account holds exactly its ``copies`` fills, each once, and nothing else exists; and
    its ``copies`` orders."""
    for key, account_id in ids.items():
        mine = sorted(exec_id for a, exec_id, _ in rows if a == account_id)
        assert mine == sorted(f"{fill}-{key}-t{k}" for k in range(copies)), key
    assert len(rows) == len({(a, e) for a, e, _ in rows}) == copies * len(ids)
    orders = counts(dsn, "SELECT account_id, count(DISTINCT order_id) FROM bybit_orders GROUP BY 1")
    assert sorted(orders) == sorted((i, copies) for i in ids.values())


def test_database_down_30s_private_executions_spooled_once(own_pg, tmp_path, real_data_dir, figures):
    """PostgreSQL stopped for 30 s while the 3 accounts' executions flow: the streams stay up, the
    spool takes the outage (RSS bounded), and afterwards every execution the emulator sent is
    stored exactly once under its own account; those sent during the outage came through the
    spool (source ``ws``), not a reconciliation."""
    server, dsn = own_pg
    copies = 40                                    # fills per account, over a ~39 s replay
    ids = add_accounts(dsn)
    prepare, fill = private_traffic(real_data_dir, copies)
    log = tmp_path / "collector.log"
    config = EmulatorConfig(capture=real_data_dir / CAPTURE, venue="bybit", speed=1.1, wait_for_clients=CLIENTS)
    with emulator_thread(config, prepare) as emu:
        proc = tickvault("collect", env=bybit_env(dsn, tmp_path, emu.server), log=log)
        rss = RssSampler(proc.pid)
        try:
            wait_for(lambda: len({a for a, _, _ in stored(dsn)}) == len(ids), 60,
                     "a stored execution of every account", tick=rss.sample, proc=proc, log=log)
            before_down = executions_sent(emu.stats())
            server.stop()
            down_at = time.monotonic()
            wait_for(lambda: time.monotonic() - down_at >= 30, 40, "the 30 s outage", tick=rss.sample,
                     proc=proc, log=log)
            after_down = executions_sent(emu.stats())
            server.start()
            up_at = time.monotonic()
            wait_for(lambda: emu.stats()["replay"]["state"] == "finished" and len(stored(dsn)) >= copies * len(ids)
                     and "spool drained" in log.read_text(), 90,
                     "every execution stored after the outage", tick=rss.sample, proc=proc, log=log)
            stats = emu.stats()
            stop_collector(proc, log)
        finally:
            if proc.poll() is None:
                proc.kill()
    text = log.read_text()
    assert "spooling batches" in text and "spool drained" in text
    sent = executions_sent(stats)
    assert all(len(per_conn) == 1 for per_conn in sent.values()), sent   # no private reconnect
    assert {key: n for key, (n,) in sent.items()} == {key: copies for key in SECRETS}
    rows = stored(dsn)
    assert_every_execution_once(dsn, rows, ids, fill, copies)
    source = {(a, e): s for a, e, s in rows}
    during = {key: range(before_down[key][0], after_down[key][0]) for key in SECRETS}
    assert all(len(r) > 0 for r in during.values()), during           # executions flowed meanwhile
    assert {source[ids[key], f"{fill}-{key}-t{k}"] for key, r in during.items() for k in r} == {"ws"}
    before, peak_out = rss.peak(0, down_at), rss.peak(down_at, up_at)
    assert peak_out - before < 64, f"RSS {before:.0f} MiB before, {peak_out:.0f} MiB during the outage"
    figures.update(executions_sent=sum(n for (n,) in sent.values()), executions_stored=len(rows),
                   sent_during_outage=sum(len(r) for r in during.values()),
                   stored_ws=sum(s == "ws" for *_, s in rows), stored_rest=sum(s == "rest" for *_, s in rows),
                   rss_before_mib=round(before), rss_peak_outage_mib=round(peak_out),
                   outage_s=round(up_at - down_at, 1))


def test_sigkill_loses_at_most_the_unflushed_tail_and_restart_restores_all(own_pg, tmp_path, real_data_dir,
                                                                          figures):
    """SIGKILL of the collector while the 3 accounts' executions flow. The killed process loses
    at most its unflushed tail, the stated bound ``2 x flush_interval x rate + 1`` executions (the
    open buffer and the sealed batch being written, docs/reliability.md); the restarted one's
    start-up REST reconciliation then restores every execution, those the kill lost and those
    made while no collector ran: after the restart nothing is lost at all."""
    server, dsn = own_pg
    copies, flush_s = 120, 1.0                     # fills per account over a ~28 s replay
    ids = add_accounts(dsn)
    prepare, fill = private_traffic(real_data_dir, copies)
    log1, log2 = tmp_path / "collector1.log", tmp_path / "collector2.log"
    config = EmulatorConfig(capture=real_data_dir / CAPTURE, venue="bybit", speed=1.5, wait_for_clients=CLIENTS)
    with emulator_thread(config, prepare) as emu:
        env = bybit_env(dsn, tmp_path, emu.server, TICKVAULT_FLUSH_INTERVAL_S=str(flush_s))
        first = tickvault("collect", env=env, log=log1)
        second = None
        try:
            # killed on the emulator's count, not the database's, so the kill falls anywhere in the
            # collector's flush cycle (not just after a write)
            wait_for(lambda: sum(map(sum, executions_sent(emu.stats()).values())) >= copies * len(ids) // 3, 60,
                     "a third of the executions sent", proc=first, log=log1)
            first.send_signal(signal.SIGKILL)
            killed_wall = time.time()
            first.wait(timeout=10)
            # the emulator has seen the first collector's connections close: its counts are final
            def closed() -> dict | None:
                s = emu.stats()
                return None if any(c["connected"] for c in s["clients"]) else s
            stats = wait_for(closed, 30, "the killed collector's connections to close")
            at_kill = {(a, e) for a, e, _ in stored(dsn)}
            at_kill |= {(r[EXECUTIONS.columns.index("account_id")], r[EXECUTIONS.columns.index("exec_id")])
                        for r in spooled_rows(tmp_path / "spool").get(EXECUTIONS.name, [])}
            second = tickvault("collect", env=env, log=log2)
            wait_for(lambda: emu.stats()["replay"]["state"] == "finished" and len(stored(dsn)) >= copies * len(ids),
                     90, "every execution stored after the restart", proc=second, log=log2)
            stop_collector(second, log2)
        finally:
            for p in (second, first):
                if p is not None and p.poll() is None:
                    p.kill()
    sent = executions_sent(stats)                  # to the killed collector, one connection each
    assert all(len(per_conn) == 1 for per_conn in sent.values()), sent
    sent_ids = {(ids[key], f"{fill}-{key}-t{k}") for key, (n,) in sent.items() for k in range(n)}
    assert at_kill <= sent_ids                      # stored only what was sent
    lost = len(sent_ids - at_kill)
    # rate: the killed collector's executions over the wall time the replay had run
    rate = len(sent_ids) / (killed_wall - stats["replay"]["started_at"])
    bound = 2 * flush_s * rate + 1
    assert 0 <= lost <= bound, (lost, bound)
    rows = stored(dsn)
    assert_every_execution_once(dsn, rows, ids, fill, copies)   # after the restart: nothing lost
    source = {(a, e): s for a, e, s in rows}
    assert {source[k] for k in sent_ids - at_kill} <= {"rest"}   # the lost tail came back by REST
    while_down = {(ids[key], f"{fill}-{key}-t{k}") for key, (n,) in sent.items() for k in range(n, copies)
                  if source[ids[key], f"{fill}-{key}-t{k}"] == "rest"}
    assert while_down                              # fills made while no collector ran, by REST
    figures.update(sent_to_killed=len(sent_ids), stored_at_kill=len(at_kill), lost=lost,
                   rate_executions_s=round(rate, 1), bound=round(bound, 1),
                   restored_by_rest=lost + len(while_down), executions_stored=len(rows),
                   executions_expected=copies * len(ids))
