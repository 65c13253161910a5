"""The import-folder sensor: a Kraken OHLCVT file (the real 3,727-row daily XBTUSD download)
dropped into $TICKVAULT_IMPORT_DIR/kraken-ohlcvt/ becomes one history_import run whose
materialisation carries the import's summary; the same file version is requested under the same
run key, a changed one under a new key; nothing is requested without the folder."""

from __future__ import annotations

import os
import shutil
import time

import dagster as dg

from orchestration.defs.assets.history import history_import
from orchestration.defs.sensors import history_import_folder
from orchestration.resources import DatabaseResource

OHLCVT = "kraken/kraken_OHLCVT_download_XBTUSD_1440_daily_2013-10-06_to_2023-12-31.csv"


def _tick(instance) -> list:
    with dg.build_sensor_context(instance=instance) as ctx:
        data = history_import_folder.evaluate_tick(ctx)
    return data.run_requests or [], data.skip_message


def test_import_folder_sensor_runs_the_import_with_its_summary(migrated_db_url, real_data_dir, tmp_path,
                                                               monkeypatch):
    instance = dg.DagsterInstance.ephemeral()
    monkeypatch.delenv("TICKVAULT_IMPORT_DIR", raising=False)
    requests, skipped = _tick(instance)
    assert requests == [] and "TICKVAULT_IMPORT_DIR is not set" in skipped

    folder = tmp_path / "imports" / "kraken-ohlcvt"
    folder.mkdir(parents=True)
    target = folder / "XBTUSD_1440.csv"
    shutil.copy(real_data_dir / OHLCVT, target)
    monkeypatch.setenv("TICKVAULT_IMPORT_DIR", str(tmp_path / "imports"))
    assert _tick(instance)[0] == []                    # just written: waits until it settles
    old = time.time() - 60
    os.utime(target, (old, old))
    [request] = _tick(instance)[0]
    assert request.job_name in (None, "history_import_job")
    config = request.run_config["ops"]["history_import"]["config"]
    assert config["importer"] == "kraken-ohlcvt" and config["path"] == str(target)

    result = dg.materialize([history_import], run_config=request.run_config, instance=instance,
                            resources={"database": DatabaseResource(url=migrated_db_url)})
    assert result.success
    meta = {k: v.value for k, v in result.asset_materializations_for_node("history_import")[0].metadata.items()}
    assert (meta["rows_read"], meta["inserted"], meta["already_present"], meta["rejected"]) == (3727, 3727, 0, 0)
    assert "3,727" in meta["summary"] or "3727" in meta["summary"]

    [same] = _tick(instance)[0]
    assert same.run_key == request.run_key            # one run per file version
    os.utime(target, (old + 1, old + 1))
    [changed] = _tick(instance)[0]
    assert changed.run_key != request.run_key
