"""The keypoint maps bench/fidelity.py compares: the original's (online, per crop), its two noise floors,
and cached ones built exactly as the cache builder stores them (detection on the canonical image,
positions quantised and encoded, read back in source pixels), plain or with crop-time selection."""

from __future__ import annotations

import dataclasses

import cv2
import numpy as np
import torch

from kamim.cache.points import SUBPIXEL_STEPS, decode_points, to_source
from kamim.cache.select import crop_scale, select_in_crop
from kamim.preprocess.build import detect_canonical, detect_canonical_selected
from kamim.preprocess.raster import ring_maps_torch
from kamim.train.augment import CropParams, crop_image, crop_points_keep
from kamim.train.data import online_ring_map

IMG = 192


def shifted(crop: CropParams, width: int, height: int) -> CropParams | None:
    """Floor A: the crop box moved by one source pixel (right, else left, else down, else up); None if
    it fills the image both ways."""
    if crop.left + crop.width < width:
        return dataclasses.replace(crop, left=crop.left + 1)
    if crop.left > 0:
        return dataclasses.replace(crop, left=crop.left - 1)
    if crop.top + crop.height < height:
        return dataclasses.replace(crop, top=crop.top + 1)
    if crop.top > 0:
        return dataclasses.replace(crop, top=crop.top - 1)
    return None


def translated(crop_u8: torch.Tensor) -> torch.Tensor:
    """Floor B: the 192 crop translated by one output pixel to the right (first column repeated)."""
    out = crop_u8.clone()
    out[..., 1:] = crop_u8[..., :-1]
    return out


def online_maps(image: np.ndarray, crop: CropParams, detector: str) -> dict[str, torch.Tensor] | None:
    """{"online", "floor_a", "floor_b"} ring maps (float [192,192]); None when floor A is undefined."""
    other = shifted(crop, image.shape[1], image.shape[0])
    if other is None:
        return None
    view = crop_image(image, crop, IMG)
    maps = {"online": online_ring_map(view, detector), "floor_a": online_ring_map(crop_image(image, other, IMG), detector),
            "floor_b": online_ring_map(translated(view), detector)}
    return {k: torch.from_numpy(v).float() for k, v in maps.items()}


def raster(points: np.ndarray) -> torch.Tensor:
    """The trainer's path: crop points -> ring_maps_torch (the stamp table)."""
    tensor = torch.from_numpy(np.asarray(points, np.float32)).reshape(1, -1, 2)
    return ring_maps_torch(tensor, torch.tensor([len(tensor[0])]), IMG)[0]


@dataclasses.dataclass
class Stored:
    """One image's cache entry, as a reader returns it."""

    points: np.ndarray  # float32 [N,2] source pixels
    scale: np.ndarray  # [2] detect-size pixels per source pixel
    attrs: np.ndarray | None = None  # uint16 [N] for selection caches


def plain_entry(image: np.ndarray, detector: str, detect_size: int) -> Stored:
    steps = SUBPIXEL_STEPS[detector]
    codes, scale = detect_canonical(image, detector, "bgr", detect_size, steps)
    return Stored(to_source(decode_points(codes, steps), scale), scale)


def selection_entry(image: np.ndarray, detector: str, detect_size: int) -> Stored:
    steps = SUBPIXEL_STEPS[detector]
    codes, attrs, scale = detect_canonical_selected(image, detector, "bgr", detect_size, steps)
    return Stored(to_source(decode_points(codes, steps), scale), scale, attrs)


def cached_map(entry: Stored, crop: CropParams, detector: str) -> tuple[torch.Tensor, int]:
    """(ring map, points drawn) of a cache entry for this crop, with the selection when it has attributes."""
    xy, keep = crop_points_keep(entry.points, crop, IMG)
    if entry.attrs is not None:
        attrs = entry.attrs[keep]
        xy = xy[select_in_crop(detector, xy, attrs, crop_scale(crop.width, crop.height, entry.scale, IMG), IMG)]
    return raster(xy), len(xy)


def tiny(image: np.ndarray, side: int = 32) -> np.ndarray:
    """A CIFAR-like version of a photo: side x side, area-averaged."""
    return cv2.resize(image, (side, side), interpolation=cv2.INTER_AREA)
