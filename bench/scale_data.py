"""Synthetic zarr caches of any size, written by the project's own writer (kamim.cache.zarr_store.write_zarr).

FAST-like: Poisson(1,400) whole-pixel points per image; SIFT-like: Poisson(400) sub-pixel points; image
sizes like ImageNet's (shorter side 256 at detect size, aspect 1-1.5). Encoded exactly as
kamim.cache.points.encode_points does (sorted by (y, x), delta codes), but for a whole block of images
at once. Kept under caches/bench/scale/ (gitignored) and reused across runs.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np

from kamim.cache.manifest import atomic_write, json_bytes, keypoint_stats
from kamim.cache.parts import Block
from kamim.cache.points import MAX_CODE, POINT_DTYPE, SUBPIXEL_STEPS
from kamim.paths import cache_root

MEAN_POINTS = {"fast": 1400, "sift": 400}
BLOCK = 8192  # images per block handed to write_zarr
VERSION = 1


def scale_root() -> Path:
    return cache_root() / "bench" / "scale"


def encode_block(q: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """int64 [M,2] quantised (qx, qy) of consecutive images -> uint16 delta codes, image by image as
    kamim.cache.points.encode_points (sorted by y then x; first code of a row absolute)."""
    owner = np.repeat(np.arange(len(counts), dtype=np.int64), counts)
    key = np.sort((owner << 32) | (q[:, 1] << 16) | q[:, 0])  # one int64 sort: by image, then y, then x
    q = np.stack([key & 0xFFFF, (key >> 16) & 0xFFFF], axis=1)
    first = np.zeros(len(q), bool)
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    first[starts[counts > 0]] = True
    dy = np.diff(q[:, 1], prepend=0)
    dy[first] = q[first, 1]
    dx = np.where(dy == 0, np.diff(q[:, 0], prepend=0), q[:, 0])
    dx[first] = q[first, 0]
    return np.stack([dx, dy], axis=1).astype(POINT_DTYPE)


def synthetic_block(index: int, counts: np.ndarray, detector: str, rng: np.random.Generator) -> Block:
    steps = SUBPIXEL_STEPS[detector]
    images = len(counts)
    aspect = rng.uniform(1.0, 1.5, images)
    wide = rng.random(images) < 0.75  # most photos are landscape
    width = np.where(wide, np.rint(256 * aspect), 256)
    height = np.where(wide, 256, np.rint(256 * aspect))
    source_short = rng.integers(300, 800, images)
    scale = np.stack([256 / source_short, 256 / source_short], axis=1).astype(np.float64)
    owner = np.repeat(np.arange(images), counts)
    unit = rng.random((int(counts.sum()), 2))
    size = np.stack([width[owner], height[owner]], axis=1)
    if detector == "fast":  # whole pixels, 3 px from the border as FAST's circle needs
        q = (3 + np.floor(unit * (size - 6))).astype(np.int64) * steps
    else:
        q = np.clip(np.rint(unit * (size - 1) * steps), 0, MAX_CODE).astype(np.int64)
    return Block(index, counts, encode_block(q, counts), scale, np.zeros(images, np.uint8))


def synthetic_cache(images: int, detector: str, seed: int = 0) -> tuple[Path, dict]:
    """The cache (built now if absent) and its record {"write_s", "bytes", "points"}."""
    from kamim.cache.zarr_store import write_zarr

    out = scale_root() / f"{detector}-{images}.zarr"
    record_path = out.with_suffix(".json")
    if (out / "manifest.json").is_file() and record_path.is_file():
        record = json.loads(record_path.read_text())
        if record.get("version") == VERSION:
            return out, record
    import shutil

    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    began = time.perf_counter()
    counts = np.random.default_rng([seed, images, len(detector)]).poisson(MEAN_POINTS[detector], images)
    blocks = (synthetic_block(b, counts[s : s + BLOCK], detector, np.random.default_rng([seed, images, b]))
              for b, s in enumerate(range(0, images, BLOCK)))  # streamed: memory stays one block
    write_zarr(out, blocks, images, int(counts.sum()))
    manifest = {
        "format_version": 1, "format": "zarr", "detector": detector, "detect_size": 256, "gray": "bgr",
        "subpixel_steps": SUBPIXEL_STEPS[detector], "detector_params": {}, "opencv": "synthetic",
        "dataset": {"name": "synthetic", "split": "train", "count": images, "fingerprint": f"synthetic-{seed}",
                    "classes": ["synthetic"]},
        "status_counts": {"ok": images, "bad": 0}, "keypoints_per_image": keypoint_stats(counts),
    }
    atomic_write(out / "manifest.json", json_bytes(manifest))
    write_s = time.perf_counter() - began
    disk = sum(p.stat().st_size for p in out.rglob("*") if p.is_file())
    points_disk = sum(p.stat().st_size for p in (out / "points").rglob("*") if p.is_file())
    record = {"version": VERSION, "write_s": round(write_s, 2), "bytes": disk, "bytes_per_image": disk / images,
              "points_bytes_per_image": points_disk / images, "points": int(counts.sum())}
    record_path.write_text(json.dumps(record, indent=2) + "\n")
    return out, record
