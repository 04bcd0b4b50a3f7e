"""kamim sweep on tiny settings: runs every point, writes the table and heatmap, skips finished points on a
rerun and resumes an interrupted pretrain."""

from __future__ import annotations

import csv
import dataclasses

import pytest
from test_linprobe import make_toy_folder

from kamim.evaluate.sweep import Point, SweepConfig, pretrain_config, run_sweep
from kamim.paths import default_cache_dir

TINY_PRETRAIN = {"model": "vit_t", "overrides": {"depth": 1, "embed_dim": 32, "num_heads": 2}, "dataset": "folder",
                 "keypoints": "cached",  # one shared cache per detector (auto would detect FAST on the device)
                 "steps": 2, "batch_size": 4, "workers": 0, "device": "cpu", "grid_every": 0, "save_every": 1}
TINY_PROBE = {"layer": 1, "epochs": 3, "batch_size": 8, "workers": 0, "warmup_epochs": 1}


@pytest.fixture()
def sweep_env(tmp_path, monkeypatch):
    data = make_toy_folder(tmp_path / "data", {"train": 4, "val": 2})
    monkeypatch.setenv("KAMIM_CACHE_ROOT", str(tmp_path / "cache"))
    monkeypatch.setenv("KAMIM_RUNS_ROOT", str(tmp_path / "runs"))
    return tmp_path, {**TINY_PRETRAIN, "data_root": str(data)}


def test_two_by_one_sweep_runs_writes_table_and_skips_finished_points(sweep_env):
    tmp_path, pretrain = sweep_env
    config = SweepConfig(weight_ps=[8, 16], temperature=[0.25], detector=["fast"], out=str(tmp_path / "sweep"),
                         pretrain=pretrain, probe=TINY_PROBE)
    out = run_sweep(config, log=lambda m: None)
    with (out / "results.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    assert [r["point"] for r in rows] == ["simmim", "fast-wps8-T0.25", "fast-wps16-T0.25"]
    assert all(0 <= float(r["top1"]) <= 100 and r["pretrain_steps"] == "2" for r in rows)
    assert rows[1]["delta_vs_simmim"] != "" and "SimMIM baseline top-1" in (out / "results.md").read_text()
    assert (out / "heatmap-fast.png").stat().st_size > 1000
    shared = default_cache_dir("folder", "train", "fast", 256, data_root=pretrain.get("data_root"))
    assert [p.name for p in (tmp_path / "cache").glob("*.zarr")] == [shared.name]  # one shared cache

    watched = [out / name / f for name in ("simmim", "fast-wps8-T0.25") for f in
               ("model.safetensors", "linprobe/linprobe.json")]
    stamps = [p.stat().st_mtime_ns for p in watched]
    logs: list[str] = []
    run_sweep(config, log=logs.append)
    assert sum("sweep: skip" in m for m in logs) == 3
    assert not any("pretrain" in m and "start" in m for m in logs)
    assert [p.stat().st_mtime_ns for p in watched] == stamps  # nothing was retrained or re-probed


def test_interrupted_pretrain_resumes(sweep_env):
    from kamim.train.pretrain import run_pretrain

    tmp_path, pretrain = sweep_env
    config = SweepConfig(weight_ps=[8], temperature=[0.5], detector=["fast"], baseline=False,
                         out=str(tmp_path / "sweep"), pretrain=pretrain, probe=TINY_PROBE)
    point_dir = tmp_path / "sweep" / "fast-wps8-T0.5"
    interrupted = pretrain_config(config, Point("fast-wps8-T0.5", "kamim", "fast", 8, 0.5), point_dir)
    run_pretrain(dataclasses.replace(interrupted, stop_after=1))  # as if killed after step 1
    assert not (point_dir / "model.safetensors").exists()
    logs: list[str] = []
    run_sweep(config, log=logs.append)
    assert any("resume pretrain fast-wps8-T0.5" in m for m in logs)
    assert (point_dir / "model.safetensors").is_file() and (point_dir / "linprobe" / "linprobe.json").is_file()


def test_cli_rejects_bad_grid_before_any_work(tmp_path):
    from click.testing import CliRunner

    from kamim.cli import main

    for args, expected in ((["--detector", "fast,harris"], "harris"), (["--weight-ps", "8,x"], "--weight-ps"),
                           (["--temperature", ""], "at least one value")):
        result = CliRunner().invoke(main, ["sweep", *args, "--out", str(tmp_path / "s")])
        assert result.exit_code == 2 and expected in result.output and "Traceback" not in result.output
    assert not (tmp_path / "s").exists()
