"""kamim finetune under torchrun (gloo): every rank trains its DistributedSampler share, rank 0 writes."""

from __future__ import annotations

import json

import torch
from safetensors.torch import load_file
from scaleout_helpers import make_photo_folder, run_kamim

from kamim.train.checkpoint import export_model
from kamim.train.models import build_model


def test_two_rank_finetune_trains_and_writes_once(tmp_path):  # noqa: ANN001
    data = make_photo_folder(tmp_path / "data", count=8)
    make_photo_folder(tmp_path / "data", count=4, split="val")
    torch.manual_seed(0)
    model = build_model("vit_t", depth=1, embed_dim=32, num_heads=2)
    export_model(model, {"model": "vit_t", "overrides": {"depth": 1, "embed_dim": 32, "num_heads": 2},
                         "img_size": 192}, tmp_path / "run")
    out = tmp_path / "finetune"
    result = run_kamim(["finetune", "--checkpoint", str(tmp_path / "run"), "--dataset", "folder", "--data-root",
                        str(data), "--epochs", "2", "--warmup-epochs", "1", "--batch-size", "2", "--mixup", "0",
                        "--lr", "1e-3", "--workers", "0", "--device", "cpu", "--eval-batch-size", "4",
                        "--out", str(out)], tmp_path, nproc=2)
    saved = json.loads((out / "finetune.json").read_text())
    assert len(saved["history"]) == 2 and 0.0 <= saved["top1"] <= 100.0
    assert result.stderr.count("FinetuneConfig") == 1 and result.stdout.count("finetune: top-1") == 1  # config: stderr
    before = model.encoder.blocks[0].attn.qkv.weight
    after = load_file(str(out / "finetuned.safetensors"))["encoder.blocks.0.attn.qkv.weight"]
    assert not torch.allclose(before, after)
    assert sorted(p.name for p in out.iterdir()) == ["checkpoints", "finetune.json", "finetune_config.json",
                                                         "finetuned.safetensors"]
