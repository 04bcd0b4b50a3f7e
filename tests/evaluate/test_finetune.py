"""kamim finetune on a tiny run: trains end to end, layer decay scales the LR by depth, writes JSON."""

from __future__ import annotations

import json

import torch
from test_linprobe import make_tiny_run, make_toy_folder

from kamim.evaluate.finetune import Classifier, FinetuneConfig, param_groups, run_finetune
from kamim.train.checkpoint import load_pretrained
from kamim.train.models import build_model


def test_layer_decay_scales_lr_by_depth_and_skips_mim_parts():
    encoder = build_model("vit_t", depth=3, embed_dim=32, num_heads=2).encoder
    model = Classifier(encoder, num_classes=4)
    groups = param_groups(model, weight_decay=0.05, layer_decay=0.5)
    scale_of = {id(p): g["lr_scale"] for g in groups for p in g["params"]}
    depth_scales = [scale_of[id(encoder.patch_embed.proj.weight)],
                    *(scale_of[id(block.attn.qkv.weight)] for block in encoder.blocks)]
    # each step towards the input multiplies the LR by the decay (timm's grouping: last block at 1.0)
    assert depth_scales == [0.5**3, 0.5**2, 0.5**1, 1.0]
    assert scale_of[id(encoder.cls_token)] == depth_scales[0]
    assert scale_of[id(model.head.weight)] == scale_of[id(encoder.norm.weight)] == 1.0
    assert len(scale_of) == sum(1 for _ in model.parameters())  # every parameter trains, once


def test_finetune_tiny_run_trains_and_writes_results(tmp_path):
    data = make_toy_folder(tmp_path / "data", {"train": 8, "val": 4})
    run = make_tiny_run(tmp_path / "run")
    before = load_pretrained(run)[0].encoder.blocks[0].attn.qkv.weight.clone()
    result = run_finetune(FinetuneConfig(checkpoint=str(run), dataset="folder", data_root=str(data), epochs=2,
                                         warmup_epochs=1, batch_size=8, lr=1e-3, workers=0, device="cpu",
                                         eval_batch_size=8))
    assert 0.0 <= result["top1"] <= 100.0 and result["top5"] is None and len(result["history"]) == 2
    saved = json.loads((run / "finetune" / "finetune.json").read_text())
    assert saved["top1"] == result["top1"] and saved["layer_decay"] == 0.65
    from safetensors.torch import load_file

    after = load_file(str(run / "finetune" / "finetuned.safetensors"))["encoder.blocks.0.attn.qkv.weight"]
    assert not torch.allclose(before, after)  # the encoder itself was trained, not only the head
