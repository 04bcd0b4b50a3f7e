"""SimMIM's random mask: 32-px mask patches, ratio 0.6 (ceil -> 22 of 36 at 192 px), upsampled to tokens."""

from __future__ import annotations

import math

import torch

MASK_PATCH_SIZE = 32
MASK_RATIO = 0.6


def random_mask(generator: torch.Generator | None, model_patch_size: int, img_size: int = 192,
                mask_patch_size: int = MASK_PATCH_SIZE, ratio: float = MASK_RATIO) -> torch.Tensor:
    """int64 [img/p, img/p] with 1 = masked, p = ``model_patch_size`` (16 ViT, 4 Swin).

    A random permutation picks ceil(ratio * cells) mask cells, like the original's MaskGenerator.
    """
    cells = img_size // mask_patch_size
    count = math.ceil(cells * cells * ratio)
    order = torch.randperm(cells * cells, generator=generator)
    mask = torch.zeros(cells * cells, dtype=torch.int64)
    mask[order[:count]] = 1
    scale = mask_patch_size // model_patch_size
    return mask.reshape(cells, cells).repeat_interleave(scale, 0).repeat_interleave(scale, 1)


def pixel_mask(mask: torch.Tensor, model_patch_size: int) -> torch.Tensor:
    """Token mask [B,h,w] -> pixel mask [B,1,H,W] (the same block upsampling as the original step)."""
    batch, rows, cols = mask.shape
    p = model_patch_size
    return mask[:, :, None, :, None].expand(batch, rows, p, cols, p).reshape(batch, 1, rows * p, cols * p)
