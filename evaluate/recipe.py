"""The original's classification recipe (reference/original-kamim.md section 4), shared by the
linear probe's ``--recipe original`` and by finetuning: augmentations, MixUp/CutMix, schedule, metrics.
"""

from __future__ import annotations

import torch
from timm.data import Mixup
from timm.scheduler import CosineLRScheduler
from torch import nn
from torchvision.transforms import v2

from .features import IMAGENET_MEAN, IMAGENET_STD


def original_train_transform(img_size: int = 192) -> v2.Compose:
    """Resize((S,S)) (aspect distorted, as the original) -> TrivialAugmentWide -> RandomErasing(0.5)
    -> ImageNet normalisation, on a uint8 HxWx3 array."""
    return v2.Compose([
        v2.ToImage(),
        v2.Resize((img_size, img_size), antialias=True),
        v2.TrivialAugmentWide(),
        v2.ToDtype(torch.float32, scale=True),
        v2.RandomErasing(p=0.5),
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
