"""The zarr v3 cache: ragged keypoints (``offsets`` + ``points``), ``scale`` and ``status``, sharded.

Fork safety: zarr-python 3 does its I/O on a background asyncio thread, and a process forked after
that thread started can deadlock. The reader therefore reads only ``manifest.json`` when created and
opens the arrays lazily, once per process (it remembers the pid and reopens after a fork).
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import zarr
from zarr.codecs import BloscCodec

from kamim.cache.manifest import STATUS_OK, check_dataset, read_manifest
from kamim.cache.parts import Block
from kamim.cache.points import POINT_DTYPE, decode_points, decode_ragged, to_source

POINT_CHUNK = 16_384  # rows per inner chunk (64 KiB raw): most images' points lie in one chunk
POINT_SHARD = POINT_CHUNK * 256  # rows per shard file (16 MiB raw)
PRELOAD_BYTES = 256 * 2**20  # readers hold the points in RAM below this raw size (random access in us)
IMAGE_CHUNK = 65_536
IMAGE_SHARD = IMAGE_CHUNK * 16


def _create(group: zarr.Group, name: str, shape: tuple, dtype, chunks: tuple, shards: tuple) -> zarr.Array:
    # Byte shuffle over whole rows: for points (typesize 4 = one (dx, dy) pair) this separates the low
    # and high bytes of dx and dy, as good as one column per chunk, with one chunk read per image.
    typesize = np.dtype(dtype).itemsize * (shape[1] if len(shape) > 1 else 1)
    return group.create_array(
        name=name,
        shape=shape,
        dtype=dtype,
        chunks=chunks,
        shards=shards,
        compressors=[BloscCodec(cname="zstd", clevel=5, shuffle="shuffle", typesize=typesize)],
        fill_value=0,
        overwrite=True,
    )


def write_zarr(out: Path, blocks: Iterable[Block], num_images: int, num_points: int) -> None:
    """Assemble block files (in index order) into the group at ``out``; points stream shard by shard."""
    group = zarr.open_group(out, mode="a", zarr_format=3)
    points = _create(group, "points", (num_points, 2), POINT_DTYPE, (POINT_CHUNK, 2), (POINT_SHARD, 2))
    counts, scales, statuses = [], [], []
    pending: list[np.ndarray] = []
    pending_rows = written = 0
    for block in blocks:
        counts.append(block.counts)
        scales.append(block.scale)
        statuses.append(block.status)
        pending.append(block.codes)
        pending_rows += len(block.codes)
        # Write whole shards only: a partial shard write would read-modify-write it.
        while pending_rows >= POINT_SHARD:
            joined = np.concatenate(pending)
            points[written : written + POINT_SHARD] = joined[:POINT_SHARD]
            written += POINT_SHARD
            pending, pending_rows = [joined[POINT_SHARD:]], len(joined) - POINT_SHARD
    if pending_rows:
        points[written : written + pending_rows] = np.concatenate(pending)
        written += pending_rows
    counts_all = np.concatenate(counts) if counts else np.zeros(0, np.int64)
    if written != num_points or len(counts_all) != num_images:
        raise RuntimeError(
            f"cache assembly: {written}/{num_points} points, {len(counts_all)}/{num_images} images"
        )
    offsets = np.concatenate([[0], np.cumsum(counts_all)]).astype(np.int64)
    image_chunks = (IMAGE_CHUNK,), (IMAGE_SHARD,)
    _create(group, "offsets", (num_images + 1,), np.int64, *image_chunks)[:] = offsets
    _create(group, "status", (num_images,), np.uint8, *image_chunks)[:] = np.concatenate(statuses)
    _create(group, "scale", (num_images, 2), np.float64, (IMAGE_CHUNK, 2), (IMAGE_SHARD, 2))[:] = (
        np.concatenate(scales).reshape(-1, 2)
    )


class ZarrCache:
    """Random access to a zarr keypoint cache: ``points(i)`` in source-image pixel coordinates."""

    def __init__(
        self, path: str | os.PathLike, manifest: dict | None = None, preload_bytes: int = PRELOAD_BYTES
    ) -> None:
        self.path = Path(path)
        self.manifest = manifest if manifest is not None else read_manifest(self.path)
        self.steps = int(self.manifest["subpixel_steps"])
        self.preload_bytes = preload_bytes  # per process; 0 = always read through zarr
        self._pid: int | None = None

    def __len__(self) -> int:
        return int(self.manifest["dataset"]["count"])

    def __getstate__(self) -> dict:
        # Sent to spawned workers: the manifest only, never open zarr handles.
        state = {k: v for k, v in self.__dict__.items() if not k.startswith("_")}
        return {**state, "_pid": None}

    def _open(self) -> None:
        if self._pid == os.getpid():
            return
        group = zarr.open_group(self.path, mode="r", zarr_format=3)
        self._offsets = np.asarray(group["offsets"][:])
        self._scale = np.asarray(group["scale"][:])
        self._status = np.asarray(group["status"][:])
        points = group["points"]
        # Small caches live in RAM (a zarr read costs ~1 ms); large ones are read per image. When the
        # decoded source-pixel points fit too, decode them once here: the loader's per-image cost is
        # then a slice (the decode is most of the keypoint path's cost per sample).
        self._points = points[:] if points.nbytes <= self.preload_bytes else points
        self._source = None
        if points.shape[0] * 8 <= self.preload_bytes and not isinstance(self._points, zarr.Array):
            image_of_point = np.repeat(np.arange(len(self._offsets) - 1), np.diff(self._offsets))
            decoded = to_source(decode_ragged(self._points, self._offsets, self.steps), self._scale[image_of_point])
            decoded.flags.writeable = False
            self._source = decoded
        self._pid = os.getpid()

    def _check_index(self, index: int) -> int:
        if not -len(self) <= index < len(self):
            raise IndexError(f"index {index} out of range for a cache of {len(self)} images")
        return index % len(self)

    def detect_points(self, index: int) -> np.ndarray:
        """float64 [N,2] (x, y) as stored, in pixels of the detect-size image, sorted by (y, x)."""
        self._open()
        index = self._check_index(index)
        start, end = self._offsets[index], self._offsets[index + 1]
        codes = self._points[start:end] if end > start else np.zeros((0, 2), POINT_DTYPE)
        return decode_points(codes, self.steps)

    def points(self, index: int) -> np.ndarray:
        """float32 [N,2] (x, y) in source-image pixels (pixel centres at integers); [0,2] for bad images."""
        self._open()
        if self._source is not None:
            index = self._check_index(index)
            return self._source[self._offsets[index] : self._offsets[index + 1]]
        points = self.detect_points(index)
        return to_source(points, self._scale[index]) if len(points) else points.astype(np.float32)

    def sample(self, index: int, dataset) -> tuple[np.ndarray, np.ndarray, int]:
        """(uint8 RGB image from ``dataset``, its points in source pixels, label); check_dataset first."""
        image, label = dataset[index]
        return image, self.points(index), label

    def scale(self, index: int) -> np.ndarray:
        self._open()
        return self._scale[self._check_index(index)]

    def is_ok(self, index: int) -> bool:
        self._open()
        return bool(self._status[self._check_index(index)] == STATUS_OK)

    @property
    def ok(self) -> np.ndarray:
        """bool [N]: the images that were read and detected (train on these only)."""
        self._open()
        return self._status == STATUS_OK

    @property
    def counts(self) -> np.ndarray:
        """int64 [N]: keypoints per image."""
        self._open()
        return np.diff(self._offsets)

    def check_dataset(self, dataset) -> None:
        check_dataset(self.manifest, self.path, dataset)
