"""The paper's analyses as pure functions on tensors (reference/original-kamim.md section 5).

Attention tensors are ``[B, heads, N, N]`` softmax probabilities including the prefix (CLS) tokens;
token tensors are ``[B, N, C]``. Every function returns per-head (or per-frequency) numpy arrays so the
caller decides how to average and plot.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from skimage.metrics import structural_similarity

# The original adds a different constant before renormalising in each analysis; keep both.
DISTANCE_EPS = 1e-32
NMI_EPS = 1e-8
FOURIER_EPS = 1e-6


def patch_attention(attn: torch.Tensor, num_prefix: int = 1, eps: float = DISTANCE_EPS) -> torch.Tensor:
    """Drop the prefix rows and columns, add ``eps`` and renormalise each query row (float64)."""
    attn = attn[..., num_prefix:, num_prefix:].double() + eps
    return attn / attn.sum(dim=-1, keepdim=True)


def grid_distances(grid: tuple[int, int], patch_size: int) -> torch.Tensor:
    """``D[i, j]`` = pixel distance between patch centres i and j on a row-major ``grid`` (rows, cols)."""
    rows, cols = grid
    ys, xs = torch.meshgrid(torch.arange(rows), torch.arange(cols), indexing="ij")
    coords = torch.stack([ys.flatten(), xs.flatten()], dim=1).double()
    return torch.cdist(coords, coords) * patch_size


def attention_distance(
    attn: torch.Tensor, grid: tuple[int, int], patch_size: int, num_prefix: int = 1
) -> np.ndarray:
    """Mean attention distance per head (pixels), averaged over queries and the batch -> ``[heads]``.

    For each query, the attention-weighted mean distance to the keys; the ViT "receptive field".
    """
    probs = patch_attention(attn, num_prefix, DISTANCE_EPS)
    if probs.shape[-1] != grid[0] * grid[1]:
        raise ValueError(f"attention over {probs.shape[-1]} patch tokens does not match grid {grid}")
    distances = grid_distances(grid, patch_size).to(probs.device)
    per_query = (probs * distances).sum(dim=-1)  # [B, H, Q]
    return per_query.mean(dim=-1).mean(dim=0).cpu().numpy()


def attention_nmi(attn: torch.Tensor, num_prefix: int = 1) -> np.ndarray:
    """Normalised mutual information between query and key positions per head -> ``[heads]``.

    p(q) uniform, p(k) = sum_q p(q) A_qk, NMI = I(q; k) / sqrt(H(q) H(k)). 0 when every query attends
    alike (attention collapse), 1 when each query attends to its own distinct key.
    """
    probs = patch_attention(attn, num_prefix, NMI_EPS)
    queries = probs.shape[-2]
    p_q = 1.0 / queries
    p_k = probs.sum(dim=-2) * p_q  # [B, H, K]
    mutual = (p_q * probs * torch.log(probs / p_k.unsqueeze(-2))).sum(dim=(-2, -1))
    entropy_q = math.log(queries)
    entropy_k = -(p_k * torch.log(p_k)).sum(dim=-1)
    nmi = mutual / torch.sqrt(entropy_q * entropy_k)
    return nmi.mean(dim=0).cpu().numpy()


def tokens_to_map(tokens: torch.Tensor, grid: tuple[int, int], num_prefix: int = 1) -> torch.Tensor:
    """``[B, N, C]`` tokens -> ``[B, C, rows, cols]`` feature maps (prefix tokens dropped)."""
    patches = tokens[:, num_prefix:, :]
    batch, count, channels = patches.shape
    if count != grid[0] * grid[1]:
        raise ValueError(f"{count} patch tokens do not match grid {grid}")
    return patches.transpose(1, 2).reshape(batch, channels, grid[0], grid[1])


def fourier_log_amplitude(feature_map: torch.Tensor) -> np.ndarray:
    """Relative log amplitude along the half-diagonal of the centred spectrum -> ``[rows//2 (+1)]``.

    log(|FFT2| + 1e-6), rolled so DC sits at (rows/2, cols/2), averaged over batch and channels; the
    diagonal from DC outwards minus its DC value. Entry 0 is 0; the last is the "delta log amplitude"
    of the highest frequency the original plots against depth.
    """
    rows, cols = feature_map.shape[-2:]
    amplitude = torch.log(torch.fft.fft2(feature_map.double()).abs() + FOURIER_EPS)
    centred = torch.roll(amplitude, shifts=(rows // 2, cols // 2), dims=(-2, -1)).mean(dim=(0, 1))
    half_diagonal = torch.diagonal(centred)[rows // 2 :]
    return (half_diagonal - half_diagonal[0]).cpu().numpy()


def fourier_delta(tokens: torch.Tensor, grid: tuple[int, int], num_prefix: int = 1) -> float:
    """The highest-frequency relative log amplitude of a layer's tokens (one point of the depth plot)."""
    return float(fourier_log_amplitude(tokens_to_map(tokens, grid, num_prefix))[-1])


def psnr_from_mse(mse: float, data_range: float) -> float:
    """10 log10(range^2 / mse); inf for identical images."""
    if mse <= 0:
        return float("inf")
    return 10.0 * math.log10(data_range**2 / mse)


def reconstruction_metrics(
    target: torch.Tensor, recon: torch.Tensor, pixel_mask: torch.Tensor
) -> dict[str, float]:
    """PSNR/SSIM of reconstructions against normalised targets, as the original's notebook measures them.

    ``target``/``recon``: ``[B, 3, H, W]`` normalised images; ``pixel_mask``: ``[B, H, W]``, 1 = masked.
    ``psnr``/``ssim`` compare the *full* images (visible pixels included), with the data range inferred
    like torchmetrics' defaults (PSNR: target max - min over the set; SSIM: the larger of the two
    ranges; Gaussian window 11, sigma 1.5). ``psnr_masked`` uses masked pixels only, the part the
    model was trained to reconstruct. ``psnr_per_image`` is the mean of per-image PSNRs.
    """
    target = target.detach().double().cpu()
    recon = recon.detach().double().cpu()
    mask = pixel_mask.detach().double().cpu().unsqueeze(1).expand_as(target)
    squared = (recon - target) ** 2
    psnr_range = float(target.max() - target.min())
    ssim_range = max(psnr_range, float(recon.max() - recon.min()))
    per_image_mse = squared.flatten(1).mean(dim=1)
    ssims = [
        structural_similarity(
            t.numpy(), r.numpy(), data_range=ssim_range, channel_axis=0,
            gaussian_weights=True, sigma=1.5, use_sample_covariance=False,
        )
        for t, r in zip(target, recon, strict=True)
    ]
    masked_count = float(mask.sum())
    return {
        "psnr": psnr_from_mse(float(squared.mean()), psnr_range),
        "ssim": float(np.mean(ssims)),
        "psnr_masked": psnr_from_mse(float((squared * mask).sum()) / max(masked_count, 1.0), psnr_range),
        "psnr_per_image": float(np.mean([psnr_from_mse(float(m), psnr_range) for m in per_image_mse])),
        "data_range": psnr_range,
    }
