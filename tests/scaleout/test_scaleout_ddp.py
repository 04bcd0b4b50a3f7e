"""torchrun with gloo on the CPU: two ranks train exactly like one process with the same global batch,
only rank 0 writes, and a DDP run resumes exactly."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file
from scaleout_helpers import environment, make_photo_folder, pretrain_args, run_kamim

from kamim.train.checkpoint import load_checkpoint


def _losses(run):  # noqa: ANN001, ANN202
    return [json.loads(line)["loss"] for line in (run / "metrics.jsonl").read_text().splitlines()]


def _max_difference(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    assert a.keys() == b.keys()
    return max(float((a[k].float() - b[k].float()).abs().max()) for k in a)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):  # noqa: ANN001, ANN201
    """One process with batch 4; two ranks with batch 1 x 2 accumulation (DDP's no_sync path) stopped after
    step 2, then resumed under torchrun."""
    tmp = tmp_path_factory.mktemp("ddp")
    data = make_photo_folder(tmp / "data", count=16)
    common = ("--steps", "4", "--save-every", "2")
    single = run_kamim(pretrain_args(data, tmp / "single", *common, "--batch-size", "4"), tmp)
    ddp = (*common, "--batch-size", "1", "--accumulation", "2")
    first = run_kamim(pretrain_args(data, tmp / "ddp", *ddp, "--stop-after", "2"), tmp, nproc=2)
    ddp_step2 = load_checkpoint(tmp / "ddp" / "checkpoints" / "step-0000002.pt")
    resumed = run_kamim(pretrain_args(data, tmp / "ddp", *ddp, "--resume"), tmp, nproc=2)
    return {"tmp": tmp, "single": single, "first": first, "resumed": resumed, "ddp_step2": ddp_step2}


def test_two_ranks_equal_one_process_with_the_same_global_batch(runs):  # noqa: ANN001
    tmp = runs["tmp"]
    single_step2 = load_checkpoint(tmp / "single" / "checkpoints" / "step-0000002.pt")
    assert _max_difference(runs["ddp_step2"]["model"], single_step2["model"]) < 1e-5
    # the logged loss is the global batch's (the mean over ranks), not rank 0's half
    assert _losses(tmp / "ddp")[:2] == pytest.approx(_losses(tmp / "single")[:2], rel=1e-5)
    assert "effective batch 4 = 1 x 2 accumulation x 2 rank(s)" in runs["first"].stderr


def test_ddp_resume_finishes_like_the_uninterrupted_run(runs):  # noqa: ANN001
    tmp = runs["tmp"]
    assert "resuming" in runs["resumed"].stderr and "from step 2" in runs["resumed"].stderr
    final_ddp, final_single = load_file(tmp / "ddp" / "model.safetensors"), load_file(tmp / "single" / "model.safetensors")
    assert _max_difference(final_ddp, final_single) < 1e-5
    assert _losses(tmp / "ddp") == pytest.approx(_losses(tmp / "single"), rel=1e-5)


def test_only_rank_zero_writes_and_prints(runs):  # noqa: ANN001
    tmp = runs["tmp"]
    run = tmp / "ddp"
    assert [json.loads(line)["step"] for line in (run / "metrics.jsonl").read_text().splitlines()] == [1, 2, 3, 4]
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["step-0000002.pt", "step-0000004.pt"]
    assert not list(run.rglob("*.tmp*")) and not (tmp / "runs").exists()
    for result in (runs["first"], runs["resumed"]):
        assert result.stderr.count("PretrainConfig") == 1
        assert result.stderr.count("effective batch") == 1


def test_resuming_with_another_world_size_is_refused(runs):  # noqa: ANN001
    tmp = runs["tmp"]
    args = pretrain_args(tmp / "data", tmp / "ddp", "--steps", "4", "--save-every", "2", "--batch-size", "1",
                         "--accumulation", "2", "--resume")
    result = subprocess.run([sys.executable, "-m", "kamim", *args], cwd=tmp, env=environment(tmp),
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 2 and "world size (processes): the run had 2, now 1" in result.stderr
    assert "Traceback" not in result.stderr
