"""``kamim finetune --recipe original`` runs the original's script: one AdamW group decaying every
parameter with no layer decay, no clipping for ViT (1.0 for Swin), Resize without antialias, PyTorch's
default head init; the default (kamim) recipe keeps its documented improvements; given flags win."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from safetensors.torch import load_file
from test_linprobe import make_tiny_run, make_toy_folder
from torch.nn import functional
from torch.optim.optimizer import register_optimizer_step_pre_hook
from torchvision.transforms import v2

from kamim.evaluate.cli_finetune import finetune
from kamim.evaluate.finetune import Classifier, FinetuneConfig, param_groups
from kamim.evaluate.recipe import original_train_transform, squash_eval_transform
from kamim.train.checkpoint import load_pretrained
from kamim.train.models import build_model


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    base = tmp_path_factory.mktemp("ft-recipe")
    return make_toy_folder(base / "data", {"train": 4, "val": 2}), make_tiny_run(base / "run")


def run_cli(toy, out, *extra: str) -> dict:  # noqa: ANN001
    data, run = toy
    np.random.seed(0)  # MixUp/CutMix draw from numpy: runs compared below see the same mixes
    result = CliRunner().invoke(finetune, ["--checkpoint", str(run), "--dataset", "folder", "--data-root", str(data),
                                           "--epochs", "1", "--warmup-epochs", "0", "--batch-size", "4", "--lr",
                                           "1e-2", "--workers", "0", "--device", "cpu", "--eval-batch-size", "4",
                                           "--out", str(out), *extra])
    assert result.exit_code == 0, result.output
    return json.loads((out / "finetune_config.json").read_text())


def test_recipes_resolve_to_the_documented_values():
    original, kamim = FinetuneConfig(recipe="original"), FinetuneConfig()
    assert [getattr(original.resolved("vit"), k) for k in ("layer_decay", "decay_all", "clip_grad", "antialias")] == [
        1.0, True, 0.0, False]
    assert original.resolved("swin").clip_grad == 1.0  # the original's Swin script clips, its ViT script does not
    assert [getattr(kamim.resolved("vit"), k) for k in ("layer_decay", "decay_all", "clip_grad", "antialias")] == [
        0.65, False, 1.0, True]
    given = FinetuneConfig(recipe="original", clip_grad=0.5, layer_decay=0.8).resolved("vit")
    assert (given.clip_grad, given.layer_decay, given.decay_all) == (0.5, 0.8, True)  # given flags win


def test_original_groups_decay_every_parameter_in_one_group():
    model = Classifier(build_model("vit_t", depth=2, embed_dim=32, num_heads=2).encoder, num_classes=3)
    (group,) = param_groups(model, weight_decay=0.05, layer_decay=1.0, decay_all=True)
    assert group["weight_decay"] == 0.05 and "lr_scale" not in group
    assert {id(p) for p in group["params"]} == {id(p) for p in model.parameters()}
    assert any(p.ndim == 1 for p in group["params"])  # biases and norm weights are decayed too
    kamim = param_groups(model, weight_decay=0.05, layer_decay=0.65)
    decay_of = {id(p): g["weight_decay"] for g in kamim for p in g["params"]}
    assert decay_of[id(model.encoder.blocks[0].norm1.weight)] == 0.0 == decay_of[id(model.head.bias)]
    assert len({g["lr_scale"] for g in kamim}) == 3  # layer decay: stem 0.65^2, block 1 0.65, block 2 (top) 1
    mixed = param_groups(model, weight_decay=0.05, layer_decay=0.65, decay_all=True)
    assert {g["weight_decay"] for g in mixed} == {0.05}


def test_original_transforms_resize_without_antialias():
    photo = np.random.default_rng(0).integers(0, 256, size=(400, 300, 3), dtype=np.uint8)  # noise aliases
    plain = functional.interpolate(torch.from_numpy(photo).permute(2, 0, 1)[None].float(), size=(192, 192),
                                   mode="bilinear", align_corners=False, antialias=False)[0]
    for transform in (original_train_transform(), squash_eval_transform()):
        resize = next(t for t in transform.transforms if isinstance(t, v2.Resize))
        assert resize.size == [192, 192] and resize.antialias is False
    got = squash_eval_transform()(photo)
    expected = v2.Normalize((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))(plain.round().clamp(0, 255) / 255)
    level = 1 / 255 / 0.224  # one uint8 step after normalisation: torchvision's fixed-point uint8 path
    assert (got - expected).abs().max() < 1.01 * level  # rounds some pixels the other way, never further
    smooth = squash_eval_transform(antialias=True)(photo)
    assert smooth.std() < 0.8 * got.std()  # antialiasing averages the noise away; plain bilinear keeps it


def test_original_recipe_run_has_one_group_and_no_clipping(toy, tmp_path):
    groups_seen = []  # the optimiser the run steps, observed through torch's global step hook

    def record(optimizer, args, kwargs) -> None:  # noqa: ANN001
        groups_seen.append([(len(g["params"]), g["weight_decay"], "lr_scale" in g) for g in optimizer.param_groups])

    handle = register_optimizer_step_pre_hook(record)
    try:
        saved = run_cli(toy, tmp_path / "original", "--recipe", "original")
    finally:
        handle.remove()
    assert (saved["recipe"], saved["layer_decay"], saved["decay_all"], saved["clip_grad"], saved["antialias"]) == (
        "original", 1.0, True, 0.0, False)
    parameters = len(list(Classifier(load_pretrained(toy[1])[0].encoder, 2).parameters()))
    assert groups_seen and groups_seen[0] == [(parameters, 0.05, False)]  # one group, all decayed, no layer scale
    # no clipping: the same weights as a bound no gradient reaches, unlike a bound every gradient does
    weights = {name: load_file(str(tmp_path / name / "finetuned.safetensors")) for name in ("original",)}
    run_cli(toy, tmp_path / "huge", "--recipe", "original", "--clip-grad", "1e6")
    run_cli(toy, tmp_path / "tiny", "--recipe", "original", "--clip-grad", "1e-6")
    for name in ("huge", "tiny"):
        weights[name] = load_file(str(tmp_path / name / "finetuned.safetensors"))
    assert all(torch.equal(weights["original"][k], weights["huge"][k]) for k in weights["original"])
    assert not all(torch.equal(weights["original"][k], weights["tiny"][k]) for k in weights["original"])
    kamim = run_cli(toy, tmp_path / "kamim")
    assert (kamim["recipe"], kamim["layer_decay"], kamim["decay_all"], kamim["clip_grad"], kamim["antialias"]) == (
        "kamim", 0.65, False, 1.0, True)
