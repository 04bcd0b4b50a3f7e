"""The original's classification recipe (reference/original-kamim.md section 4), shared by the
linear probe's ``--recipe original`` and by finetuning: augmentations, MixUp/CutMix, schedule, metrics.
"""

from __future__ import annotations

from typing import Any

import torch
from timm.data import Mixup
from timm.scheduler import CosineLRScheduler
from torch import nn
from torchvision.transforms import v2

from kamim.errors import UserError

from .features import IMAGENET_MEAN, IMAGENET_STD

# ``kamim finetune --recipe``: the values of the settings left unset (None). kamim: this project's defaults,
# improvements on the original; original: its finetune scripts as run (reference/original-kamim.md 4):
# one AdamW group decaying every parameter, no layer decay, no clipping for ViT (finetune_vit.py has
# it commented out) but 1.0 for Swin (finetune_swin.py), Resize without antialias, PyTorch's default
# Linear init for the head. Both: AdamW 5e-3 wd 0.05, batch 2048, 110 epochs (cosine over 100, warmup
# 10 from 2.5e-6, lr_min 2.5e-6), TrivialAugmentWide + RandomErasing + MixUp/CutMix.
FINETUNE_RECIPES: dict[str, dict[str, Any]] = {
    "kamim": {"layer_decay": 0.65, "decay_all": False, "clip_grad": 1.0, "antialias": True, "head_init": "trunc_normal"},
    "original": {"layer_decay": 1.0, "decay_all": True, "clip_grad": {"vit": 0.0, "swin": 1.0}, "antialias": False,
                 "head_init": "torch"},
}


def finetune_recipe(name: str, family: str) -> dict[str, Any]:
    """The recipe's values for a ``vit`` or ``swin`` encoder (``clip_grad`` depends on the family)."""
    if name not in FINETUNE_RECIPES:
        raise UserError(f"--recipe {name}: use one of {', '.join(FINETUNE_RECIPES)}")
    return {k: (v[family] if isinstance(v, dict) else v) for k, v in FINETUNE_RECIPES[name].items()}


def original_train_transform(img_size: int = 192, antialias: bool = False) -> v2.Compose:
    """Resize((S,S)) (aspect distorted, as the original) -> TrivialAugmentWide -> RandomErasing(0.5)
    -> ImageNet normalisation, on a uint8 HxWx3 array. The original resized uint8 tensors with
    ``antialias=False`` (plain bilinear: aliasing when it shrinks a photo); ``antialias=True`` is the
    finetune default's improvement. (It erased before the float conversion; erasing writes 0 either way.)"""
    return v2.Compose([
        v2.ToImage(),
        v2.Resize((img_size, img_size), antialias=antialias),
        v2.TrivialAugmentWide(),
        v2.ToDtype(torch.float32, scale=True),
        v2.RandomErasing(p=0.5),
        v2.Normalize(IMAGENET_MEAN, IMAGENET_STD),
    ])


def squash_eval_transform(img_size: int = 192, antialias: bool = False) -> v2.Compose:
    """The original's validation transform: Resize((S,S)) of the uint8 image, antialias off as it had it
    (``features.eval_transform(S, "squash")`` is the same with antialias on) -> ImageNet normalisation."""
    return v2.Compose([
        v2.ToImage(), v2.Resize((img_size, img_size), antialias=antialias), v2.ToDtype(torch.float32, scale=True),
        v2.Normalize(IMAGENET_MEAN, IMAGENET_STD),
    ])


def mixup_cutmix(num_classes: int, alpha: float = 1.0) -> Mixup | None:
    """Per batch, MixUp or CutMix with equal odds (alpha 1, no label smoothing), as the original.
    ``alpha`` 0 disables both (hard labels)."""
    if alpha <= 0:
        return None
    return Mixup(mixup_alpha=alpha, cutmix_alpha=alpha, switch_prob=0.5, mode="batch",
                 label_smoothing=0.0, num_classes=num_classes)


def mixed_batch(images: torch.Tensor, labels: torch.Tensor, mix: Mixup | None,
                num_classes: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The original's per-batch MixUp/CutMix (soft targets), or one-hot targets when ``mix`` is None."""
    if len(labels) % 2:  # timm's batch MixUp pairs samples by flipping the batch
        images, labels = images[:-1], labels[:-1]
    if mix is not None:
        return mix(images, labels)
    return images, nn.functional.one_hot(labels, num_classes).float()


def cosine_schedule(optimizer: torch.optim.Optimizer, total_steps: int, warmup_steps: int, lr_min: float,
                    warmup_lr: float, cosine_steps: int | None = None) -> CosineLRScheduler:
    """Per-optimiser-step cosine with a linear warmup that overlaps its start (timm, as the original).

    ``cosine_steps`` < ``total_steps`` reproduces the original's tail at ``lr_min`` (100 cosine epochs of
    110). Groups with an ``lr_scale`` (layer decay) are scaled by timm.
    """
    return CosineLRScheduler(
        optimizer, t_initial=max(1, cosine_steps or total_steps), lr_min=lr_min, warmup_t=warmup_steps,
        warmup_lr_init=warmup_lr, cycle_limit=1, t_in_epochs=False,
    )


def topk_correct(logits: torch.Tensor, labels: torch.Tensor, ks: tuple[int, ...] = (1, 5)) -> list[int]:
    """How many rows have their label among the top-k logits, for each k (k capped at the class count)."""
    top = logits.topk(min(max(ks), logits.shape[1]), dim=1).indices
    hits = top.eq(labels[:, None])
    return [int(hits[:, :k].any(dim=1).sum()) for k in ks]


@torch.no_grad()
def evaluate_classifier(model: nn.Module, loader, device: torch.device) -> dict[str, float]:
    """Top-1/top-5 (%) and mean cross-entropy of ``model(images)`` over a loader of (images, labels)."""
    model.eval()
    total, top1, top5, loss = 0, 0, 0, 0.0
    for images, labels in loader:
        images, labels = images.to(device), labels.to(device)
        logits = model(images).float()
        loss += float(nn.functional.cross_entropy(logits, labels, reduction="sum"))
        c1, c5 = topk_correct(logits, labels)
        top1, top5, total = top1 + c1, top5 + c5, total + len(labels)
    return {"top1": 100.0 * top1 / max(total, 1), "top5": 100.0 * top5 / max(total, 1),
            "loss": loss / max(total, 1), "count": total}
