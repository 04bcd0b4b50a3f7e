"""A full disk at the end of a run or in its metrics log: one line naming the file, nothing torn or
half-written left behind, and ``--resume`` finishes the run once there is space.

The disk fills through RLIMIT_FSIZE in a child (SIGXFSZ ignored, so writes fail with EFBIG as ENOSPC
would); a torn metrics line is also made the way a kill mid-write leaves it: a real record cut short.
"""

from __future__ import annotations

import json

import pytest
import torch
from fault_child import run_child
from fault_files import make_folder
from fault_files import tiny_run_config as config
from safetensors.torch import load_file

from kamim.errors import UserError
from kamim.train.observe import MetricsLog
from kamim.train.pretrain import run_pretrain

pytestmark = pytest.mark.fault

@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return make_folder(tmp_path_factory.mktemp("fullrun") / "data", per_class=4, size=96)


def same_weights(a: dict, b: dict) -> bool:
    """Tensor for tensor (the header's metadata order is not fixed: safetensors writes it from a hash map)."""
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def records(run) -> list[dict]:  # noqa: ANN001
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def test_full_disk_at_the_final_export_is_one_line_and_resume_exports(data, tmp_path):
    run = tmp_path / "run"
    run_pretrain(config(data, run))
    export = load_file(run / "model.safetensors")
    size = (run / "model.safetensors").stat().st_size
    (run / "model.safetensors").unlink()
    (run / "model.json").unlink()
    report = tmp_path / "error.txt"  # checkpoints exist; resuming, only the export is due
    code = run_child(run_pretrain, config(data, run, resume=True), limits={"RLIMIT_FSIZE": size // 2},
                     report=str(report))
    line = report.read_text()
    assert code == 2 and line.startswith("Error: could not write") and "\n" not in line, line
    assert "model.safetensors" in line and "--resume" in line
    assert not (run / "model.safetensors").exists() and not list(run.glob(".model*"))
    run_pretrain(config(data, run, resume=True))  # space again: the same export
    assert same_weights(load_file(run / "model.safetensors"), export)


def write_records(run_dir: str, count: int) -> None:
    log = MetricsLog(run_dir, {})
    for step in range(1, count + 1):
        log.write({"step": step, "loss": 0.123456789 * step, "note": "x" * 40})


def test_full_disk_in_the_metrics_log_names_it_and_leaves_whole_lines(tmp_path):
    report = tmp_path / "error.txt"
    code = run_child(write_records, str(tmp_path), 50, limits={"RLIMIT_FSIZE": 700}, report=str(report))
    assert code == 2, report.read_text() if report.exists() else code
    line = report.read_text()
    assert "\n" not in line and "metrics.jsonl" in line and "resume" in line
    text = (tmp_path / "metrics.jsonl").read_text()
    assert text.endswith("\n") and len(text) <= 700
    steps = [json.loads(row)["step"] for row in text.splitlines()]  # every line parses
    assert steps == list(range(1, len(steps) + 1)) and steps


def test_torn_last_metrics_line_is_dropped_on_resume(data, tmp_path):
    whole = tmp_path / "whole"
    run_pretrain(config(data, whole))
    run = tmp_path / "run"
    run_pretrain(config(data, run, stop_after=2))
    metrics = run / "metrics.jsonl"
    # a record written past the checkpoint, cut off mid-way as a full disk or a kill leaves it
    metrics.write_text(metrics.read_text() + json.dumps(records(whole)[2])[:25])
    run_pretrain(config(data, run, resume=True))  # used to end in a JSONDecodeError traceback
    assert [r["step"] for r in records(run)] == [1, 2, 3, 4]
    assert [r["loss"] for r in records(run)] == [r["loss"] for r in records(whole)]
    assert same_weights(load_file(run / "model.safetensors"), load_file(whole / "model.safetensors"))


def test_damaged_metrics_line_before_the_end_is_one_line_naming_it(data, tmp_path):
    run = tmp_path / "run"
    run_pretrain(config(data, run, stop_after=2))
    metrics = run / "metrics.jsonl"
    lines = metrics.read_text().splitlines()
    metrics.write_text("\n".join(["{garbage", *lines]) + "\n")
    with pytest.raises(UserError, match="metrics.jsonl line 1 is not a metrics record"):
        run_pretrain(config(data, run, resume=True))
