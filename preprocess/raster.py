"""The original's keypoint map: each keypoint drawn as OpenCV's default marker (radius-3, 1-px
anti-aliased ring with 4 fractional bits), a pixel being 1 wherever anything was drawn.

OpenCV places a ring at the centre rounded to 1/16 px, so the ring's pixels depend only on the point's
position modulo 1/16 px: a 16x16 table of small stamps, OR-ed together, reproduces
``cv2.drawKeypoints`` pixel for pixel away from the image border (within a few pixels of the border
OpenCV clips its anti-aliased ring and draws a few pixels fewer). The stamps are measured from OpenCV
itself once per process, so they follow the installed OpenCV.
"""

from __future__ import annotations

import os
from functools import lru_cache
from pathlib import Path

import cv2
import numpy as np

SUBPIXEL = 16  # OpenCV draws keypoints with shift=4, i.e. centres rounded to 1/16 px
STAMP_RADIUS = 6  # rings reach about 4 px from the centre; 6 leaves room for the anti-aliasing
STAMP = 2 * STAMP_RADIUS + 1
_PROBE = 32  # canvas on which each stamp is measured, large enough that nothing is clipped


def ring_map_opencv(points: np.ndarray, size: int | tuple[int, int] = 192) -> np.ndarray:
    """The exact reference: ``sign(cv2.drawKeypoints(zeros, kps, color=(255,0,0))[..., 0])``."""
    height, width = (size, size) if isinstance(size, int) else size
    canvas = np.zeros((height, width, 3), dtype=np.uint8)
    points = np.asarray(points, dtype=np.float32).reshape(-1, 2)
    keypoints = [cv2.KeyPoint(float(x), float(y), 1.0) for x, y in points]
    drawn = cv2.drawKeypoints(canvas, keypoints, None, color=(255, 0, 0))
    return (drawn[..., 0] > 0).astype(np.float32)


# Near a border OpenCV clips the ring's polygon to the image before anti-aliasing, so a point within a
# few pixels of an edge draws fewer pixels than its free stamp. Each axis is therefore in one of
# NUM_STATES states: near the low edge at integer distance d in [-NEAR_OUT, NEAR_IN), near the high edge
# likewise, or far from both. Stamps are measured for every (state_y, state_x, fy, fx).
NEAR_IN = 7  # from this distance on, the border no longer changes the ring (checked when measured)
NEAR_OUT = 3  # points up to 3 px outside still touch the image; further out they draw nothing
NEAR = NEAR_IN + NEAR_OUT
FAR = 2 * NEAR
NUM_STATES = FAR + 1
MIN_SIZE = 2 * NEAR_IN + 2


def _probe_position(state: int) -> tuple[int, int]:
    """(integer centre, canvas length) that puts a probe in ``state`` along one axis."""
    if state == FAR:
        return _PROBE // 2, _PROBE
    if state < NEAR:
        return state - NEAR_OUT, _PROBE  # distance to the low edge
    return _PROBE - 1 - (state - NEAR - NEAR_OUT), _PROBE  # distance to the high edge


def _axis_state(position, length: int, xp=np):  # noqa: ANN001, ANN202
    """State of integer centres along an axis of ``length`` pixels; -1 where the point draws nothing."""
    low = position + NEAR_OUT
    high = (length - 1 - position) + NEAR_OUT
    state = xp.where(low < NEAR, low, xp.where(high < NEAR, NEAR + high, xp.full_like(position, FAR)))
    return xp.where((low < 0) | (high < 0), xp.full_like(position, -1), state)


def _table_path() -> Path:
    root = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "kamim"
    return root / f"ring-stamps-v1-opencv{cv2.__version__}.npy"


@lru_cache(maxsize=1)
def ring_stamps() -> np.ndarray:
    """[S, S, 16, 16, 13, 13] bool: the ring drawn by OpenCV for a point in border state (sy, sx) at
    fractional offset (fy/16, fx/16), its integer centre at [6, 6] of the window.

    Measuring all 113k stamps takes a few seconds, so the table is kept (bit-packed, 2.4 MB) in the user
    cache directory, keyed by the OpenCV version.
    """
    shape = (NUM_STATES, NUM_STATES, SUBPIXEL, SUBPIXEL, STAMP, STAMP)
    path = _table_path()
    try:
        packed = np.load(path, allow_pickle=False)
        return np.unpackbits(packed, count=int(np.prod(shape))).astype(bool).reshape(shape)
    except (OSError, ValueError):
        pass
    stamps = _measure_stamps()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
        with open(tmp, "wb") as f:
            np.save(f, np.packbits(stamps.reshape(-1)), allow_pickle=False)
        os.replace(tmp, path)
    except OSError:
        pass  # a read-only home only costs the measurement again next time
    return stamps


def _measure_stamps() -> np.ndarray:
    stamps = np.zeros((NUM_STATES, NUM_STATES, SUBPIXEL, SUBPIXEL, STAMP, STAMP), dtype=bool)
    pad = 2 * STAMP_RADIUS  # probes may sit outside the canvas
    for sy in range(NUM_STATES):
        cy, height = _probe_position(sy)
        for sx in range(NUM_STATES):
            cx, width = _probe_position(sx)
            for fy in range(SUBPIXEL):
                for fx in range(SUBPIXEL):
                    point = np.array([[cx + fx / SUBPIXEL, cy + fy / SUBPIXEL]], dtype=np.float32)
                    ring = np.pad(ring_map_opencv(point, (height, width)) > 0, pad)
                    top, left = cy + pad - STAMP_RADIUS, cx + pad - STAMP_RADIUS
                    window = ring[top : top + STAMP, left : left + STAMP]
                    if window.sum() != ring.sum():
                        raise RuntimeError("OpenCV's keypoint ring is larger than the stamp window")
                    stamps[sy, sx, fy, fx] = window
    for fx in range(SUBPIXEL):  # the first 'far' distance on either side must draw the free ring
        for x in (NEAR_IN + fx / SUBPIXEL, _PROBE - 1 - NEAR_IN + fx / SUBPIXEL):
            ring = ring_map_opencv(np.array([[x, _PROBE // 2]], dtype=np.float32), _PROBE)
            if ring.sum() != stamps[FAR, FAR, 0, fx].sum():
                raise RuntimeError("OpenCV clips keypoint rings further from the border than expected")
    return stamps


@lru_cache(maxsize=1)
def stamp_offsets() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per stamp (flattened (sy, sx, fy, fx)), the (dy, dx) of its 'on' pixels, padded to K:
    dy, dx [N, K] int8 and valid [N, K] bool."""
    stamps = ring_stamps().reshape(-1, STAMP, STAMP)
    on = stamps.reshape(len(stamps), -1)
    k = int(on.sum(1).max())
    order = np.argsort(~on, axis=1, kind="stable")[:, :k]  # indices of 'on' pixels first
    valid = np.take_along_axis(on, order, axis=1)
    dy = (order // STAMP - STAMP_RADIUS).astype(np.int8)
    dx = (order % STAMP - STAMP_RADIUS).astype(np.int8)
    return dy, dx, valid


def _stamp_index(sy, sx, fy, fx):  # noqa: ANN001, ANN202
    return ((sy * NUM_STATES + sx) * SUBPIXEL + fy) * SUBPIXEL + fx


def ring_map(points: np.ndarray, size: int | tuple[int, int] = 192) -> np.ndarray:
    """float32 [H, W] of {0, 1}: the ring map of ``points`` (x, y), by stamp table (numpy)."""
    height, width = (size, size) if isinstance(size, int) else size
    if min(height, width) < MIN_SIZE:
        return ring_map_opencv(points, (height, width))
    out = np.zeros(height * width, dtype=np.float32)
    points = np.asarray(points, dtype=np.float64).reshape(-1, 2)
    if len(points):
        dy, dx, valid = stamp_offsets()
        fixed = np.rint(points * SUBPIXEL).astype(np.int64)  # cvRound: half to even
        ix, iy = fixed[:, 0] >> 4, fixed[:, 1] >> 4
        sx, sy = _axis_state(ix, width), _axis_state(iy, height)
        drawn = (sx >= 0) & (sy >= 0)
        stamp = _stamp_index(sy, sx, fixed[:, 1] & 15, fixed[:, 0] & 15)[drawn]
        ys = iy[drawn, None] + dy[stamp]
        xs = ix[drawn, None] + dx[stamp]
        keep = valid[stamp] & (ys >= 0) & (ys < height) & (xs >= 0) & (xs < width)
        out[ys[keep] * width + xs[keep]] = 1.0
    return out.reshape(height, width)


_torch_tables: dict = {}


NOWHERE = 1 << 30  # a stamp's padding entries: far past any canvas, so the raster clamps them to its spare slot


def _flat_offsets_on(device, width: int):  # noqa: ANN001, ANN202
    """Per stamp, its 'on' pixels as flat offsets ``dy * width + dx`` (int32), NOWHERE where padded."""
    import torch

    key = (str(device), width)
    if key not in _torch_tables:
        dy, dx, valid = stamp_offsets()
        flat = np.where(valid, dy.astype(np.int32) * width + dx.astype(np.int32), NOWHERE).astype(np.int32)
        _torch_tables[key] = torch.as_tensor(flat, device=device)
    return _torch_tables[key]


def ring_maps_torch(points, counts, size: int | tuple[int, int] = 192, compile_: bool = False):  # noqa: ANN001, ANN201
    """Batched ring maps on the points' device: points [B, P, 2] (x, y), counts [B] -> float32 [B, H, W].

    Static shapes only (points beyond ``counts`` or too far outside the canvas are routed to a spare
    slot that is dropped), so it traces well on XLA as well as on CUDA and CPU. A border state's stamp
    holds only in-canvas pixels (it was measured on a clipped canvas), so no per-pixel bounds test is
    needed and a flat offset never wraps to the next row.

    ``compile_`` (--compile): the same computation through torch.compile (CPU and CUDA), one graph for any
    point count P, the index arithmetic fused into the fill instead of materialising [B, P, K] int64
    pixel indices (K = 60 ring pixels per point). It sets the same pixels, so the maps are equal bit for
    bit (tests/preprocess/test_raster.py).
    """
    height, width = (size, size) if isinstance(size, int) else size
    if min(height, width) < MIN_SIZE:
        raise ValueError(f"ring maps need a canvas of at least {MIN_SIZE} px, got {height}x{width}")
    if points.shape[0] * height * width + 8 * width >= NOWHERE:
        raise ValueError(f"ring maps for {points.shape[0]} canvases of {height}x{width} px at once: split the batch")
    raster = _compiled_raster() if compile_ else _raster
    return raster(points, counts.to(points.device), _flat_offsets_on(points.device, width), height, width)


@lru_cache(maxsize=1)
def _compiled_raster():  # noqa: ANN202
    import torch

    # dynamic: one graph for every point count (batches pad P to multiples of 64, so a static compile
    # would recompile for most batches) and batch size.
    return torch.compile(_raster, dynamic=True)


def _raster(points, counts, offsets, height: int, width: int):  # noqa: ANN001, ANN202
    import torch

    batch, num_points = points.shape[:2]
    device = points.device
    # float32/int32 like OpenCV (cvRound(pt.x * 16) on a float; x16 is exact); TPUs lack float64.
    fixed = torch.round(points.to(torch.float32) * SUBPIXEL).to(torch.int32)  # round-half-even like cvRound
    # Floor division, not >> 4: torch_xla 2.9 shifts negative integers towards zero.
    ix = fixed[..., 0].div(SUBPIXEL, rounding_mode="floor")
    iy = fixed[..., 1].div(SUBPIXEL, rounding_mode="floor")
    sx, sy = _axis_state(ix, width, torch), _axis_state(iy, height, torch)
    present = torch.arange(num_points, device=device, dtype=torch.int32)[None, :] < counts[:, None]
    present = present & (sx >= 0) & (sy >= 0)
    stamp = _stamp_index(sy.clamp(min=0), sx.clamp(min=0), fixed[..., 1] & 15, fixed[..., 0] & 15)  # [B, P]
    spare = batch * height * width
    base = (torch.arange(batch, device=device, dtype=torch.int64)[:, None] * height + iy) * width + ix
    base = torch.where(present, base, NOWHERE)
    # [B, P, K] pixel indices, built in one int64 pass: a padding entry (NOWHERE) or an absent point lands
    # past the canvas and is clamped onto the spare slot, so no validity mask is gathered or applied.
    flat = torch.add(base[..., None], offsets[stamp]).clamp_(max=spare)
    out = torch.zeros(spare + 1, dtype=torch.uint8, device=device)
    out.index_fill_(0, flat.reshape(-1), 1)  # "set": duplicates and order do not matter
    return out[:spare].reshape(batch, height, width).to(torch.float32)
