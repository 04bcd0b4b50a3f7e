"""Block files: the unit of work of a build, each written atomically into ``DIR/parts/``.

A block file holds, for its fixed range of sample indices: keypoint counts, the encoded points (zarr
builds; empty for wds, whose points travel in the shard), the per-image scale, status and the bad
samples. ``np.load(..., allow_pickle=False)``: no pickle, the errors are stored as JSON bytes.
"""

from __future__ import annotations

import io
import json
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from kamim.cache.manifest import atomic_write

_BLOCK = re.compile(r"^block-(\d{6,})\.npz$")


@dataclass
class Block:
    index: int
    counts: np.ndarray  # int64 [n] keypoints per image (0 for bad images)
    codes: np.ndarray  # uint16 [sum(counts), 2] encoded points (zarr) or [0, 2] (wds)
    scale: np.ndarray  # float64 [n, 2] (sx, sy) detect-size / source
    status: np.ndarray  # uint8 [n]
    errors: list[dict] = field(default_factory=list)  # {"index", "name", "reason"}
    attrs: np.ndarray | None = None  # uint16 [sum(counts)] per-point attributes (selection caches only)


def block_path(parts_dir: Path, index: int) -> Path:
    return parts_dir / f"block-{index:06d}.npz"


def write_block(parts_dir: Path, block: Block) -> Path:
    buffer = io.BytesIO()
    np.savez(
        buffer,
        counts=block.counts.astype(np.int64),
        codes=block.codes.reshape(-1, 2),
        scale=block.scale.astype(np.float64).reshape(-1, 2),
        status=block.status.astype(np.uint8),
        errors=np.frombuffer(json.dumps(block.errors).encode(), dtype=np.uint8),
        **({} if block.attrs is None else {"attrs": block.attrs.astype(np.uint16).reshape(-1)}),
    )
    path = block_path(parts_dir, block.index)
    atomic_write(path, buffer.getvalue())
    return path


def read_block(parts_dir: Path, index: int) -> Block:
    with np.load(block_path(parts_dir, index), allow_pickle=False) as data:
        return Block(
            index=index,
            counts=data["counts"],
            codes=data["codes"],
            scale=data["scale"],
            status=data["status"],
            errors=json.loads(data["errors"].tobytes().decode()),
            attrs=data["attrs"] if "attrs" in data.files else None,
        )


def finished_blocks(parts_dir: Path) -> set[int]:
    if not parts_dir.is_dir():
        return set()
    return {int(m.group(1)) for p in parts_dir.iterdir() if (m := _BLOCK.match(p.name))}


def remove_stale_temps(directory: Path, names: set[str]) -> None:
    """Delete temp files an interrupted run left for these final names (``<name>.<pid>.tmp``)."""
    if not directory.is_dir():
        return
    for path in directory.glob("*.tmp"):
        if path.name.rsplit(".", 2)[0] in names:
            path.unlink(missing_ok=True)


def describe_ranges(indices: list[int]) -> str:
    """[0, 1, 2, 5, 7, 8] -> '0-2, 5, 7-8'."""
    ranges: list[str] = []
    for i in sorted(indices):
        if ranges and int(ranges[-1].split("-")[-1]) == i - 1:
            ranges[-1] = f"{ranges[-1].split('-')[0]}-{i}"
        else:
            ranges.append(str(i))
    return ", ".join(ranges)
