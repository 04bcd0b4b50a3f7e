"""Bad images at the training and `kamim weights` entry points.

Online pretraining (detection in the loader, no cache to skip bad files) must not die on a bad file: the
sample is replaced by the next readable one, deterministically. `kamim weights BAD` is one line naming
the file, exit 2, and writes nothing; odd-but-valid images work.
"""

from __future__ import annotations

import contextlib
import json
import math

import numpy as np
import pytest
from fault_files import add_files, assert_one_line_error, bad_images, invoke_kamim, make_folder, odd_images

from kamim.train.pretrain import PretrainConfig, run_pretrain

pytestmark = pytest.mark.fault


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = make_folder(tmp_path_factory.mktemp("entry") / "data", per_class=3, size=96)
    add_files(root / "train" / "c0", {n: b for n, (b, _) in bad_images().items()})  # 7 bad, 6 good
    return root


@pytest.mark.parametrize("workers", [0, 2])
def test_online_pretraining_goes_on_past_bad_images(data, tmp_path, workers):
    cfg = PretrainConfig(model="vit_t", overrides={"depth": 1, "embed_dim": 32, "num_heads": 2}, dataset="folder",
                         data_root=str(data), keypoints="online", detector="fast", device="cpu",
                         out=str(tmp_path / "run"), batch_size=4, workers=workers, steps=4, grid_every=0,
                         save_every=4)
    with pytest.warns(UserWarning, match="bad sample") if workers == 0 else contextlib.nullcontext():
        run = run_pretrain(cfg)  # 13 files, 7 bad: most batches hold a replaced sample
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [1, 2, 3, 4]
    assert all(math.isfinite(r["loss"]) for r in records)
    assert (run / "model.safetensors").is_file()


@pytest.mark.parametrize("name", sorted(bad_images()))
def test_weights_on_a_bad_image_is_one_line_naming_it(tmp_path, name):
    path = tmp_path / name
    path.write_bytes(bad_images()[name][0])
    out = tmp_path / "w"
    assert_one_line_error(invoke_kamim("weights", str(path), "--out", str(out)), name, bad_images()[name][1])
    assert not out.exists()


def test_weights_on_a_missing_file_and_a_directory(tmp_path):
    assert_one_line_error(invoke_kamim("weights", str(tmp_path / "nope.jpg"), "--out", str(tmp_path / "w")),
                          "nope.jpg")
    assert invoke_kamim("weights", str(tmp_path), "--out", str(tmp_path / "w")).returncode == 2


@pytest.mark.parametrize("name", sorted(odd_images()))
def test_weights_on_odd_but_valid_images(tmp_path, name):
    path = tmp_path / name
    path.write_bytes(odd_images()[name])
    out = tmp_path / "w"
    proc = invoke_kamim("weights", str(path), "--out", str(out), "--weight-ps", "16")
    assert proc.returncode == 0, proc.stderr[-2000:]
    weights = np.load(out / "weights.npy")
    assert weights.shape == (12, 12) and np.isfinite(weights).all() and weights.min() == pytest.approx(1.0)


def test_online_pretraining_on_only_bad_images_is_one_line(tmp_path):
    root = tmp_path / "data"
    add_files(root / "train" / "c0", {n: b for n, (b, _) in bad_images().items()})
    args = ["pretrain", "--dataset", "folder", "--data-root", str(root), "--keypoints", "online", "--device", "cpu",
            "--override", "depth=1", "--override", "embed_dim=32", "--override", "num_heads=2", "--batch-size", "2",
            "--workers", "0", "--steps", "2", "--out", str(tmp_path / "run")]
    assert_one_line_error(invoke_kamim(*args), "no readable image")
    assert not (tmp_path / "run" / "checkpoints").exists()
