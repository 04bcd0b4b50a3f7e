"""Paired augmentation: one RandomResizedCrop box and one pair of flips, applied to an image and its keypoints.

The recipe is the original's (reference/original-kamim.md 1.1): RandomResizedCrop(192, scale (0.67, 1),
ratio (3/4, 4/3), bilinear, antialias off) on the uint8 image, vertical flip p=0.5, horizontal flip
p=0.5. Each sample draws its parameters (and its mask) from its own seed, so a resumed run, any
number of workers and any rank see the same augmentations for the same (seed, epoch, index).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as TF

SCALE = (0.67, 1.0)
RATIO = (3 / 4, 4 / 3)
MEAN = (0.485, 0.456, 0.406)
STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class CropParams:
    top: int
    left: int
    height: int
    width: int
    vflip: bool
    hflip: bool


def sample_seed(seed: int, epoch: int, index: int) -> int:
    """A well-mixed 63-bit seed for one sample of one epoch."""
    return int(np.random.SeedSequence([seed, epoch, index]).generate_state(2, dtype=np.uint64)[0] >> 1)


@contextlib.contextmanager
def seeded(seed: int) -> Iterator[None]:
    """Run torch's CPU RNG from ``seed`` inside, leaving the caller's RNG untouched.

    (torch.random.fork_rng + torch.manual_seed cost ~150 us per sample because they visit every
    backend; the CPU generator alone costs ~3 us.)"""
    saved = torch.get_rng_state()
    torch.default_generator.manual_seed(seed)
    try:
        yield
    finally:
        torch.set_rng_state(saved)


def sample_crop(height: int, width: int, size: int = 192) -> CropParams:
    """torchvision's RandomResizedCrop box + the two flips, from torch's global RNG (use under ``seeded``)."""
    box = v2.RandomResizedCrop(size, scale=SCALE, ratio=RATIO).make_params([torch.empty(3, height, width)])
    vflip, hflip = (torch.rand(2) < 0.5).tolist()
    return CropParams(box["top"], box["left"], box["height"], box["width"], vflip, hflip)


def crop_image(image: np.ndarray | torch.Tensor, crop: CropParams, size: int = 192) -> torch.Tensor:
    """uint8 HxWx3 (numpy) or 3xHxW (tensor) -> the uint8 [3,size,size] crop, flipped as ``crop`` says."""
    tensor = torch.from_numpy(image).permute(2, 0, 1) if isinstance(image, np.ndarray) else image
    out = TF.resized_crop(tensor, crop.top, crop.left, crop.height, crop.width, [size, size],
                          interpolation=TF.InterpolationMode.BILINEAR, antialias=False)
    if crop.vflip:
        out = out.flip(-2)
    if crop.hflip:
        out = out.flip(-1)
    return out.contiguous()


def crop_points(points: np.ndarray, crop: CropParams, size: int = 192) -> np.ndarray:
    """Source-image (x, y) -> crop coordinates, pixel centres at integers; points outside are dropped.

    Bilinear resizing with half-pixel centres maps x to (x - left + 0.5) * size / width - 0.5; a flip
    maps x to size - 1 - x. The original detects inside the crop only, so points off it are removed.
    """
    return crop_points_keep(points, crop, size)[0]


def crop_points_keep(points: np.ndarray, crop: CropParams, size: int = 192) -> tuple[np.ndarray, np.ndarray]:
    """``crop_points`` and the bool [N] mask of the points it kept (per-point attributes follow it)."""
    points = np.asarray(points, dtype=np.float32).reshape(-1, 2)
    x = (points[:, 0] - crop.left + 0.5) * (size / crop.width) - 0.5
    y = (points[:, 1] - crop.top + 0.5) * (size / crop.height) - 0.5
    if crop.hflip:
        x = (size - 1) - x
    if crop.vflip:
        y = (size - 1) - y
    keep = (x >= -0.5) & (x < size - 0.5) & (y >= -0.5) & (y < size - 0.5)
    return np.stack([x[keep], y[keep]], axis=1).astype(np.float32), keep


def normalize(images: torch.Tensor) -> torch.Tensor:
    """uint8 [B,3,H,W] -> float32 ImageNet-normalised (the original's ToDtype(scale) + Normalize)."""
    return TF.normalize(TF.to_dtype(images, torch.float32, scale=True), list(MEAN), list(STD))


def denormalize(images: torch.Tensor) -> torch.Tensor:
    """Normalised [B,3,H,W] -> [0,1] floats, for pictures."""
    mean = torch.tensor(MEAN, device=images.device).view(1, 3, 1, 1)
    std = torch.tensor(STD, device=images.device).view(1, 3, 1, 1)
    return (images.float() * std + mean).clamp(0, 1)
