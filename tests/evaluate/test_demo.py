"""The demo: stage bookkeeping, idempotence check, report contents, and one tiny end-to-end run."""

import json

import numpy as np
import pytest
from PIL import Image

from kamim.demo import Demo, DemoConfig, Stage, available
from kamim.demo_report import write_report

TINY = ("depth=1", "embed_dim=32", "num_heads=2")


def test_available_knows_real_and_missing_verbs():
    assert available("analyze")
    assert not available("no-such-verb")


def test_missing_command_is_reported_and_the_demo_goes_on(tmp_path, capsys):
    demo = Demo(DemoConfig(out=str(tmp_path)))
    stage = demo.header("x")
    assert demo.kamim(stage, "no-such-verb", log="x") is False
    assert stage.status == "not yet available"
    assert "not yet available: `kamim no-such-verb`" in capsys.readouterr().out


def test_report_tables_and_links(tmp_path):
    for method, top1, loss in (("simmim", 41.5, 0.9), ("kamim", 47.25, 3.5)):
        (tmp_path / method / "linprobe").mkdir(parents=True)
        (tmp_path / method / "linprobe" / "linprobe.json").write_text(json.dumps({"top1": top1, "top5": 90.0}))
        (tmp_path / method / "metrics.jsonl").write_text(json.dumps({"step": 1, "loss": loss}) + "\n")
    (tmp_path / "analysis").mkdir()
    results = {"SimMIM": {"psnr": 12.1, "ssim": 0.11, "psnr_masked": 11.0},
               "KAMIM": {"psnr": 12.2, "ssim": 0.12, "psnr_masked": 11.5}}
    (tmp_path / "analysis" / "reconstruction.json").write_text(json.dumps({"results": results}))
    Image.new("RGB", (8, 8)).save(tmp_path / "analysis" / "reconstruction.png")
    (tmp_path / "weights" / "image-3").mkdir(parents=True)
    Image.new("RGB", (8, 8)).save(tmp_path / "weights" / "image-3" / "weights.png")
    stages = [Stage("pretrain", "ok", 12.5), Stage("weights", "not yet available")]
    report = write_report(tmp_path, DemoConfig(out=str(tmp_path)), stages, 99.0).read_text()
    assert "| KAMIM | 3.5000 | 47.25% | 90.00% | 12.200 | 0.1200 | 11.500 |" in report
    assert "| SimMIM | 0.9000 | 41.50% |" in report
    assert "| weights | not yet available | 0.0 |" in report
    assert "(analysis/reconstruction.png)" in report and "(weights/image-3/weights.png)" in report
    assert "attention-distance.png" not in report  # only pictures that exist are linked


@pytest.mark.slow
def test_tiny_demo_end_to_end_and_rerun_reuses(tmp_path):
    rng = np.random.default_rng(0)
    data = tmp_path / "data"
    for split in ("train", "val"):
        for cls in ("a", "b"):
            (data / split / cls).mkdir(parents=True)
            for i in range(4):
                pixels = rng.integers(0, 255, (72, 80, 3), dtype=np.uint8)
                if cls == "a":
                    pixels[::6] = 0
                Image.fromarray(pixels).save(data / split / cls / f"{i}.png")
    config = DemoConfig(out=str(tmp_path / "demo"), dataset="folder", data_root=str(data), overrides=TINY,
                        steps=2, batch_size=4, workers=1, probe_layer=1, probe_epochs=3, weight_images=1,
                        recon_images=4, optional_budget_s=0.0)
    report = Demo(config).run().read_text()
    out = tmp_path / "demo"
    for path in ("simmim/model.safetensors", "kamim/model.safetensors", "kamim/linprobe/linprobe.json",
                 "analysis/reconstruction.png", "weights/image-0/weights.png", "report.md"):
        assert (out / path).is_file(), path
    assert "failed" not in report and "| KAMIM |" in report
    assert "skipped — demo already at" in report  # the optional stage respects the time budget
    # a rerun reuses both finished pretraining runs; other settings would retrain
    assert Demo(config).finished(out / "simmim") and Demo(config).finished(out / "kamim")
    assert not Demo(DemoConfig(**{**config.__dict__, "steps": 3})).finished(out / "kamim")
