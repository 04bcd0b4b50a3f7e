"""Canonical resize: the image the cache's detector sees (shorter side = ``detect_size``)."""

from __future__ import annotations

import cv2
import numpy as np


def canonical_size(height: int, width: int, detect_size: int) -> tuple[int, int]:
    """(height, width) after scaling the shorter side to ``detect_size`` (longer side rounded)."""
    short = min(height, width)
    return (
        max(1, round(height * detect_size / short)),
        max(1, round(width * detect_size / short)),
    )


def canonical_resize(image: np.ndarray, detect_size: int, aliased: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Resize so the shorter side is ``detect_size``; returns ``(resized uint8, scale)``.

    ``scale`` is float64 ``[2]`` = (sx, sy), the per-axis ratio resized/source. The two differ only by
    the rounding of the longer side, but using the exact per-axis ratio keeps the far edge exact.
    With ``points [N,2]`` (x, y) it broadcasts: OpenCV pixel centres map as
    ``p_resized = (p_source + 0.5) * scale - 0.5``.
    INTER_AREA when shrinking (no aliasing), INTER_LINEAR when enlarging (e.g. CIFAR 32 -> 256).
    ``aliased=True`` shrinks with INTER_LINEAR too, like the original's crop (bilinear, antialias off):
    selection caches use it, so the detector sees the same kind of aliasing as the per-crop detector
    (bench/fidelity.py, ImageNet-sized photos: SIFT mean-weight ratio 1.058 -> 1.029).
    """
    height, width = image.shape[:2]
    new_h, new_w = canonical_size(height, width, detect_size)
    scale = np.array([new_w / width, new_h / height], dtype=np.float64)
    if (new_h, new_w) == (height, width):
        return np.ascontiguousarray(image, dtype=np.uint8), scale
    shrinking = new_h * new_w < height * width
    interpolation = cv2.INTER_AREA if shrinking and not aliased else cv2.INTER_LINEAR
    resized = cv2.resize(np.ascontiguousarray(image), (new_w, new_h), interpolation=interpolation)
    return resized, scale




# The coordinate convention between detect-size and source pixels is part of the cache's contract.
from kamim.cache.points import from_source, to_source  # noqa: E402, F401
