"""Per-point attributes of a selection cache (kamim.cache.select), stored beside the zarr points.

``point-attrs.npy`` holds uint16 [M] in the stored point order (image after image, each image's points
sorted by quantised (y, x) as ``encode_points`` sorts them), ``point-attrs-offsets.npy`` int64 [N+1]
(image i's attributes are ``attrs[offsets[i]:offsets[i+1]]``, the same split as the points). Plain .npy
files, written atomically before the manifest and memory-mapped by each reader process on first use
(no zarr I/O thread, so fork-safe; the pages are shared by all loader workers). The manifest's
``point_attrs`` says what the attributes mean and how many there are; a reader checks the counts.

Damage never changes a selection silently: ``point-attrs-crc.npy`` holds a crc32c of each image's
attribute bytes (checked on every read, ~1 us), and the manifest holds the crc32c of the offsets and of
that crc array (checked when a process opens them). Caches written before this carry no checksums and
are read as they are.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

import google_crc32c
import numpy as np

from kamim.cache.manifest import rebuild_command
from kamim.cache.select import ATTR_DTYPE
from kamim.errors import UserError

ATTRS_FILE = "point-attrs.npy"
OFFSETS_FILE = "point-attrs-offsets.npy"
CRC_FILE = "point-attrs-crc.npy"


def _crc(array: np.ndarray) -> int:
    return google_crc32c.value(np.ascontiguousarray(array).view(np.uint8).tobytes())


def _atomic_npy(path: Path, array: np.ndarray) -> None:
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as handle:
            np.save(handle, array, allow_pickle=False)
            handle.flush()
            os.fsync(handle.fileno())
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    os.replace(tmp, path)


def write_attrs(out: Path, blocks: Iterable, num_points: int) -> tuple[int, dict[str, int]]:
    """Join the blocks' attributes (in block order) into ``out``; returns how many were written and the
    crc32c of the offsets and of the per-image crc array (for the manifest)."""
    chunks, counts = [], []
    for block in blocks:
        counts.append(np.asarray(block.counts, np.int64))
        chunks.append(np.zeros(0, ATTR_DTYPE) if block.attrs is None else np.asarray(block.attrs, ATTR_DTYPE))
    attrs = np.concatenate(chunks) if chunks else np.zeros(0, ATTR_DTYPE)
    offsets = np.concatenate([[0], np.cumsum(np.concatenate(counts) if counts else [])]).astype(np.int64)
    if len(attrs) != num_points or offsets[-1] != num_points:
        raise RuntimeError(f"cache assembly: {len(attrs)} point attributes for {num_points} points")
    crcs = np.fromiter((_crc(attrs[a:b]) for a, b in zip(offsets[:-1], offsets[1:], strict=True)), np.uint32,
                       count=len(offsets) - 1)
    _atomic_npy(Path(out) / OFFSETS_FILE, offsets)
    _atomic_npy(Path(out) / CRC_FILE, crcs)
    _atomic_npy(Path(out) / ATTRS_FILE, attrs)
    return len(attrs), {"offsets": _crc(offsets), "images": _crc(crcs)}


class PointAttrs:
    """``attrs(i)`` -> uint16 [n_i] for image i, memory-mapped lazily once per process."""

    def __init__(self, path: str | os.PathLike, manifest: dict) -> None:
        self.path, self.manifest = Path(path), manifest
        self.count = int(manifest["point_attrs"]["count"])
        self._pid: int | None = None

    def __getstate__(self) -> dict:
        return {"path": self.path, "manifest": self.manifest, "count": self.count, "_pid": None}  # no mapping

    def _open(self) -> None:
        if self._pid == os.getpid():
            return
        try:
            attrs = np.load(self.path / ATTRS_FILE, mmap_mode="r", allow_pickle=False)
            offsets = np.load(self.path / OFFSETS_FILE, allow_pickle=False)
        except (OSError, ValueError) as error:
            raise self._damaged(f"unreadable ({error})") from None
        images = int(self.manifest["dataset"]["count"])
        if attrs.dtype != ATTR_DTYPE or attrs.shape != (self.count,) or offsets.shape != (images + 1,) \
                or offsets[0] != 0 or offsets[-1] != self.count or (np.diff(offsets) < 0).any():
            raise self._damaged("sizes do not match the manifest")
        expected = self.manifest["point_attrs"].get("crc32c")
        crcs = None
        if expected is not None:  # written with checksums: offsets and per-image crcs must match the manifest
            try:
                crcs = np.load(self.path / CRC_FILE, allow_pickle=False)
            except (OSError, ValueError) as error:
                raise self._damaged(f"its checksums ({CRC_FILE}) are unreadable ({error})") from None
            if _crc(offsets) != expected["offsets"] or crcs.shape != (images,) or _crc(crcs) != expected["images"]:
                raise self._damaged(f"{OFFSETS_FILE} or {CRC_FILE} fails its checksum")
        self._attrs, self._offsets, self._crcs, self._pid = attrs, offsets, crcs, os.getpid()

    def _damaged(self, what: str) -> UserError:
        return UserError(f"{self.path / ATTRS_FILE}: {what}; the cache is damaged: delete {self.path} and "
                         f"rebuild it with `{rebuild_command(self.manifest, self.path)}`")

    def attrs(self, index: int) -> np.ndarray:
        self._open()
        values = np.asarray(self._attrs[self._offsets[index] : self._offsets[index + 1]])
        if self._crcs is not None and _crc(values) != self._crcs[index]:
            raise self._damaged(f"the attributes of image {index} fail their checksum")
        return values


def open_point_attrs(cache) -> PointAttrs | None:  # noqa: ANN001 - any reader with .path and .manifest
    """The attributes of a selection cache, or None for a plain one (its points are used as they are)."""
    manifest = getattr(cache, "manifest", None) or {}
    if not manifest.get("point_attrs") or manifest.get("format") != "zarr":
        return None
    return PointAttrs(cache.path, manifest)
