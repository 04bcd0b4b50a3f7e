"""A cached sample's crop points: the cache's points moved through the crop, and for a selection cache
(SIFT/ORB with per-point attributes, kamim.cache.select) only those the crop's own detector would keep."""

from __future__ import annotations

import weakref
from typing import Any

import numpy as np

from kamim.cache.attrs_store import PointAttrs, open_point_attrs
from kamim.cache.select import crop_scale, select_in_crop

from .augment import CropParams, crop_points_keep

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
    xy, keep = crop_points_keep(cache.points(index), crop, size)
    attrs = point_attrs(cache)
    if attrs is None:
        return xy
    scale = crop_scale(crop.width, crop.height, cache.scale(index), size)
    return xy[select_in_crop(cache.manifest["detector"], xy, attrs.attrs(index)[keep], scale, size)]
