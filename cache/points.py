"""Compact keypoint storage: positions quantised at the detect-size scale, sorted and delta-coded.

Per image the points (x, y) at detect size become integers ``qx, qy = round(p * steps)``, sorted by
(y, x). Column 1 stores ``dy`` (the row step from the previous point, mostly 0), column 0 stores
``dx`` from the previous point on the same row, or the absolute ``qx`` when the row changed. Both are
small non-negative integers that the zarr compressor (blosc zstd + byte shuffle, one column per
chunk) squeezes to about one byte per FAST point. Decoding restores the sorted positions exactly, so
the round-trip error is the quantisation alone: at most ``0.5 / steps`` px at detect size
(0 for FAST, whose positions are whole pixels).
"""

from __future__ import annotations

import numpy as np

POINT_DTYPE = np.uint16
MAX_CODE = int(np.iinfo(POINT_DTYPE).max)
# Sub-pixel steps per detect-size pixel. FAST positions are whole pixels; SIFT and ORB are sub-pixel.
# OpenCV draws a keypoint at its centre rounded to 1/16 px (4 fractional bits), so 16 steps make the
# identity case exact (a cache built at the crop's own size gives OpenCV's ring map pixel for pixel):
# round(p * 16) / 16 is what cv2.drawKeypoints rounds to anyway. Caches built with 8 steps (before
# this) stay readable: readers take ``subpixel_steps`` from the manifest.
SUBPIXEL_STEPS = {"fast": 1, "sift": 16, "orb": 16}


def max_side(steps: int) -> int:
    """Largest detect-size image side (pixels) whose positions fit the code dtype (4095 at 16 steps:
    a 16:1 panorama at detect size 256)."""
    return MAX_CODE // steps


def encode_points(points: np.ndarray, steps: int) -> np.ndarray:
    """float [N,2] (x, y) at detect size -> uint16 [N,2] delta codes (sorted by y, then x)."""
    points = np.asarray(points, dtype=np.float64).reshape(-1, 2)
    q = np.clip(np.rint(points * steps), 0, MAX_CODE).astype(np.int64)
    q = q[np.lexsort((q[:, 0], q[:, 1]))]
    dy = np.diff(q[:, 1], prepend=0)
    dx = np.where(dy == 0, np.diff(q[:, 0], prepend=0), q[:, 0])
    dx[:1] = q[:1, 0]
    return np.stack([dx, dy], axis=1).astype(POINT_DTYPE)


def decode_points(codes: np.ndarray, steps: int) -> np.ndarray:
    """uint16 [N,2] delta codes -> float64 [N,2] (x, y) at detect size, sorted by (y, x)."""
    codes = np.asarray(codes).reshape(-1, 2).astype(np.int64)
    if len(codes) == 0:
        return np.zeros((0, 2), dtype=np.float64)
    dx, dy = codes[:, 0], codes[:, 1]
    qy = np.cumsum(dy)
    row_start = dy != 0
    row_start[0] = True
    # x restarts (absolute) at each row start: a cumulative sum segmented at row starts.
    running = np.cumsum(dx)
    start_index = np.maximum.accumulate(np.where(row_start, np.arange(len(dx)), 0))
    qx = running - running[start_index] + dx[start_index]
    return np.stack([qx, qy], axis=1).astype(np.float64) / steps


def decode_ragged(codes: np.ndarray, offsets: np.ndarray, steps: int) -> np.ndarray:
    """All images at once: uint16 [M,2] codes of consecutive images (``offsets`` [N+1]) -> float64 [M,2]
    at detect size, equal to ``decode_points`` image by image (each image's first code is absolute)."""
    codes = np.asarray(codes).reshape(-1, 2).astype(np.int64)
    if len(codes) == 0:
        return np.zeros((0, 2), dtype=np.float64)
    offsets = np.asarray(offsets, dtype=np.int64)
    image_start = np.zeros(len(codes), dtype=bool)
    image_start[offsets[:-1][offsets[:-1] < offsets[1:]]] = True
    index = np.arange(len(codes))
    dx, dy = codes[:, 0], codes[:, 1]
    running_y = np.cumsum(dy)
    first = np.maximum.accumulate(np.where(image_start, index, 0))
    qy = running_y - running_y[first] + dy[first]
    running_x = np.cumsum(dx)
    start = np.maximum.accumulate(np.where(image_start | (dy != 0), index, 0))
    qx = running_x - running_x[start] + dx[start]
    return np.stack([qx, qy], axis=1).astype(np.float64) / steps


def to_source(points: np.ndarray, scale: np.ndarray) -> np.ndarray:
    """Points in resized-image pixels -> source-image pixels (pixel-centre convention), float32."""
    return ((np.asarray(points, np.float64) + 0.5) / scale - 0.5).astype(np.float32)


def from_source(points: np.ndarray, scale: np.ndarray) -> np.ndarray:
    """Points in source-image pixels -> resized-image pixels (pixel-centre convention), float32."""
    return ((np.asarray(points, np.float64) + 0.5) * scale - 0.5).astype(np.float32)


def quantise(points: np.ndarray, steps: int) -> np.ndarray:
    """What the cache will give back for ``points`` (sorted by y, then x): for tests and benchmarks."""
    return decode_points(encode_points(points, steps), steps)
