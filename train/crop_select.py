"""A cached sample's crop points: the cache's points moved through the crop, and for a selection cache
(SIFT/ORB with per-point attributes, kamim.cache.select) only those the crop's own detector would keep."""

from __future__ import annotations

import weakref
from typing import Any

import numpy as np
import torch

from kamim.cache.attrs_store import PointAttrs, open_point_attrs
from kamim.cache.select import crop_scale, select_in_crop

from .augment import CropParams, crop_points_keep
from .crop_codes import code_crop, crop_codes, crop_rows

_ATTRS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # cache reader -> PointAttrs | None


def point_attrs(cache: Any) -> PointAttrs | None:
    """The cache's attribute reader (None for plain caches), made once per reader object."""
    try:
        return _ATTRS[cache]
    except KeyError:
        reader = _ATTRS[cache] = open_point_attrs(cache)
        return reader
    except TypeError:  # a reader that cannot be weakly referenced: no cache of the lookup
        return open_point_attrs(cache)


def cached_crop_points(cache: Any, index: int, crop: CropParams, size: int = 192) -> np.ndarray:
    """float32 [K,2] crop-pixel points of sample ``index`` for ``crop`` (DESIGN.md 4.1, 4.3)."""
    attrs = point_attrs(cache)
    if hasattr(cache, "point_codes"):
        codes, sx, sy = cache.point_codes(index)
        xy, first, inside = crop_codes(codes, cache.steps, sx, sy, crop, size)
        if attrs is None:
            return xy
        kept_attrs = attrs.attrs(index)[first : first + len(inside)][inside]
    else:
        xy, keep = crop_points_keep(cache.points(index), crop, size)
        if attrs is None:
            return xy
        kept_attrs = attrs.attrs(index)[keep]
    scale = crop_scale(crop.width, crop.height, cache.scale(index), size)
    return xy[select_in_crop(cache.manifest["detector"], xy, kept_attrs, scale, size)]


def cached_sample_points(cache: Any, index: int, crop: CropParams, size: int = 192) -> dict[str, Any]:
    """A cached sample's keypoint fields: ``cached_batch_points`` for one sample."""
    return cached_batch_points(cache, [index], [crop], size)[0]


def cached_batch_points(cache: Any, indices: list[int], crops: list[CropParams], size: int = 192) -> list[dict[str, Any]]:
    """The keypoint fields of a batch of cached samples, one dict each.

    A plain zarr cache hands over each sample's stored codes (numpy uint16 [2n], read-only), which of them
    lie in the crop's rows (``code_rows``: first, last) and the crop's map of them (``code_crop``, 8
    numbers): collate pads the rows and the step maps them for the whole batch
    (kamim.train.crop_codes.batch_points). The loader calls this after the batch's images, so the reads
    run back to back on warm code (``batch_point_codes``: one loop): 11-15 us a sample in a loader worker
    with the flat file's pages resident, against 47-112 when each sample's call follows its own image's
    decode, which evicts the CPU's caches (bench/scale.py measures both). Selection caches and other
    readers hand over crop points (a float32 tensor [K,2])."""
    pairs = zip(indices, crops, strict=True)
    if not hasattr(cache, "batch_point_codes") or point_attrs(cache) is not None:
        return [{"points": torch.from_numpy(cached_crop_points(cache, index, crop, size))} for index, crop in pairs]
    steps, fields = cache.steps, []
    for (codes, sx, sy), crop in zip(cache.batch_point_codes(indices), crops, strict=True):
        crop_map = code_crop(steps, sx, sy, crop, size)
        fields.append({"codes": codes, "code_rows": crop_rows(codes, crop_map[6], crop_map[7]), "code_crop": crop_map})
    return fields
