"""Weights and loss against the formula and against a direct re-implementation of the original code."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from kamim.train.masking import pixel_mask, random_mask
from kamim.train.weighting import (
    keypoint_pixel_weights,
    patch_density,
    patch_weights,
    pixel_weights,
    reconstruction_loss,
)


def hand_made_maps() -> tuple[torch.Tensor, np.ndarray]:
    """Two 192x192 binary maps whose 8x8-patch densities are known by construction."""
    maps = torch.zeros(2, 192, 192)
    maps[0, 0:8, 0:8] = 1  # patch (0,0): density 1
    maps[0, 8:12, 16:24] = 1  # patch (1,2): 32/64 = 0.5
    maps[0, 100, 100:104] = 1  # patch (12,12): 4/64
    maps[1] = 1
    maps[1, 184:192, 184:192] = 0  # every patch 1 except the last: 0
    expected = np.zeros((2, 24, 24))
    expected[0, 0, 0], expected[0, 1, 2], expected[0, 12, 12] = 1, 0.5, 4 / 64
    expected[1] = 1
    expected[1, 23, 23] = 0
    return maps, expected


@pytest.mark.parametrize("temperature", [0.1, 0.25, 1.0, 2.5])
def test_weights_equal_the_formula_with_min_one(temperature):
    maps, density = hand_made_maps()
    d = patch_density(maps, 8)
    assert np.array_equal(d.numpy(), density.astype(np.float32))
    w = patch_weights(d, temperature)
    formula = np.exp((density - density.reshape(2, -1).min(1)[:, None, None]) / temperature)
    np.testing.assert_allclose(w.numpy(), formula, rtol=1e-5)
    assert torch.all(w.flatten(1).amin(1) == 1.0)
    assert math.isclose(float(w[1].max()), math.exp(1 / temperature), rel_tol=1e-5)  # contrast e^(1/T)


def test_pixel_weights_are_block_replicated():
    w = torch.arange(2 * 12 * 12, dtype=torch.float32).reshape(2, 12, 12)
    pixels = pixel_weights(w, 16)
    assert pixels.shape == (2, 1, 192, 192)
    assert torch.equal(pixels[:, 0, ::16, ::16], w) and torch.equal(pixels[:, 0, 15::16, 15::16], w)


def original_weights(maps: torch.Tensor, w_ps: int, temperature: float) -> torch.Tensor:
    """The original per_patch_importance + upsampling, written out as reference/original-kamim.md describes."""
    kernel = torch.ones(1, 1, w_ps, w_ps) / (w_ps**2)
    d = F.conv2d(maps.unsqueeze(1), kernel, stride=w_ps)[:, 0]
    e = torch.exp(torch.clip(d / temperature, -20, 20))
    e = e / e.flatten(1).min(1).values[:, None, None]
    return e.repeat_interleave(w_ps, 1).repeat_interleave(w_ps, 2).unsqueeze(1)


def original_loss(img, recon, bool_masked_pos, w_img, patch_size):  # noqa: ANN001, ANN201
    """HF's masked_im_loss with the original's weighting: l1(img*w, recon*w) masked / (sum M + 1e-5) / 3."""
    size = img.shape[-1] // patch_size
    mask = bool_masked_pos.reshape(-1, size, size)
    mask = mask.repeat_interleave(patch_size, 1).repeat_interleave(patch_size, 2).unsqueeze(1).contiguous()
    loss = F.l1_loss(img * w_img, recon * w_img, reduction="none")
    return (loss * mask).sum() / (mask.sum() + 1e-5) / 3


@pytest.mark.parametrize("w_ps", [8, 16, 32])
def test_loss_is_bit_identical_to_the_original(w_ps):
    generator = torch.Generator().manual_seed(w_ps)
    maps = (torch.rand(4, 192, 192, generator=generator) < 0.3).float()
    images, recon = torch.randn(4, 3, 192, 192, generator=generator), torch.randn(4, 3, 192, 192, generator=generator)
    mask = torch.stack([random_mask(generator, 16) for _ in range(4)])
    ours_w = keypoint_pixel_weights(maps, w_ps, 0.25)
    theirs_w = original_weights(maps, w_ps, 0.25)
    assert torch.equal(ours_w, theirs_w)
    ours = reconstruction_loss(images, recon, pixel_mask(mask, 16), ours_w)
    theirs = original_loss(images, recon, mask.flatten(1), theirs_w, 16)
    assert torch.equal(ours, theirs)
    simmim = original_loss(images, recon, mask.flatten(1), 1.0, 16)
    assert torch.equal(reconstruction_loss(images, recon, pixel_mask(mask, 16), None), simmim)
    assert ours > simmim  # weights >= 1, so KAMIM's loss is the SimMIM loss scaled up


def test_infinite_or_huge_temperature_gives_simmim_loss():
    generator = torch.Generator().manual_seed(0)
    maps = (torch.rand(2, 192, 192, generator=generator) < 0.5).float()
    images, recon = torch.randn(2, 3, 192, 192, generator=generator), torch.randn(2, 3, 192, 192, generator=generator)
    masks = pixel_mask(torch.stack([random_mask(generator, 4) for _ in range(2)]), 4)
    simmim = reconstruction_loss(images, recon, masks, None)
    assert torch.equal(keypoint_pixel_weights(maps, 8, math.inf), torch.ones(2, 1, 192, 192))
    assert torch.equal(reconstruction_loss(images, recon, masks, keypoint_pixel_weights(maps, 8, math.inf)), simmim)
    huge = reconstruction_loss(images, recon, masks, keypoint_pixel_weights(maps, 8, 1e9))
    assert torch.allclose(huge, simmim, rtol=1e-6)
    assert not torch.allclose(reconstruction_loss(images, recon, masks, keypoint_pixel_weights(maps, 8, 0.1)), simmim)


def test_mask_has_22_of_36_cells_on_the_token_grid():
    generator = torch.Generator().manual_seed(3)
    for patch, side in ((16, 12), (4, 48)):
        mask = random_mask(generator, patch)
        assert mask.shape == (side, side)
        cells = mask[:: side // 6, :: side // 6]
        assert int(cells.sum()) == 22
        assert torch.equal(cells.repeat_interleave(side // 6, 0).repeat_interleave(side // 6, 1), mask)
    masks = {tuple(random_mask(generator, 16).flatten().tolist()) for _ in range(20)}
    assert len(masks) > 15
