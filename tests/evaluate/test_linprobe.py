"""Linear probe: learns a separable toy task, picks the right block, caches features, refuses bad input."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image

from kamim.cli import main
from kamim.errors import UserError
from kamim.evaluate.features import layer_features
from kamim.evaluate.linprobe import LinprobeConfig, run_linprobe
from kamim.evaluate.runs import latest_run
from kamim.train.checkpoint import export_model
from kamim.train.models import build_model

TINY_VIT = {"depth": 2, "embed_dim": 32, "num_heads": 2}


def make_toy_folder(root: Path, per_class: dict[str, int]) -> Path:
    """root/{train,val}/{reddish,bluish}/*.png: two classes told apart by colour, with noise."""
    rng = np.random.default_rng(0)
    for split, count in per_class.items():
        for label, name in enumerate(("bluish", "reddish")):
            folder = root / split / name
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(count):
                image = rng.integers(0, 120, size=(40, 40, 3))
                image[..., 0 if label else 2] += 120
                Image.fromarray(image.astype(np.uint8)).save(folder / f"{i:03d}.png")
    return root


def make_tiny_run(run_dir: Path, dataset: str = "folder", seed: int = 0) -> Path:
    torch.manual_seed(seed)
    model = build_model("vit_t", **TINY_VIT)
    export_model(model, {"model": "vit_t", "img_size": 192, "overrides": TINY_VIT}, run_dir)
    (run_dir / "config.json").write_text(json.dumps({"dataset": dataset}))
    return run_dir


@pytest.fixture(scope="module")
def toy(tmp_path_factory) -> tuple[Path, Path]:
    base = tmp_path_factory.mktemp("linprobe")
    return make_toy_folder(base / "data", {"train": 24, "val": 12}), make_tiny_run(base / "runs" / "tiny")


def probe_config(data: Path, run: Path, **changes) -> LinprobeConfig:
    defaults = dict(checkpoint=str(run), dataset="folder", data_root=str(data), layer=1, epochs=30,
                    warmup_epochs=2, batch_size=16, lr=1e-2, workers=0, device="cpu", feature_batch_size=16)
    return LinprobeConfig(**{**defaults, **changes})


def test_fast_probe_learns_toy_task_and_reuses_features(toy, capsys):
    data, run = toy
    result = run_linprobe(probe_config(data, run))
    assert result["top1"] >= 90.0, result  # chance is 50%
    assert result["val_count"] == 24 and result["layer"] == 1
    saved = json.loads((run / "linprobe" / "linprobe.json").read_text())
    assert saved["top1"] == result["top1"]
    assert (run / "linprobe" / "linprobe_config.json").is_file()
    cached = sorted((run / "linprobe" / "features").glob("*.safetensors"))
    assert len(cached) == 2
    stamps = [os.stat(p).st_mtime_ns for p in cached]
    time.sleep(0.01)
    again = run_linprobe(probe_config(data, run, bn=True))
    assert "reusing train features" in capsys.readouterr().err  # progress goes to stderr, results to stdout
    assert [os.stat(p).st_mtime_ns for p in cached] == stamps
    assert again["timing"]["features_reused"] is True and again["top1"] >= 90.0
    # another layer is another key: extracted anew, never confused with layer 1
    run_linprobe(probe_config(data, run, layer=2, epochs=1))
    assert len(list((run / "linprobe" / "features").glob("*.safetensors"))) == 4


def test_original_recipe_runs_end_to_end(toy, tmp_path):
    data, run = toy
    result = run_linprobe(probe_config(data, run, recipe="original", epochs=2, warmup_epochs=1, out=str(tmp_path)))
    assert result["recipe"] == "original" and 0.0 <= result["top1"] <= 100.0
    assert result["top5"] is None  # two classes: top-5 would be 100% by construction, so it is not reported
    assert json.loads((tmp_path / "linprobe_config.json").read_text())["resize"] == "squash"


def manual_vit_block(encoder, images, k):
    x = encoder.norm_pre(encoder._pos_embed(encoder.patch_embed(images)))
    for block in encoder.blocks[:k]:
        x = block(x)
    return x


@pytest.mark.parametrize("k", [1, 2, 3])
def test_vit_layer_selection_matches_manual_forward(k):
    torch.manual_seed(0)
    encoder = build_model("vit_t", depth=3, embed_dim=32, num_heads=2).encoder.eval()
    images = torch.randn(2, 3, 192, 192)
    tokens = manual_vit_block(encoder, images, k)
    torch.testing.assert_close(layer_features(encoder, images, k, "avg"), tokens[:, 1:].mean(1))
    torch.testing.assert_close(layer_features(encoder, images, k, "cls"), tokens[:, 0])
    if k < 3:  # a neighbouring block gives different features, so the comparison can fail
        other = manual_vit_block(encoder, images, k + 1)[:, 1:].mean(1)
        assert not torch.allclose(layer_features(encoder, images, k, "avg"), other)


def test_swin_layer_selection_is_the_unnormed_stage_output():
    torch.manual_seed(0)
    encoder = build_model("swin_t", depths=(1, 1), embed_dim=16, num_heads=(1, 2)).encoder.eval()
    images = torch.randn(2, 3, 192, 192)
    x = encoder.patch_embed(images)
    for k, stage in enumerate(encoder.layers, start=1):
        x = stage(x)
        torch.testing.assert_close(layer_features(encoder, images, k, "avg"), x.mean(dim=(1, 2)))


def test_bad_checkpoint_is_a_clear_error(toy, tmp_path):
    data, _ = toy
    garbage = tmp_path / "model.pt"
    garbage.write_bytes(b"not a checkpoint")
    with pytest.raises(UserError, match="unreadable"):
        run_linprobe(probe_config(data, garbage))
    empty = tmp_path / "empty-run"
    empty.mkdir()
    result = CliRunner().invoke(main, ["linprobe", "--checkpoint", str(empty), "--dataset", "folder",
                                       "--data-root", str(data)])
    assert result.exit_code == 2 and "run dir" in result.output and "Traceback" not in result.output
    with pytest.raises(UserError, match="--layer 5"):
        run_linprobe(probe_config(data, toy[1], layer=5, out=str(tmp_path / "o")))
    with pytest.raises(UserError, match="exactly one"):
        run_linprobe(probe_config(data, toy[1], latest=True))


def test_latest_picks_newest_run_of_the_same_dataset(tmp_path):
    old = make_tiny_run(tmp_path / "old")
    newer_other = make_tiny_run(tmp_path / "other", dataset="photos")
    new = make_tiny_run(tmp_path / "new")
    past = time.time() - 100
    os.utime(old / "model.safetensors", (past, past))
    assert latest_run("folder", tmp_path) == new
    assert latest_run("photos", tmp_path) == newer_other
    with pytest.raises(UserError, match="cifar10"):
        latest_run("cifar10", tmp_path)
