"""Crop-time selection for SIFT and ORB caches: per-point attributes, and the rule a crop applies.

A per-crop detector sees only the crop, at the crop's scale. A cache detects once on the whole image,
so to agree with the per-crop maps (DESIGN.md 4.3) it keeps one uint16 attribute per point and each
crop drops the points its own detector would not report (measured in bench/fidelity.py):

- SIFT: the attribute is the keypoint size (log-coded). A crop scales sizes by ``s`` (crop pixels per
  detect-size pixel); SIFT on the 192 crop finds no blob smaller than ~1.8 px (sigma 1.6 at the first,
  upsampled octave, minus half a layer of interpolation), so smaller ones go. The octave a point would
  fall in at the crop's scale fixes OpenCV's 5-pixel border of that octave (4.5 * 2**octave crop pixels
  from the low edge, 5.5 * 2**octave from the high one). At the identity (the crop is the detect-size
  image) this keeps exactly the points SIFT reports.
- ORB: the attribute is the pyramid level (4 bits) and the rank of the Harris response in the image
  (12 bits). Cache level k is crop level k + round(log(s) / log(1.2)); each crop level keeps the points
  outside its 31-pixel border (``edgeThreshold`` in that level's pixels) and then its own quota of the
  500 features (OpenCV's geometric split over 8 levels), strongest first.

Attributes follow the stored point order (sorted by quantised (y, x), as ``encode_points`` sorts).
"""

from __future__ import annotations

import math

import numpy as np

ATTR_DTYPE = np.uint16
SIFT_LOG_STEPS = 1024  # size code = (log2(size) + 8) * 1024: 0.07 % steps, sizes 2**-8 .. 2**56 px
SIFT_SIGMA = 1.6
# Smallest SIFT size on a crop, in crop pixels: sigma * 2**(0.5 / 3) (first layer, offset -0.5), less
# float slack.
SIFT_MIN_SIZE = 1.79
# OpenCV keeps an extremum at integer column c in [5, cols - 6] of its octave (SIFT_IMG_BORDER) and moves
# it by less than half a pixel, so in crop pixels x lies in [4.5 * 2**o, size - 5.5 * 2**o].
SIFT_BORDER_LOW, SIFT_BORDER_HIGH = 4.5, 5.5
ORB_RANK_BITS = 12
ORB_MAX_RANK = (1 << ORB_RANK_BITS) - 1
ORB_FEATURES, ORB_SCALE, ORB_LEVELS, ORB_EDGE = 500, 1.2, 8, 31  # the crop's ORB: OpenCV defaults


def sort_order(points: np.ndarray, steps: int) -> np.ndarray:
    """The permutation ``encode_points`` applies (stable sort by quantised y, then x)."""
    q = np.clip(np.rint(np.asarray(points, np.float64).reshape(-1, 2) * steps), 0, 65535)
    return np.lexsort((q[:, 0], q[:, 1]))


def encode_attrs(detector: str, response: np.ndarray, octave: np.ndarray, size: np.ndarray) -> np.ndarray:
    """uint16 [N] attributes of one image's detections (in detection order)."""
    if detector == "sift":
        code = np.rint((np.log2(np.maximum(np.asarray(size, np.float64), 1e-6)) + 8) * SIFT_LOG_STEPS)
        return np.clip(code, 0, 65535).astype(ATTR_DTYPE)
    if detector == "orb":
        rank = np.empty(len(response), np.int64)
        rank[np.argsort(-np.asarray(response, np.float64), kind="stable")] = np.arange(len(response))
        level = np.clip(np.asarray(octave, np.int64), 0, 15)
        return ((level << ORB_RANK_BITS) | np.minimum(rank, ORB_MAX_RANK)).astype(ATTR_DTYPE)
    raise ValueError(f"no crop-time selection for detector {detector!r}")


def crop_scale(crop_width: int, crop_height: int, detect_scale: np.ndarray, size: int = 192) -> float:
    """Crop pixels per detect-size pixel (geometric mean of the two axes)."""
    sx = size / crop_width / float(detect_scale[0])
    sy = size / crop_height / float(detect_scale[1])
    return math.sqrt(sx * sy)


def orb_quota(nfeatures: int = ORB_FEATURES, scale: float = ORB_SCALE, levels: int = ORB_LEVELS) -> list[int]:
    """OpenCV's features per pyramid level (geometric, the last level takes the rest)."""
    factor = 1.0 / scale
    per = nfeatures * (1 - factor) / (1 - factor**levels)
    quota = []
    for _ in range(levels - 1):
        quota.append(round(per))
        per *= factor
    return [*quota, max(nfeatures - sum(quota), 0)]




def select_in_crop(detector: str, xy: np.ndarray, attrs: np.ndarray, scale: float, size: int = 192) -> np.ndarray:
    """bool [K]: which of a crop's points (``xy`` in crop pixels, ``attrs`` theirs) the crop keeps."""
    xy = np.asarray(xy, np.float64).reshape(-1, 2)
    attrs = np.asarray(attrs).astype(np.int64)
    if detector == "sift":
        crop_size = np.exp2(attrs / SIFT_LOG_STEPS - 8) * scale
        octave = np.floor(np.log2(crop_size / SIFT_SIGMA) - 1 / 6) - 1  # layer + offset spans (1/6, 7/6)
        pixel = np.exp2(octave)[:, None]  # the octave's pixel, in crop pixels
        inside = ((xy >= SIFT_BORDER_LOW * pixel) & (xy <= size - SIFT_BORDER_HIGH * pixel)).all(axis=1)
        return (crop_size >= SIFT_MIN_SIZE) & inside
    if detector != "orb":
        raise ValueError(f"no crop-time selection for detector {detector!r}")
    level = (attrs >> ORB_RANK_BITS) + round(math.log(scale) / math.log(ORB_SCALE))
    rank = attrs & ORB_MAX_RANK
    quota = np.array(orb_quota())
    factors = ORB_SCALE ** np.arange(ORB_LEVELS)
    last = np.array([round(size / f) - 1 - ORB_EDGE for f in factors], np.float64)  # the level's far border
    candidate = np.flatnonzero((level >= 0) & (level < ORB_LEVELS))
    lv = level[candidate]
    at_level = xy[candidate] / factors[lv][:, None]
    inside = ((at_level >= ORB_EDGE) & (at_level <= last[lv][:, None])).all(axis=1)
    candidate, lv = candidate[inside], lv[inside]
    # One sort by (level, rank): each level's strongest come first; keep the first ``quota`` of each.
    order = np.lexsort((rank[candidate], lv))
    candidate, lv = candidate[order], lv[order]
    position = np.arange(len(lv)) - np.searchsorted(lv, lv, side="left")
    keep = np.zeros(len(attrs), bool)
    keep[candidate[position < quota[lv]]] = True
    return keep
