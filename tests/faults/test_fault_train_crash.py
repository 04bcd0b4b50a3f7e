"""kill -9 during pretraining before, during and after a checkpoint write: resume equals an uninterrupted run;
torn or planted partial checkpoints are never taken for complete ones."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from fault_child import run_child
from fault_files import make_folder
from safetensors.torch import load_file

from kamim.errors import UserError
from kamim.preprocess.build import CacheConfig, build_cache
from kamim.train.checkpoint import latest_checkpoint, load_checkpoint
from kamim.train.pretrain import PretrainConfig, run_pretrain

pytestmark = pytest.mark.fault
STEPS = 6


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = make_folder(tmp_path_factory.mktemp("train") / "data", per_class=4, size=96)
    cache = build_cache(CacheConfig(dataset="folder", data_root=str(root), detector="fast", detect_size=128,
                                    workers=1, out=str(root / "cache.zarr")))
    return root, cache


def tiny(data, out, **changes) -> PretrainConfig:
    root, cache = data
    base = {"model": "vit_t", "overrides": {"depth": 1, "embed_dim": 32, "num_heads": 2}, "dataset": "folder",
            "data_root": str(root), "cache": str(cache), "detect_size": 128, "device": "cpu", "out": str(out),
            "batch_size": 2, "workers": 0, "grid_every": 0, "save_every": 2, "log_every": 1, "steps": STEPS,
            "keep_checkpoints": 2}
    return PretrainConfig(**{**base, **changes})


def losses(run_dir) -> list[float]:
    return [json.loads(line)["loss"] for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def same_export(a, b) -> bool:
    x, y = load_file(str(a / "model.safetensors")), load_file(str(b / "model.safetensors"))
    return x.keys() == y.keys() and all(torch.equal(x[k], y[k]) for k in x)


@pytest.fixture(scope="module")
def whole(data, tmp_path_factory):
    return run_pretrain(tiny(data, tmp_path_factory.mktemp("whole") / "run"))


CRASHES = [  # (point, pattern, nth, the newest complete checkpoint the resume must start from)
    ("call", "kamim.train.engine:micro_batch", 4, 2),  # mid step 4, before checkpoint 4 is written
    ("before-replace", "step-0000004.pt", 1, 2),  # checkpoint 4 fully in its temp file, not yet renamed
    ("after-replace", "step-0000004.pt", 1, 4),  # checkpoint 4 landed, old ones not yet pruned
    ("before-replace", "model.safetensors", 1, 6),  # every step done, final export not yet renamed
]


@pytest.mark.parametrize(("point", "pattern", "nth", "resume_from"), CRASHES)
def test_kill_during_training_then_resume_equals_uninterrupted(data, whole, tmp_path, point, pattern, nth,
                                                               resume_from):
    run = tmp_path / "run"
    assert run_child(run_pretrain, tiny(data, run), point=point, pattern=pattern, nth=nth) == -9
    newest = latest_checkpoint(run)
    assert newest is not None and load_checkpoint(newest)["step"] == resume_from
    assert not (run / "model.safetensors").exists()
    run_pretrain(tiny(data, run, resume=True))
    assert losses(run) == losses(whole)
    assert same_export(run, whole)
    assert not list(run.rglob("*.tmp*")), "a killed write's temp file was left behind"


def test_planted_torn_checkpoints_are_never_resumed_from(data, whole, tmp_path):
    """A torn newest .pt (e.g. copied half-way) is reported by name; a torn temp is ignored."""
    run = run_pretrain(tiny(data, tmp_path / "run", stop_after=4))
    good = latest_checkpoint(run)
    assert good.name == "step-0000004.pt"
    (good.parent / ".step-0000006.pt.tmp999").write_bytes(good.read_bytes()[:1000])  # a torn temp: ignored
    torn = good.parent / "step-0000006.pt"
    torn.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    with pytest.raises(UserError, match="step-0000006.pt"):
        run_pretrain(tiny(data, run, resume=True))
    assert load_checkpoint(good)["step"] == 4  # the good one is untouched
    torn.unlink()  # what the message says to do
    run_pretrain(tiny(data, run, resume=True))
    assert losses(run) == losses(whole) and same_export(run, whole)


def test_resume_with_a_zero_byte_newest_checkpoint_names_it(data, tmp_path):
    run = tmp_path / "run"
    run_pretrain(tiny(data, run, stop_after=2))
    empty = run / "checkpoints" / "step-0000004.pt"
    empty.write_bytes(b"")
    with pytest.raises(UserError, match="step-0000004.pt"):
        run_pretrain(tiny(data, run, resume=True))
    shutil.rmtree(run)
