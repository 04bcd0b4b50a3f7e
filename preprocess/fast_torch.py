"""FAST on a batch of uint8 images with torch ops, bit-exact to ``cv2.FastFeatureDetector_create()``.

FAST is integer arithmetic on the gray image, so it can run where the model runs (CPU, CUDA, XLA) and
give the original's per-crop keypoints without a cache or any loader work (DESIGN.md 4.3). What OpenCV
does, established by testing against it (tests/preprocess/test_fast_torch.py):

- gray: an RGB array handed to OpenCV as is is converted as if it were BGR, with OpenCV's fixed-point
  coefficients and rounding (measured from ``cv2.cvtColor`` once per process: versions differ);
- candidates: pixels at least 3 px from every edge (none on images under 7 px);
- segment test: 9 contiguous pixels (wrapping around) of the 16-pixel radius-3 Bresenham circle all
  brighter than p + t or all darker than p - t, both strict;
- score: the largest threshold at which the pixel is still a corner, i.e. the best 9-pixel arc's
  smallest |difference| minus 1;
- non-maximum suppression: a corner survives only if its score is strictly greater than all 8
  neighbours' (non-corners count as 0, so ties suppress both).

Everything is dense maps and masks with static shapes (no nonzero()), so it traces on XLA.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import lru_cache

import numpy as np
import torch

# The 16 pixels of the radius-3 Bresenham circle as (dx, dy), in order around the circle (only the
# cyclic order matters for the segment test and the score).
CIRCLE = ((0, 3), (1, 3), (2, 2), (3, 1), (3, 0), (3, -1), (2, -2), (1, -3),
          (0, -3), (-1, -3), (-2, -2), (-3, -1), (-3, 0), (-3, 1), (-2, 2), (-1, 3))
ARC = 9  # TYPE_9_16: 9 contiguous pixels of 16
BORDER = 3  # the circle's radius: pixels closer to an edge are never candidates
GRAY_MODES = ("bgr", "rgb")
CPU_CHUNK = 8  # images per pass on a CPU (see _per_chunk)

# (shift, weight of the array's channel 0, 1, 2) for OpenCV's BGR2GRAY on uint8, newest first. Which
# one the installed OpenCV uses is measured (gray_coefficients); RGB2GRAY swaps channels 0 and 2.
_GRAY_CANDIDATES = ((15, 3735, 19235, 9798), (14, 1868, 9617, 4899))


@lru_cache(maxsize=1)
def gray_coefficients() -> tuple[int, int, int, int]:
    """(shift, w0, w1, w2) such that ``cv2.cvtColor(x, COLOR_BGR2GRAY) == (w . x + 2^(shift-1)) >> shift``
    on the installed OpenCV, checked on 65,536 random colours (the candidates differ on ~0.3% of them)."""
    import cv2

    colours = np.random.default_rng(0).integers(0, 256, size=(256, 256, 3), dtype=np.uint8)
    reference = cv2.cvtColor(colours, cv2.COLOR_BGR2GRAY).astype(np.int64)
    values = colours.astype(np.int64)
    for shift, *weights in _GRAY_CANDIDATES:
        ours = (values @ np.array(weights, dtype=np.int64) + (1 << (shift - 1))) >> shift
        if np.array_equal(ours, reference):
            return (shift, *weights)
    raise RuntimeError(f"OpenCV {cv2.__version__}'s BGR2GRAY matches no known fixed-point formula")


def gray_torch(images: torch.Tensor, gray: str = "bgr") -> torch.Tensor:
    """uint8 [B,3,H,W] -> uint8 [B,H,W], exactly what OpenCV's FAST sees for the same HWC array.

    ``gray="bgr"``: the RGB array handed to OpenCV as is (the original); ``"rgb"``: ``COLOR_RGB2GRAY``.
    """
    if gray not in GRAY_MODES:
        raise ValueError(f"gray {gray!r} not in {GRAY_MODES}")
    shift, *weights = gray_coefficients()
    if gray == "rgb":
        weights = weights[::-1]
    channels = images.to(torch.int32)  # the only new int32 buffer: the rest works in place in channel 0
    total = channels[:, 0].mul_(weights[0]).add_(channels[:, 1], alpha=weights[1])
    total = total.add_(channels[:, 2], alpha=weights[2]).add_(1 << (shift - 1))
    # >> on a non-negative sum is floor division everywhere (torch_xla differs only for negatives)
    return (total >> shift).to(torch.uint8)


def _best_arcs(circle: list[torch.Tensor], darker: bool) -> torch.Tensor:
    """Over the 16 arcs of 9 contiguous circle pixels (uint8 views of the gray image):
    darker: the smallest arc maximum; brighter: the largest arc minimum.

    As OpenCV does, only arcs starting at even k are formed explicitly: the 8 inner pixels k+1..k+8
    combined with whichever end, k or k+9, is better. About 47 elementwise uint8 operations on
    [B,h,w] planes, nothing stacked: that is what keeps this cheap on a CPU.
    """
    inner, outer = (torch.maximum, torch.minimum) if darker else (torch.minimum, torch.maximum)
    pairs = {j: inner(circle[j], circle[(j + 1) % 16]) for j in range(1, 16, 2)}  # pixels j, j+1
    quads = {j: inner(pairs[j], pairs[(j + 2) % 16]) for j in range(1, 16, 2)}  # j .. j+3
    best = None
    for k in range(0, 16, 2):
        eight = inner(quads[k + 1], quads[(k + 5) % 16])  # k+1 .. k+8
        arc = inner(eight, outer(circle[k], circle[(k + 9) % 16]))  # the better of the two 9-arcs
        best = arc if best is None else outer(best, arc)
    return best


def _best_differences(gray: torch.Tensor) -> torch.Tensor:
    """Per interior pixel, the best 9-arc's smallest |difference| to the centre, darker or brighter
    (0 when no arc lies all on one side): uint8 [B,H-6,W-6]. A corner at threshold t iff > t.

    An arc all darker than the centre p has smallest difference p - max(arc); all brighter,
    min(arc) - p. So the search runs on the gray values themselves and p is subtracted once at the
    end, saturating at 0 (a negative best is no corner at any threshold).
    """
    gray = gray.to(torch.uint8)
    height, width = gray.shape[-2:]
    rows, cols = height - 2 * BORDER, width - 2 * BORDER
    centre = gray[:, BORDER:BORDER + rows, BORDER:BORDER + cols]
    circle = [gray[:, BORDER + dy:BORDER + dy + rows, BORDER + dx:BORDER + dx + cols] for dx, dy in CIRCLE]
    lowest_max = _best_arcs(circle, darker=True)
    highest_min = _best_arcs(circle, darker=False)
    darker = centre - torch.minimum(centre, lowest_max)  # max(p - lowest_max, 0) without wrapping
    brighter = highest_min - torch.minimum(highest_min, centre)
    return torch.maximum(darker, brighter)


def fast_scores_torch(gray: torch.Tensor, threshold: int = 10) -> torch.Tensor:
    """OpenCV's FAST-9/16 corner score on the interior, 0 where not a corner: uint8 [B,H-6,W-6].

    gray: integer [B,H,W] in 0..255 with H, W >= 7. The score of a corner is the largest threshold at
    which it is still one (>= ``threshold``); everything else is 0, as in OpenCV's row buffers.
    """
    best = _best_differences(gray)
    return torch.where(best > _clamp_threshold(threshold), best - 1, torch.zeros_like(best))


def _clamp_threshold(threshold: int) -> int:
    return min(max(int(threshold), 0), 255)  # as OpenCV does


def _strict_local_maxima(scores: torch.Tensor) -> torch.Tensor:
    """scores [B,h,w] -> bool: strictly greater than all 8 neighbours (outside counts as 0)."""
    padded = torch.nn.functional.pad(scores, (1, 1, 1, 1))
    rows, cols = scores.shape[-2:]
    across = torch.maximum(torch.maximum(padded[:, :, :cols], padded[:, :, 1:cols + 1]), padded[:, :, 2:])
    around = torch.maximum(torch.maximum(across[:, :rows], across[:, 2:]),
                           torch.maximum(padded[:, 1:rows + 1, :cols], padded[:, 1:rows + 1, 2:]))
    return scores > around


def fast_keypoints_torch(images: torch.Tensor, threshold: int = 10, gray: str = "bgr", nonmax: bool = True,
                         chunk: int | None = None) -> torch.Tensor:
    """FAST keypoints of a batch as a bool map [B,H,W] (True at each keypoint's pixel), on the images'
    device. images: uint8 [B,3,H,W] RGB (converted as ``gray`` says) or integer gray [B,H,W].

    Equal to ``cv2.FastFeatureDetector_create(threshold, nonmax)`` (TYPE_9_16) on each image's HWC
    array (``gray="rgb"``: on ``cv2.cvtColor(x, COLOR_RGB2GRAY)``), as ``detect.detect_keypoints`` does.
    ``chunk``: images per pass (default: CPU_CHUNK on a CPU, the whole batch elsewhere).
    """
    return _per_chunk(images, chunk, lambda part: _keypoints(part, threshold, gray, nonmax))


def _per_chunk(images: torch.Tensor, chunk: int | None, work: Callable[[torch.Tensor], torch.Tensor]) -> torch.Tensor:
    # A CPU pass over a whole batch streams ~40 live planes of B images through memory; a few images at
    # a time stay in cache. GPUs and XLA want the one big pass (static shapes, few kernels).
    if chunk is None:
        chunk = CPU_CHUNK if images.device.type == "cpu" else max(1, len(images))
    if len(images) <= chunk:
        return work(images)
    return torch.cat([work(part) for part in images.split(chunk)])


def _keypoints(images: torch.Tensor, threshold: int, gray: str, nonmax: bool) -> torch.Tensor:
    if images.dim() == 4:
        images = gray_torch(images, gray)
    batch, height, width = images.shape
    out = torch.zeros(batch, height, width, dtype=torch.bool, device=images.device)
    if min(height, width) < 2 * BORDER + 1:  # no pixel is 3 px from every edge
        return out
    best = _best_differences(images)
    threshold = _clamp_threshold(threshold)
    if nonmax:
        # OpenCV keeps a corner whose score (best - 1; 0 off corners) beats all 8 neighbours. best - t
        # at corners and 0 elsewhere (t at least 1) gives the same comparisons, in two uint8 ops and
        # no bool masks (slow on a CPU): corners keep their order, and beating a 0 means best > t >= 1.
        floor = max(threshold, 1)
        corners = _strict_local_maxima(best - torch.minimum(best, torch.full_like(best, floor)))
    else:
        corners = best > threshold
    out[:, BORDER:height - BORDER, BORDER:width - BORDER] = corners
    return out


@lru_cache(maxsize=8)
def _ring_runs(height: int, width: int) -> tuple[tuple[int, int, int], ...]:
    """OpenCV's ring around a whole-pixel point as horizontal runs (dy, first dx, length).

    For points at least 3 px from every edge (FAST's candidates) the ring OpenCV draws near a border
    is the free ring cut off at the canvas edge: checked here against the raster module's measured
    border stamps, so the dilation below needs no per-position stamps."""
    from .raster import FAR, MIN_SIZE, STAMP_RADIUS, _axis_state, ring_stamps

    if min(height, width) < MIN_SIZE:
        raise ValueError(f"ring maps need a canvas of at least {MIN_SIZE} px, got {height}x{width}")
    stamps = ring_stamps()[:, :, 0, 0]  # [S, S, 13, 13] at fractional offset 0
    free = stamps[FAR, FAR]
    offsets = np.arange(-STAMP_RADIUS, STAMP_RADIUS + 1)
    for axis_y in (True, False):
        length = height if axis_y else width
        for position in [*range(BORDER, BORDER + 8), *range(length - BORDER - 8, length - BORDER)]:
            inside = (position + offsets >= 0) & (position + offsets < length)
            state = int(_axis_state(np.array([position]), length)[0])
            stamp = stamps[state, FAR] if axis_y else stamps[FAR, state]
            clipped = free & (inside[:, None] if axis_y else inside[None, :])
            if not np.array_equal(stamp, clipped):
                raise RuntimeError("OpenCV's keypoint ring near the border is not the clipped free ring")
    runs = []
    for row, dy in enumerate(offsets):
        line = np.concatenate([[False], free[row], [False]]).astype(np.int8)
        starts, ends = np.flatnonzero(np.diff(line) == 1), np.flatnonzero(np.diff(line) == -1)
        runs += [(int(dy), int(start) - STAMP_RADIUS, int(end - start)) for start, end in zip(starts, ends, strict=True)]
    return tuple(runs)


def _shift_or(out: torch.Tensor, source: torch.Tensor, dy: int, dx: int) -> None:
    """out[:, y + dy, x + dx] |= source[:, y, x] where both are on the canvas."""
    height, width = out.shape[-2:]
    ys, yd = slice(max(-dy, 0), height - max(dy, 0)), slice(max(dy, 0), height - max(-dy, 0))
    xs, xd = slice(max(-dx, 0), width - max(dx, 0)), slice(max(dx, 0), width - max(-dx, 0))
    out[:, yd, xd] |= source[:, ys, xs]


def keypoint_ring_maps_torch(keypoints: torch.Tensor) -> torch.Tensor:
    """bool [B,H,W] keypoint map -> float32 [B,H,W] ring map, equal to ``raster.ring_map_opencv`` of the
    keypoints' (x, y) pixel positions, borders included. Keypoints must lie at least 3 px from every
    edge (as FAST's do) and H, W >= raster.MIN_SIZE.

    A dilation with the ring, done as ~12 horizontal runs on a canvas padded by the ring's reach (so
    runs that start off the canvas still arrive): ``spans[n]`` marks every pixel that has a keypoint
    within n - 1 px to its left, and each run ORs a shifted ``spans[length]`` into the map."""
    from .raster import STAMP_RADIUS

    batch, height, width = keypoints.shape
    runs = _ring_runs(height, width)
    pad = STAMP_RADIUS
    points = torch.nn.functional.pad(keypoints.to(torch.uint8), (pad, pad, pad, pad))
    spans = {1: points}
    for n in range(2, max(length for _, _, length in runs) + 1):
        spans[n] = spans[n - 1].clone()
        _shift_or(spans[n], points, 0, n - 1)
    out = torch.zeros_like(points)
    for dy, dx, length in runs:
        _shift_or(out, spans[length], dy, dx)
    return out[:, pad:pad + height, pad:pad + width].to(torch.float32)


def fast_ring_maps_torch(images: torch.Tensor, threshold: int = 10, gray: str = "bgr",
                         chunk: int | None = None) -> torch.Tensor:
    """uint8 [B,3,H,W] crops -> float32 [B,H,W] ring maps of their FAST keypoints: the online mode's
    ``online_ring_map`` for every crop of the batch, computed on the batch's device."""
    return _per_chunk(images, chunk, lambda part: keypoint_ring_maps_torch(_keypoints(part, threshold, gray, True)))
