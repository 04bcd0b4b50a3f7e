"""Finetune checkpoints every epoch and ``--resume`` continues exactly: a run killed (SIGKILL) right after
its first checkpoint landed, then resumed, ends with the same weights and the same per-epoch history as
the uninterrupted run (bit-equal on the CPU). Changed settings and a rerun without --resume are refused."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from test_linprobe import make_tiny_run, make_toy_folder

from kamim.errors import UserError
from kamim.evaluate.finetune import FinetuneConfig, run_finetune
from kamim.train.checkpoint import list_checkpoints, load_checkpoint

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "faults"))
from fault_child import run_child  # noqa: E402  (the fault suite's SIGKILL injector)


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    base = tmp_path_factory.mktemp("ft-resume")
    return make_toy_folder(base / "data", {"train": 4, "val": 2}), make_tiny_run(base / "run")


def config(toy, out, **changes) -> FinetuneConfig:  # noqa: ANN001
    data, run = toy
    base = dict(checkpoint=str(run), dataset="folder", data_root=str(data), epochs=2, warmup_epochs=1,
                batch_size=4, lr=1e-3, workers=0, device="cpu", eval_batch_size=4, out=str(out))
    return FinetuneConfig(**{**base, **changes})


def without_time(result: dict) -> dict:
    return {k: v for k, v in result.items() if k not in ("seconds", "checkpoint")}


@pytest.mark.parametrize("workers", [0, 1])
def test_killed_finetune_resumes_bit_exactly(toy, tmp_path, workers):
    whole = run_finetune(config(toy, tmp_path / "whole", workers=workers))
    out = tmp_path / "killed"
    code = run_child(run_finetune, config(toy, out, workers=workers), point="after-replace", pattern="step-*.pt")
    assert code == -9  # killed right after the first checkpoint (epoch 1) landed
    assert [load_checkpoint(p)["epoch"] for p in list_checkpoints(out)] == [1]
    assert not (out / "finetuned.safetensors").exists()
    resumed = run_finetune(config(toy, out, workers=workers, resume=True))
    assert without_time(resumed) == without_time(whole)  # every epoch's loss and accuracy, to the bit
    a, b = load_file(out / "finetuned.safetensors"), load_file(tmp_path / "whole" / "finetuned.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert json.loads((out / "finetune.json").read_text())["history"] == whole["history"]


def test_resume_with_other_settings_and_rerun_without_resume_are_refused(toy, tmp_path):
    out = tmp_path / "run"
    run_finetune(config(toy, out, epochs=1))
    with pytest.raises(UserError, match="already holds finetune checkpoints"):
        run_finetune(config(toy, out, epochs=1))
    with pytest.raises(UserError, match="--lr: the run had 0.001, now 0.002"):
        run_finetune(config(toy, out, epochs=1, lr=2e-3, resume=True))
    with pytest.raises(UserError, match="no checkpoints"):
        run_finetune(config(toy, tmp_path / "empty", resume=True))
