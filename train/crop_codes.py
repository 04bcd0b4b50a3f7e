"""Stored keypoint codes moved straight into a crop: one affine map per axis from the cache's integer codes.

A zarr cache stores each point as integer codes at detect size (1/steps px; kamim.cache.points). The
first release decoded them to source pixels (``to_source``) and then moved those through the crop
(``crop_points``): two float maps and about ten numpy calls per sample, 40-90 us a sample in a loader
worker. Both maps are affine, so per axis they fold into crop = code * a + b, and which points the crop
keeps is an integer interval of codes [lo, hi).

- ``crop_codes``: the folded map on the CPU, for one sample (selection caches need crop coordinates in
  the worker to choose their points).
- ``code_crop`` + ``batch_points``: for plain caches the worker reads the codes (``point_codes``),
  keeps the crop's rows (``crop_rows``: the codes are sorted by y, so one binary search) and computes the
  crop's four numbers per axis; the batch carries the codes padded, as stored (uint16 bits as int16),
  and one float32 row per sample (``code_meta``: its count and both axes' maps), and ``batch_points``
  maps them on the device, in one vectorised step for the whole batch, with the points left of or right of
  the crop moved far off the canvas (the ring raster drops them; it draws with "set", so order and
  padding never matter). The per-sample cost in the worker is then one ``pread``, a checksum and a
  binary search.
- ``point_crop`` + ``source_batch_points``: webdataset samples carry float32 source points, not codes. The worker
  hands them over as read with the crop's numbers (``point_crop``), and ``batch_points`` moves them
  through the crop on the device with crop_points' own float32 steps: the same bits as the worker's
  ``crop_points`` on the CPU and CUDA, within one float32 rounding on XLA (bench/wds_stream.py measures
  what the worker saves).
"""

from __future__ import annotations

import bisect
import math

import numpy as np
import torch

from .augment import CropParams

FAR = -1.0e4  # where dropped points go: far enough off the canvas that no ring reaches it


def _crop_map(steps: int, sx: float, sy: float, crop: CropParams, size: int) -> list:
    """The map code -> crop pixel, per axis (a, b, lo, hi) for x then y: crop = code * a + b, and the kept
    codes are [lo, hi), clamped to the codes' range [0, 2**16] (hi >= lo).

    crop = ((code / steps + 0.5) / scale - start) * size / length - 0.5 (then size - 1 - crop when
    flipped): ``to_source`` followed by ``crop_points``. A point is kept when its crop coordinate lies in
    [-0.5, size - 0.5), decided after the flip as crop_points does (so (-0.5, size - 0.5] before it).
    Plain Python on floats and ints, written out: it runs once per sample in the loader worker, where
    every call and numpy op costs a cold microsecond or more."""
    out: list = []
    for scale, start, length, flip in ((sx, crop.left, crop.width, crop.hflip), (sy, crop.top, crop.height, crop.vflip)):
        a = size / (steps * scale * length)
        b = (0.5 / scale - start) * size / length - 0.5
        if flip:
            a, b = -a, size - 1 - b
            low = math.floor(steps * (start * scale - 0.5)) + 1
            high = math.floor(steps * ((start + length) * scale - 0.5)) + 1
        else:
            low, high = math.ceil(steps * (start * scale - 0.5)), math.ceil(steps * ((start + length) * scale - 0.5))
        low = 0 if low < 0 else 0x10000 if low > 0x10000 else low
        out += (a, b, low, low if high < low else 0x10000 if high > 0x10000 else high)
    return out


def crop_rows(codes: np.ndarray, y_low: int, y_high: int) -> tuple[int, int]:
    """(first, last): the stored points whose y code is in [y_low, y_high) are ``first:last`` (the points
    are sorted by y, so two binary searches; on a memoryview, cheaper per sample than numpy's)."""
    n = len(codes) // 2
    view = memoryview(codes)
    first = bisect.bisect_left(view, y_low, n, 2 * n) - n if y_low > 0 else 0
    last = bisect.bisect_left(view, y_high, n, 2 * n) - n if y_high <= 0xFFFF else n
    return first, max(first, last)


def crop_codes(codes: np.ndarray, steps: int, sx: float, sy: float, crop: CropParams,
               size: int = 192) -> tuple[np.ndarray, int, np.ndarray]:
    """A cache's stored codes (``ZarrCache.point_codes``) moved straight into the crop: (xy, first, inside).

    xy: float32 [K,2] (a column-major view): the exact crop coordinates computed in float64 from the
    integer codes and rounded once, so they equal ``crop_points(points(i), crop)`` (which rounds to float32
    at every step) to float32 rounding, closer to the exact values than it (<= 1e-4 px apart at 192 px).
    The kept points are ``first + flatnonzero(inside)`` of the stored order. Which points are kept is
    decided exactly, on the integer codes; the float path can differ from it only for a point within
    float rounding (~1e-5 px) of the crop's edge. Since the y codes are sorted, the crop's rows are one
    binary search, and only their x codes are tested. The loader uses this for selection caches (their
    crop-time rule needs the crop coordinates); plain caches hand the codes to the step (code_crop)."""
    ax, bx, x_low, x_high, ay, by, y_low, y_high = _crop_map(steps, sx, sy, crop, size)
    first, last = crop_rows(codes, y_low, y_high)
    window = codes.reshape(2, -1)[:, first:last]
    if x_high - x_low > 0xFFFF:
        inside = np.ones(last - first, bool)
    else:  # x_low <= x < x_high as one unsigned compare: codes below x_low wrap round to >= 2**16 - x_low
        inside = np.subtract(window[0], np.uint16(min(x_low, 0xFFFF)), dtype=np.uint16) < x_high - x_low
    out = window.compress(inside, axis=1) * np.array([[ax], [ay]])  # float64: one rounding, at the end
    out += np.array([[bx], [by]])
    return out.astype(np.float32).T, first, inside


def code_crop(steps: int, sx: float, sy: float, crop: CropParams, size: int = 192) -> tuple[float, ...]:
    """The crop's map of a sample's stored codes, (a, b, lo, hi) for x then y (eight numbers): a kept code c
    (lo <= c < hi, bounds clamped to the codes' range [0, 2**16]) lands at (c - lo) * a + b crop pixels; b
    is measured from lo, so on the device the float32 product stays small and lands within ~1e-5 px of
    the exact value. This runs once per sample in the loader worker; ``crop_meta`` only packs a batch of
    them."""
    ax, bx, x_low, x_high, ay, by, y_low, y_high = _crop_map(steps, sx, sy, crop, size)
    return ax, bx + ax * x_low, x_low, x_high, ay, by + ay * y_low, y_low, y_high


def crop_meta(crops: list[tuple[float, ...]], counts: list[int]) -> np.ndarray:
    """A batch's per-sample crop tuples (``code_crop``'s eight numbers or ``point_crop``'s seven) and point
    counts -> float32 [B, 1 + tuple length]: (count, then the tuple). Counts and integers (bounds up to
    2**16, crop offsets) are exact in float32; the maps' floats are rounded to float32 as the step uses
    them (``point_crop``'s scales exactly as numpy rounds a Python float multiplying a float32 array in
    ``crop_points``)."""
    rows = np.empty((len(crops), 1 + len(crops[0])), dtype=np.float32)
    rows[:, 0] = counts
    rows[:, 1:] = np.array(crops, dtype=np.float64)
    return rows


def point_crop(crop: CropParams, size: int = 192) -> tuple[float, ...]:
    """The numbers ``crop_points`` moves a sample's source points by: (left, top, size / width, size /
    height, hflip, vflip, size). One tuple per sample from the loader worker; ``crop_meta`` packs them."""
    return crop.left, crop.top, size / crop.width, size / crop.height, crop.hflip, crop.vflip, size


def source_batch_points(points: torch.Tensor, meta: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """float32 source points [B,P,2] and their ``crop_meta`` rows [B,8] -> (crop points [B,P,2], counts
    [B]), points off the crop moved to FAR. crop_points' operations in its order, each rounded to float32:
    eager CPU and CUDA run one kernel per op, so the bits equal the worker's ``crop_points``; XLA's compiler
    fuses the multiply and the subtract into one rounding, so there a coordinate may differ in its last bit
    (~1e-5 px, the same order as the plain caches' code map on any device)."""
    rows = meta[:, None, :]  # [B,1,8]: broadcast over the points
    origin, scale, flip, size = rows[..., 1:3], rows[..., 3:5], rows[..., 5:7] > 0, rows[..., 7:8]
    xy = (points - origin + 0.5) * scale - 0.5
    xy = torch.where(flip, (size - 1) - xy, xy)
    kept = ((xy >= -0.5) & (xy < size - 0.5)).all(dim=-1, keepdim=True)
    return xy.masked_fill(~kept, FAR), meta[:, 0].to(torch.int64)


def batch_points(batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """(points [B,P,2] float32 crop pixels, counts [B]) of a collated batch, on the batch's device.

    A batch of plain-cache samples carries ``codes`` [B,2,P] (each sample's x codes, then its y codes, as
    stored: uint16 bits as int16) and ``code_meta`` float32 [B,9] (``crop_meta``), numpy arrays from the
    loader (train.data.collate says why) and tensors once ``Device.to`` has placed them; its points are
    mapped here, dropped ones moved to FAR. A webdataset batch carries ``source_points`` [B,P,2] and
    ``source_meta`` [B,8] (``source_batch_points``). A selection cache's batch carries its crop points and
    counts already (``points`` [B,P,2], ``counts`` [B])."""
    if "source_points" in batch:
        return source_batch_points(torch.as_tensor(batch["source_points"]), torch.as_tensor(batch["source_meta"]))
    if "codes" not in batch:
        return torch.as_tensor(batch["points"]), torch.as_tensor(batch["counts"])
    codes = torch.as_tensor(batch["codes"]).to(torch.int32) & 0xFFFF  # the stored uint16 values again
    meta = torch.as_tensor(batch["code_meta"])
    counts, axes = meta[:, 0].to(torch.int64), meta[:, 1:].reshape(-1, 2, 4)  # per axis (a, b, lo, hi)
    low, high = axes[..., 2:3].to(torch.int32), axes[..., 3:4].to(torch.int32)  # [B,2,1]
    kept = ((codes >= low) & (codes < high)).all(dim=1)  # [B,P]
    points = ((codes - low).to(torch.float32) * axes[..., 0:1] + axes[..., 1:2]).transpose(1, 2)  # [B,P,2]
    return points.masked_fill(~kept[..., None], FAR), counts


def batch_point_lists(batch: dict[str, torch.Tensor]) -> list[np.ndarray]:
    """Each sample's kept crop points (float32 [K,2], stored order) of a collated batch: for pictures and
    checks; training rasters ``batch_points`` directly."""
    points, counts = batch_points(batch)
    rows = [row[:count] for row, count in zip(points.cpu().numpy(), counts.tolist(), strict=True)]
    return [row[row[:, 0] > FAR / 2] for row in rows]
