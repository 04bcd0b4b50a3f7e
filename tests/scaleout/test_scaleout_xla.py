"""The XLA path (torch_xla on PJRT's CPU client; `make test-xla` runs these in .venv-xla): device ops
equal the CPU, and pretraining through torch_xla's launcher runs steps, checkpoints and resumes."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch

pytest.importorskip("torch_xla", reason="needs torch_xla (make test-xla builds .venv-xla with torch 2.9.0)")

from safetensors.torch import load_file  # noqa: E402
from scaleout_helpers import environment, make_photo_folder, pretrain_args, run_kamim  # noqa: E402

from kamim.preprocess.raster import ring_maps_torch  # noqa: E402
from kamim.train.device import resolve_device  # noqa: E402
from kamim.train.models import build_model  # noqa: E402

pytestmark = pytest.mark.xla


@pytest.fixture(scope="module")
def xla():  # noqa: ANN201
    os.environ.setdefault("PJRT_DEVICE", "CPU")
    return resolve_device("xla", "fp32")


def test_ring_maps_on_xla_equal_the_cpu(xla):  # noqa: ANN001
    generator = torch.Generator().manual_seed(0)
    points = torch.rand(3, 128, 2, generator=generator) * 204 - 6  # on, near and beyond every border
    counts = torch.tensor([128, 50, 0])
    on_cpu = ring_maps_torch(points, counts, 192)
    on_xla = ring_maps_torch(points.to(xla.device), counts.to(xla.device), 192).cpu()
    assert on_cpu.sum() > 1000 and torch.equal(on_xla, on_cpu)


def test_model_with_pixel_shuffle_head_matches_the_cpu(xla):  # noqa: ANN001
    torch.manual_seed(0)
    model = build_model("vit_t", 64, depth=1, embed_dim=32, num_heads=2)
    images, mask = torch.randn(2, 3, 64, 64), (torch.rand(2, 4, 4) > 0.5).long()
    recon = model(images, mask)
    recon.abs().mean().backward()
    grads = {name: p.grad.clone() for name, p in model.named_parameters()}
    model.zero_grad()
    model.to(xla.device)
    recon_xla = model(images.to(xla.device), mask.to(xla.device))
    recon_xla.abs().mean().backward()
    assert recon_xla.abs().sum().item() > 0  # old torch_xla returned zeros from PixelShuffle (#5886)
    assert torch.allclose(recon_xla.cpu(), recon, atol=1e-5)
    for name, p in model.named_parameters():
        assert torch.allclose(p.grad.cpu(), grads[name], atol=1e-5), name
    bf16 = resolve_device("xla", "bf16")
    with bf16.autocast():
        half = model(images.to(xla.device), mask.to(xla.device))
    assert half.dtype == torch.bfloat16 and torch.allclose(half.float().cpu(), recon, atol=0.05)


def test_pretrain_through_the_launcher_checkpoints_and_resumes(tmp_path):  # noqa: ANN001
    data = make_photo_folder(tmp_path / "data", count=8)
    common = ("--steps", "4", "--save-every", "2", "--batch-size", "2", "--precision", "fp32")
    run_kamim(pretrain_args(data, tmp_path / "cpu", *common, "--device", "cpu"), tmp_path)
    launcher = [sys.executable, "-m", "kamim.train.xla_launch",
                *pretrain_args(data, tmp_path / "xla", *common, "--stop-after", "2")]
    first = subprocess.run(launcher, cwd=tmp_path, env=environment(tmp_path), capture_output=True, text=True,
                           timeout=400)
    assert first.returncode == 0, first.stderr[-3000:]
    assert "on xla (fp32)" in first.stderr
    checkpoints = tmp_path / "xla" / "checkpoints"
    assert [p.name for p in checkpoints.iterdir()] == ["step-0000002.pt"]  # written from the host
    run_kamim(pretrain_args(data, tmp_path / "xla", *common, "--device", "xla", "--resume"), tmp_path,
              timeout=400)
    records = [json.loads(line) for line in (tmp_path / "xla" / "metrics.jsonl").read_text().splitlines()]
    expected = [json.loads(line) for line in (tmp_path / "cpu" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [1, 2, 3, 4]
    assert [r["loss"] for r in records] == pytest.approx([r["loss"] for r in expected], rel=1e-4)
    on_xla, on_cpu = load_file(tmp_path / "xla" / "model.safetensors"), load_file(tmp_path / "cpu" / "model.safetensors")
    assert max(float((on_xla[k] - on_cpu[k]).abs().max()) for k in on_cpu) < 1e-4


def test_launcher_reports_a_user_error_as_one_line(tmp_path):  # noqa: ANN001
    result = subprocess.run([sys.executable, "-m", "kamim.train.xla_launch", "pretrain", "--model", "nope"],
                            cwd=tmp_path, env=environment(tmp_path), capture_output=True, text=True, timeout=300)
    assert result.returncode == 2 and "--model nope: unknown model" in result.stderr
    assert "Traceback" not in result.stderr


def test_a_batch_of_cache_codes_maps_into_its_crops_on_xla_as_on_the_cpu(xla):  # noqa: ANN001
    import numpy as np

    from kamim.train.augment import sample_crop, seeded
    from kamim.train.crop_codes import FAR, batch_points, code_crop, crop_meta

    rng = np.random.default_rng(0)
    codes = rng.integers(0, 400 * 16, (4, 2, 256)).astype(np.uint16)
    codes[0, 0, :8] = 2**16 - np.arange(1, 9)  # codes with the top bit set travel as negative int16
    crops = []
    for k in range(4):
        with seeded(k):
            crops.append(code_crop(16, 0.5, 0.5, sample_crop(800, 900)))
    batch = {"codes": codes.view(np.int16), "code_meta": crop_meta(crops, [256, 100, 0, 256])}  # as collate makes them
    on_cpu, _ = batch_points(batch)
    on_xla, _ = batch_points({k: torch.as_tensor(v).to(xla.device) for k, v in batch.items()})
    on_xla = on_xla.cpu()
    kept = on_cpu[..., 0] > FAR / 2
    assert 100 < int(kept.sum()) < kept.numel() and torch.equal(on_xla[..., 0] > FAR / 2, kept)
    assert torch.allclose(on_xla, on_cpu, atol=1e-4)


def test_a_webdataset_batch_moves_through_its_crops_on_xla_as_crop_points_does(xla):  # noqa: ANN001
    """XLA fuses the step's multiply and subtract (a fused multiply-add, one rounding where crop_points has
    two), so a coordinate may differ in its last bit (~1e-5 px); the CPU and CUDA (eager, one kernel per
    op) give crop_points' bits exactly (tests/train/test_crop_codes.py)."""
    import numpy as np

    from kamim.train.augment import crop_points, sample_crop, seeded
    from kamim.train.crop_codes import FAR, batch_points, crop_meta, point_crop

    rng = np.random.default_rng(1)
    points = (rng.uniform(0, 1, (4, 256, 2)) * [900, 800]).astype(np.float32)
    crops = []
    for k in range(4):
        with seeded(k):
            crops.append(sample_crop(800, 900))
    batch = {"source_points": points, "source_meta": crop_meta([point_crop(c) for c in crops], [256, 100, 0, 256])}
    on_xla, counts = batch_points({k: torch.as_tensor(v).to(xla.device) for k, v in batch.items()})
    on_xla = on_xla.cpu().numpy()
    assert counts.cpu().tolist() == [256, 100, 0, 256]
    exact = total = 0
    for row, (crop, count) in enumerate(zip(crops, [256, 100, 0, 256], strict=True)):
        mapped, reference = on_xla[row, :count], crop_points(points[row, :count], crop)
        mapped = mapped[mapped[:, 0] > FAR / 2]
        assert mapped.shape == reference.shape  # the same points kept (none sits within 1e-5 px of an edge)
        np.testing.assert_allclose(mapped, reference, rtol=0, atol=1e-4)
        exact, total = exact + int((mapped == reference).sum()), total + reference.size
    assert total > 500 and exact >= 0.9 * total  # most coordinates agree to the bit
