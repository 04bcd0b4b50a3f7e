"""Keypoint weighting, bit-compatible with the original (reference/original-kamim.md sections 1.3-1.5).

ring map [B,H,W] -> density d = mean over w_ps x w_ps patches -> w = exp(clip(d/T)) / min_image(...)
(= exp((d - min_image d) / T) because d/T <= 20 for T >= 0.05) -> block-replicated to pixels.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

WEIGHT_PATCH_SIZES = (8, 16, 32)
EXP_CLIP = 20.0  # the original clips the exponent; inactive for d <= 1 and T >= 0.05
LOSS_EPS = 1e-5  # added to the masked-pixel count, as in HF's masked_im_loss and the original


def patch_density(maps: torch.Tensor, w_ps: int) -> torch.Tensor:
    """Fraction of ring pixels per w_ps patch: [B,H,W] -> [B,H/w_ps,W/w_ps] float32."""
    return F.avg_pool2d(maps.float().unsqueeze(1), kernel_size=w_ps, stride=w_ps).squeeze(1)


def patch_weights(density: torch.Tensor, temperature: float) -> torch.Tensor:
    """exp(clip(d/T, -20, 20)) / min over the image's patches, in the original's operation order (so the
    numbers are bit-identical); equal to exp((d - min d)/T) for the allowed T. Minimum weight: exactly 1.

    T = inf gives all ones (SimMIM)."""
    if math.isinf(temperature):
        return torch.ones_like(density)
    weights = torch.exp(torch.clamp(density / temperature, -EXP_CLIP, EXP_CLIP))
    low = weights.flatten(1).amin(dim=1).view(-1, *([1] * (density.dim() - 1)))
    return weights / low


def pixel_weights(weights: torch.Tensor, w_ps: int) -> torch.Tensor:
    """[B,h,w] patch weights -> [B,1,H,W] by block replication (nearest), like the original."""
    batch, rows, cols = weights.shape
    # one broadcast copy: the same values as repeat_interleave twice, at a third of the kernels
    blocks = weights[:, :, None, :, None].expand(batch, rows, w_ps, cols, w_ps)
    return blocks.reshape(batch, 1, rows * w_ps, cols * w_ps)


def keypoint_pixel_weights(maps: torch.Tensor, w_ps: int, temperature: float) -> torch.Tensor:
    """Ring maps [B,H,W] -> pixel weights [B,1,H,W], the whole chain, without gradients."""
    with torch.no_grad():
        return pixel_weights(patch_weights(patch_density(maps, w_ps), temperature), w_ps)


def reconstruction_loss(images: torch.Tensor, recon: torch.Tensor, pixel_mask: torch.Tensor,
                        weights: torch.Tensor | None = None) -> torch.Tensor:
    """sum(M * |W*I - W*I_hat|) / (sum(M) + 1e-5) / 3 over the micro-batch, in float32.

    ``pixel_mask`` [B,1,H,W] (1 = masked); ``weights`` [B,1,H,W] or None (SimMIM: exactly HF's
    masked_im_loss). The operation order is the original's, so the numbers are bit-compatible.
    """
    images, recon, mask = images.float(), recon.float(), pixel_mask.float()
    if weights is not None:
        images, recon = images * weights, recon * weights
    per_pixel = F.l1_loss(images, recon, reduction="none")
    return (per_pixel * mask).sum() / (mask.sum() + LOSS_EPS) / images.shape[1]
