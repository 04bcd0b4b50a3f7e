"""``--keypoints device``: FAST on the batch where the model runs gives the online mode's run exactly."""

from __future__ import annotations

import json

import pytest
import torch
from click.testing import CliRunner
from train_helpers import TINY_VIT, TINY_VIT_OVERRIDES, make_folder

from kamim.datasets import open_dataset
from kamim.errors import UserError
from kamim.train.data import PretrainSamples, collate
from kamim.train.engine import LossSpec, batch_weights
from kamim.train.pretrain import PretrainConfig, run_pretrain
from kamim.train.pretrain_cli import pretrain


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    return make_folder(tmp_path_factory.mktemp("data"), count=6)


def tiny(root, out, **changes) -> PretrainConfig:
    base = {"model": "vit_t", "overrides": dict(TINY_VIT_OVERRIDES), "dataset": "folder", "data_root": str(root),
            "device": "cpu", "out": str(out), "batch_size": 3, "workers": 0, "grid_every": 0, "save_every": 100,
            "log_every": 1, "steps": 2, "seed": 5}
    return PretrainConfig(**{**base, **changes})


def losses(run_dir) -> list[float]:
    return [json.loads(line)["loss"] for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def test_device_samples_carry_no_keypoints_and_their_weights_equal_online(root):
    dataset = open_dataset("folder", "train", str(root))
    device = PretrainSamples(dataset, "device", 16, seed=3)
    online = PretrainSamples(dataset, "online", 16, seed=3)
    batch = collate([device[(1, i)] for i in range(6)])
    reference = collate([online[(1, i)] for i in range(6)])
    assert set(batch) == {"image", "mask"}  # like simmim: the loader does no keypoint work
    assert torch.equal(batch["image"], reference["image"]) and torch.equal(batch["mask"], reference["mask"])
    for gray in ("bgr", "rgb"):
        if gray == "rgb":
            reference = collate([PretrainSamples(dataset, "online", 16, seed=3, gray="rgb")[(1, i)] for i in range(6)])
        ours = batch_weights(batch, LossSpec("kamim", 8, 0.25, 192, 16, keypoints="device", gray=gray))
        theirs = batch_weights(reference, LossSpec("kamim", 8, 0.25, 192, 16, keypoints="online", gray=gray))
        assert torch.equal(ours, theirs) and float(ours.max()) > 1.0  # real weighting, bit for bit


def test_device_run_has_the_online_runs_losses(root, tmp_path):
    device = run_pretrain(tiny(root, tmp_path / "device", keypoints="device"))
    online = run_pretrain(tiny(root, tmp_path / "online", keypoints="online"))
    simmim = run_pretrain(tiny(root, tmp_path / "simmim", method="simmim"))
    assert len(losses(device)) == 2 and losses(device) == losses(online)
    assert losses(device)[0] > losses(simmim)[0]  # the weights (>= 1) were applied
    assert json.loads((device / "config.json").read_text())["keypoints"] == "device"


def test_device_mode_is_fast_only(root, tmp_path):
    for detector in ("sift", "orb"):
        with pytest.raises(UserError, match=f"--keypoints device detects FAST only, not {detector}"):
            run_pretrain(tiny(root, tmp_path / detector, keypoints="device", detector=detector))
    result = CliRunner().invoke(pretrain, ["--keypoints", "device", "--detector", "sift", "--dataset", "folder",
                                           "--data-root", str(root), "--override", TINY_VIT[0], "--steps", "1",
                                           "--out", str(tmp_path / "cli")])
    assert result.exit_code == 2 and "FAST only" in result.output
    assert not (tmp_path / "cli").exists()  # nothing half-written
