"""`kamim analyze` end to end on two tiny randomly initialised exports and a tiny image folder."""

import json
import math

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image

from kamim.cli import main
from kamim.train.checkpoint import export_model
from kamim.train.models import build_model

TINY = {"depth": 2, "embed_dim": 32, "num_heads": 2}


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("analyze")
    rng = np.random.default_rng(0)
    for cls in ("stripes", "blobs"):
        folder = root / "data" / "val" / cls
        folder.mkdir(parents=True)
        for i in range(3):
            pixels = rng.integers(0, 255, (40 + 8 * i, 48, 3), dtype=np.uint8)
            if cls == "stripes":
                pixels[:, ::4] = 255
            Image.fromarray(pixels).save(folder / f"{i}.png")
    runs = []
    for seed in (0, 1):
        torch.manual_seed(seed)
        model = build_model("vit_t", img_size=64, **TINY)
        run = root / f"run{seed}"
        export_model(model, {"model": "vit_t", "img_size": 64, "overrides": TINY}, run)
        runs.append(run)
    return root, runs


def analyze(setup, analysis, *extra):
    root, runs = setup
    out = root / "out"
    args = ["analyze", analysis, "--checkpoint", str(runs[0]), "--checkpoint", str(runs[1]),
            "--label", "SimMIM", "--label", "KAMIM", "--dataset", "folder", "--data-root", str(root / "data"),
            "--num-images", "6", "--batch-size", "4", "--device", "cpu", "--out", str(out), *extra]
    result = CliRunner().invoke(main, args)
    return result, out


def test_reconstruction_writes_metrics_and_grid(setup):
    result, out = analyze(setup, "reconstruction", "--grid-images", "2")
    assert result.exit_code == 0, result.output
    data = json.loads((out / "reconstruction.json").read_text())
    assert set(data["results"]) == {"SimMIM", "KAMIM"}
    for metrics in data["results"].values():
        assert all(math.isfinite(metrics[k]) for k in ("psnr", "ssim", "psnr_masked", "psnr_per_image"))
        assert -1 <= metrics["ssim"] <= 1
    assert data["config"]["mask_ratio"] == 0.4
    with Image.open(out / "reconstruction.png") as png:
        assert png.width > 300 and png.height > 200
    # two different random models reconstruct differently
    assert data["results"]["SimMIM"]["psnr"] != data["results"]["KAMIM"]["psnr"]


def test_attention_distance_per_depth_and_head(setup):
    result, out = analyze(setup, "attention-distance")
    assert result.exit_code == 0, result.output
    data = json.loads((out / "attention-distance.json").read_text())
    per_head = np.array(data["results"]["KAMIM"]["per_head"])
    assert per_head.shape == (2, 2)  # depth x heads
    # a 4x4 grid of 16-px patches: every mean distance lies between 0 and the diagonal
    assert np.all((per_head > 0) & (per_head < 16 * 3 * math.sqrt(2)))
    assert (out / "attention-distance.png").stat().st_size > 10_000


@pytest.mark.parametrize(
    ("analysis", "extra", "key"),
    [("attention-nmi", (), "mean"), ("fourier", (), "delta_log_amplitude"),
     ("attention-maps", ("--query", "1", "2"), "maps"), ("pca", ("--image-index", "3"), "centroid_distance"),
     ("tsne", ("--perplexity", "5", "--max-iter", "250", "--num-images", "4"), "points")],
)
def test_other_analyses_run(setup, analysis, extra, key):
    result, out = analyze(setup, analysis, *extra)
    assert result.exit_code == 0, result.output
    data = json.loads((out / f"{analysis}.json").read_text())
    assert key in data["results"]["SimMIM"]
    assert np.all(np.isfinite(np.asarray(data["results"]["SimMIM"][key], dtype=float)))
    assert (out / f"{analysis}.png").is_file()


def test_user_errors_are_one_line(setup):
    root, runs = setup
    result = CliRunner().invoke(main, ["analyze", "fourier", "--checkpoint", str(runs[0]), "--label", "a",
                                       "--label", "b", "--dataset", "folder", "--data-root", str(root / "data")])
    assert result.exit_code == 2 and "--label" in result.output
    result, _ = analyze(setup, "attention-maps", "--query", "9", "0")
    assert result.exit_code == 2 and "outside" in result.output
    result = CliRunner().invoke(main, ["analyze", "fourier", "--checkpoint", str(root / "missing")])
    assert result.exit_code == 2 and "does not exist" in result.output
