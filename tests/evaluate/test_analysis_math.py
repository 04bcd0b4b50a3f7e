"""Known values of the paper's analyses on constructed inputs."""

import math

import numpy as np
import pytest
import torch

from kamim.evaluate.analysis_math import (
    attention_distance,
    attention_nmi,
    fourier_delta,
    fourier_log_amplitude,
    grid_distances,
    reconstruction_metrics,
    tokens_to_map,
)

GRID = (4, 4)
PATCHES = 16


def with_cls(patch_attn: torch.Tensor) -> torch.Tensor:
    """Embed a [B,H,P,P] patch attention in a [B,H,1+P,1+P] one whose CLS row/column get junk."""
    batch, heads, count, _ = patch_attn.shape
    full = torch.rand(batch, heads, count + 1, count + 1)
    full[..., 1:, 1:] = patch_attn
    full[..., 1:, 0] = 0.7  # the CLS column must be dropped before renormalising
    return full


def identity_attn(batch: int = 2, heads: int = 3) -> torch.Tensor:
    return with_cls(torch.eye(PATCHES).expand(batch, heads, PATCHES, PATCHES).clone())


def uniform_attn(batch: int = 2, heads: int = 3) -> torch.Tensor:
    return with_cls(torch.full((batch, heads, PATCHES, PATCHES), 1.0 / PATCHES))


def test_grid_distances_are_pixel_distances():
    d = grid_distances((2, 3), patch_size=16)
    assert d.shape == (6, 6)
    assert d[0, 0] == 0
    assert d[0, 2] == pytest.approx(32)  # same row, two columns apart
    assert d[0, 5] == pytest.approx(16 * math.sqrt(1 + 4))


def test_attention_distance_identity_is_zero():
    dist = attention_distance(identity_attn(), GRID, patch_size=16)
    assert dist.shape == (3,)
    np.testing.assert_allclose(dist, 0.0, atol=1e-20)


def test_attention_distance_uniform_is_mean_pairwise_distance():
    dist = attention_distance(uniform_attn(), GRID, patch_size=16)
    expected = float(grid_distances(GRID, 16).mean())
    np.testing.assert_allclose(dist, expected, rtol=1e-9)
    assert 20 < expected < 40  # sanity: a 4x4 grid of 16-px patches


def test_attention_distance_neighbour_attention():
    # every query attends only to its right neighbour (or itself at the last column): distance 16 * 3/4
    attn = torch.zeros(1, 1, PATCHES, PATCHES)
    for q in range(PATCHES):
        attn[0, 0, q, q + 1 if q % 4 != 3 else q] = 1.0
    dist = attention_distance(with_cls(attn), GRID, patch_size=16)
    assert dist[0] == pytest.approx(12.0)


def test_nmi_uniform_is_zero_and_identity_is_one():
    np.testing.assert_allclose(attention_nmi(uniform_attn()), 0.0, atol=1e-9)
    np.testing.assert_allclose(attention_nmi(identity_attn()), 1.0, atol=1e-5)


def test_nmi_is_between_zero_and_one_for_random_attention():
    attn = torch.softmax(torch.randn(2, 4, 17, 17) * 3, dim=-1)
    nmi = attention_nmi(attn)
    assert nmi.shape == (4,)
    assert np.all((nmi > 0) & (nmi < 1))


def test_fourier_of_an_impulse_is_flat():
    # a single non-zero token has a flat amplitude spectrum: every relative log amplitude is 0
    maps = torch.zeros(2, 5, 8, 8)
    maps[:, :, 3, 5] = 2.0
    curve = fourier_log_amplitude(maps)
    assert curve.shape == (4,)
    np.testing.assert_allclose(curve, 0.0, atol=1e-9)


def test_fourier_of_a_constant_map_has_only_dc():
    maps = torch.full((1, 2, 8, 8), 3.0)
    curve = fourier_log_amplitude(maps)
    assert curve[0] == 0
    expected = math.log(1e-6) - math.log(3.0 * 64 + 1e-6)
    np.testing.assert_allclose(curve[1:], expected, rtol=1e-9)


def test_fourier_delta_smooth_is_below_noisy():
    torch.manual_seed(0)
    noise = torch.randn(4, 1 + PATCHES, 8)
    smooth = noise.clone()
    smooth[:, 1:] = noise[:, 1:].mean(dim=1, keepdim=True) + 0.01 * noise[:, 1:]
    assert fourier_delta(smooth, GRID) < fourier_delta(noise, GRID) - 1.0
    assert tokens_to_map(noise, GRID).shape == (4, 8, 4, 4)


def test_reconstruction_metrics_identical_and_noisy():
    torch.manual_seed(0)
    target = torch.randn(3, 3, 32, 32)
    mask = (torch.rand(3, 32, 32) > 0.5).float()
    same = reconstruction_metrics(target, target.clone(), mask)
    assert same["psnr"] == float("inf") and same["psnr_masked"] == float("inf")
    assert same["ssim"] == pytest.approx(1.0)
    noisy = reconstruction_metrics(target, target + 0.1 * torch.randn_like(target), mask)
    # data range ~ 7-8 (normal samples), noise std 0.1 -> PSNR ~ 20 log10(range / 0.1) ~ 37 dB
    assert 33 < noisy["psnr"] < 42
    assert 0 < noisy["ssim"] < 1
    assert noisy["psnr_masked"] == pytest.approx(noisy["psnr"], abs=0.5)


def test_masked_psnr_ignores_visible_pixels():
    target = torch.zeros(1, 3, 16, 16)
    target[0, 0, 0, 0] = 1.0  # data range 1
    recon = target.clone()
    mask = torch.zeros(1, 16, 16)
    mask[:, 8:, :] = 1
    recon[:, :, :8, :] += 0.5  # error only where visible
    result = reconstruction_metrics(target, recon, mask)
    assert result["psnr_masked"] == float("inf")
    assert result["psnr"] == pytest.approx(10 * math.log10(1 / (0.25 / 2)))
