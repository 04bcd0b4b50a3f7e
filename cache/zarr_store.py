"""The zarr v3 cache: ragged keypoints (``offsets`` + ``points``), ``scale`` and ``status``, sharded.

Integrity: every inner chunk is stored as bytes -> blosc -> crc32c (the shard index carries its own
crc32c), every chunk is written even when it equals the fill value, and the fill values are ones a
real cache never holds (offsets -1, status 255, scale NaN, point codes 65535), so a missing shard
file cannot pass for data. ``verified_store`` reads the whole store once, checks all of it and turns
any damage into a one-line UserError naming the file and the rebuild command; it runs when the
derived flat file (kamim.cache.flat) is built, which is the only time the reader touches zarr.
Caches written before the checksums are still read (a note says they are unprotected).

Fork safety: zarr-python 3 does its I/O on a background asyncio thread, and a process forked after
that thread started can deadlock. The reader therefore never opens zarr in its own process: the flat
file is built by a child process (``python -m kamim.cache.flat``) and then read (mmap + pread).
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import zarr
from zarr.codecs import BloscCodec, Crc32cCodec

from kamim.cache.flat import StaleFlat, open_flat
from kamim.cache.manifest import STATUS_NAMES, STATUS_OK, check_dataset, read_manifest, rebuild_command
from kamim.cache.parts import Block
from kamim.cache.points import MAX_CODE, POINT_DTYPE, decode_ragged
from kamim.errors import UserError

POINT_CHUNK = 16_384  # rows per inner chunk (64 KiB raw): most images' points lie in one chunk
POINT_SHARD = POINT_CHUNK * 256  # rows per shard file (16 MiB raw)
IMAGE_CHUNK = 65_536
IMAGE_SHARD = IMAGE_CHUNK * 16
ARRAYS = ("offsets", "points", "scale", "status")
# Never valid in a real cache: a missing chunk or shard reads as these and is caught by the checks.
FILL = {"points": MAX_CODE, "offsets": -1, "status": 255, "scale": float("nan")}


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
        compressors=[BloscCodec(cname="zstd", clevel=5, shuffle="shuffle", typesize=typesize), Crc32cCodec()],
        fill_value=FILL[name],
        config={"write_empty_chunks": True},  # every chunk on disk: an absent one is damage
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


@dataclass
class VerifiedStore:
    """A zarr cache read whole and checked: small arrays in RAM, points streamed as absolute codes."""

    path: Path
    manifest: dict
    offsets: np.ndarray  # int64 [N+1]
    scale: np.ndarray  # float64 [N,2]
    status: np.ndarray  # uint8 [N]
    checksummed: bool  # False: a cache written before the crc32c codec (readable, unprotected)
    _points: zarr.Array

    def damaged(self, where: str | Path, what: str) -> UserError:
        return damaged(self.path, self.manifest, where, what)

    def point_batches(self) -> Iterator[tuple[int, int, np.ndarray]]:
        """(first image, end image, int64 [rows, 2] absolute quantised (qx, qy)) in image order, one
        shard at a time; every chunk is read (checksum-verified) exactly once."""
        offsets, rows = self.offsets, int(self.offsets[-1])
        done_image, base, carry = 0, 0, np.zeros((0, 2), POINT_DTYPE)
        for shard in range(-(-rows // POINT_SHARD)):
            begin, end = shard * POINT_SHARD, min(rows, (shard + 1) * POINT_SHARD)
            try:
                codes = self._points[begin:end]
            except Exception as error:  # noqa: BLE001 - crc32c, blosc or I/O: all mean a damaged shard
                raise self.damaged(self.path / "points" / "c" / str(shard) / "0", _reason(error)) from None
            carry = np.concatenate([carry, codes]) if len(carry) else codes
            last = int(np.searchsorted(offsets, end, side="right")) - 1  # images wholly read so far
            if last <= done_image:
                continue
            take = int(offsets[last] - base)
            local = offsets[done_image : last + 1] - base
            q = decode_ragged(carry[:take], local, 1)
            if len(q) and (q.min() < 0 or q.max() > MAX_CODE):
                raise self.damaged(self.path / "points", "decoded positions out of range (damaged chunk)")
            yield done_image, last, q.astype(np.int64)
            carry, base, done_image = carry[take:], int(offsets[last]), last
        if done_image != len(offsets) - 1:
            yield done_image, len(offsets) - 1, np.zeros((0, 2), np.int64)


def damaged(path: Path, manifest: dict, where: str | Path, what: str) -> UserError:
    return UserError(
        f"{where}: {what}: the zarr cache {path} is damaged; delete it and rebuild it with "
        f"`{rebuild_command(manifest, path)}` (plus the --data-root it was built from, if any)"
    )


def _reason(error: Exception) -> str:
    text = " ".join(str(error).split())[:160]
    return f"unreadable ({type(error).__name__}: {text})" if text else f"unreadable ({type(error).__name__})"


def _open_array(group_path: Path, manifest: dict, name: str, shape: tuple | None) -> tuple[zarr.Array, bool]:
    meta = group_path / name / "zarr.json"
    try:
        array = zarr.open_array(group_path / name, mode="r", zarr_format=3)
        codecs = json.loads(meta.read_text())["codecs"][0]["configuration"]["codecs"]
    except Exception as error:  # noqa: BLE001 - missing or garbled metadata
        raise damaged(group_path, manifest, meta, "missing or unreadable array metadata" if not meta.is_file()
                      else _reason(error)) from None
    shape = shape or tuple(array.shape)
    if tuple(array.shape) != shape:
        raise damaged(group_path, manifest, meta, f"shape {tuple(array.shape)}, expected {shape}")
    expected = -(-shape[0] // array.shards[0]) if shape[0] else 0
    for shard in range(expected):
        key = group_path / name / "c" / str(shard) / "0" if len(shape) > 1 else group_path / name / "c" / str(shard)
        if not key.is_file():
            raise damaged(group_path, manifest, key, "shard file missing")
    return array, any(c.get("name") == "crc32c" for c in codecs)


def _read_all(array: zarr.Array, path: Path, manifest: dict, name: str) -> np.ndarray:
    try:
        return np.asarray(array[:])
    except Exception as error:  # noqa: BLE001 - crc32c, blosc or I/O
        raise damaged(path, manifest, path / name, _reason(error)) from None


def verified_store(path: str | os.PathLike, manifest: dict | None = None) -> VerifiedStore:
    """Open the zarr cache at ``path`` and check everything but the point chunks (read by
    ``point_batches``): metadata, shard files present, checksums, offsets against the counts and the
    manifest, scale finite and positive, status valid. UserError naming the file on any damage."""
    path = Path(path)
    manifest = manifest if manifest is not None else read_manifest(path)
    if not (path / "zarr.json").is_file():
        raise damaged(path, manifest, path / "zarr.json", "missing group metadata")
    n = int(manifest["dataset"]["count"])
    opened = {name: _open_array(path, manifest, name, shape) for name, shape in
              (("offsets", (n + 1,)), ("status", (n,)), ("scale", (n, 2)))}
    offsets = _read_all(opened["offsets"][0], path, manifest, "offsets")
    points, points_crc = _open_array(path, manifest, "points", None)
    rows = int(offsets[-1])
    if tuple(points.shape) != (rows, 2):
        raise damaged(path, manifest, path / "offsets", f"offsets end at row {rows} but points has shape "
                      f"{tuple(points.shape)}")
    status = _read_all(opened["status"][0], path, manifest, "status")
    scale = _read_all(opened["scale"][0], path, manifest, "scale")
    counts = np.diff(offsets)
    if offsets[0] != 0 or (counts < 0).any():
        raise damaged(path, manifest, path / "offsets", "offsets do not start at 0 and rise")
    bad_status = ~np.isin(status, list(STATUS_NAMES))
    if bad_status.any():
        raise damaged(path, manifest, path / "status", f"invalid status at image {int(np.argmax(bad_status))}")
    ok = status == STATUS_OK
    expected_total = manifest.get("keypoints_per_image", {}).get("total")
    if expected_total is not None and int(counts[ok].sum()) != int(expected_total):
        raise damaged(path, manifest, path / "offsets",
                      f"{int(counts[ok].sum())} points per offsets, the manifest says {expected_total}")
    if (counts[~ok] != 0).any():
        raise damaged(path, manifest, path / "offsets", "points recorded for images marked bad")
    bad_scale = ~(np.isfinite(scale).all(axis=1) & (scale > 0).all(axis=1))
    if bad_scale.any():
        raise damaged(path, manifest, path / "scale", f"scale not finite and positive at image "
                      f"{int(np.argmax(bad_scale))}")
    checksummed = points_crc and all(crc for _, crc in opened.values())
    return VerifiedStore(path, manifest, offsets.astype(np.int64), scale.astype(np.float64),
                         status.astype(np.uint8), checksummed, points)


class ZarrCache:
    """Random access to a zarr keypoint cache: ``points(i)`` in source-image pixel coordinates.

    Reads go to the derived flat file (kamim.cache.flat), opened once per process and shared
    through the page cache: the cost per sample and per worker is the same at any dataset size.
    """

    def __init__(
        self, path: str | os.PathLike, manifest: dict | None = None, preload_bytes: int | None = None
    ) -> None:
        self.path = Path(path)
        self.manifest = manifest if manifest is not None else read_manifest(self.path)
        self.steps = int(self.manifest["subpixel_steps"])
        del preload_bytes  # accepted for old callers: one path now serves every cache size
        self._flat = None

    def __len__(self) -> int:
        return int(self.manifest["dataset"]["count"])

    def __getstate__(self) -> dict:
        # Sent to spawned workers: the manifest only, never open handles. (A forked worker inherits the
        # open file as it is: reads are positionless preads and lookups in a read-only mapping.)
        state = {k: v for k, v in self.__dict__.items() if not k.startswith("_")}
        return {**state, "_flat": None}

    def _open(self) -> None:
        if self._flat is None:
            self._flat = open_flat(self.path, self.manifest)

    def _codes(self, index: int) -> np.ndarray:
        return self._samples((index,))[0][0]

    def _samples(self, indices) -> list[tuple[np.ndarray, float, float]]:  # noqa: ANN001
        if self._flat is None:
            self._open()
        try:
            return self._flat.samples(indices)
        except StaleFlat:  # a block failed its checksum: never use the file, rebuild it
            self._flat = open_flat(self.path, self.manifest, discard=self._flat)
        try:
            return self._flat.samples(indices)
        except StaleFlat as error:
            raise UserError(f"{error}: the derived points file fails again right after it was rebuilt; check the "
                            f"disk, or set $KAMIM_DERIVED_DIR to another directory") from None

    def _check_index(self, index: int) -> int:
        if not -len(self) <= index < len(self):
            raise IndexError(f"index {index} out of range for a cache of {len(self)} images")
        return index % len(self)

    def detect_points(self, index: int) -> np.ndarray:
        """float64 [N,2] (x, y) as stored, in pixels of the detect-size image, sorted by (y, x)."""
        codes = self._codes(self._check_index(index))
        return (codes / self.steps).reshape(2, -1).T

    def points(self, index: int) -> np.ndarray:
        """float32 [N,2] (x, y) in source-image pixels (pixel centres at integers); [0,2] for bad images.

        Bit for bit ``to_source(detect_points(i), scale(i))``, computed per column on contiguous memory
        (the result is a column-major [N,2] array)."""
        codes, sx, sy = self._samples((self._check_index(index),))[0]
        n = len(codes) // 2
        p = codes / self.steps
        p += 0.5
        p[:n] /= sx
        p[n:] /= sy
        p -= 0.5
        return p.astype(np.float32).reshape(2, n).T

    def point_codes(self, index: int) -> tuple[np.ndarray, float, float]:
        """(codes, sx, sy): image ``index``'s quantised points as stored at detect size, uint16 [2n], its
        x codes then its y codes (y non-decreasing: points are sorted by (y, x)), and its detect scale.
        ``points(i)`` is ``(codes / steps + 0.5) / (sx, sy) - 0.5``; a loader that moves the points
        through a crop folds both maps into one (kamim.train.crop_codes)."""
        return self._samples((index if index >= 0 else self._check_index(index),))[0]

    def batch_point_codes(self, indices: list[int]) -> list[tuple[np.ndarray, float, float]]:
        """``point_codes(i)`` for each of a batch's indices (non-negative), read back to back in one loop."""
        return self._samples(indices)

    def sample(self, index: int, dataset) -> tuple[np.ndarray, np.ndarray, int]:
        """(uint8 RGB image from ``dataset``, its points in source pixels, label); check_dataset first."""
        image, label = dataset[index]
        return image, self.points(index), label

    def scale(self, index: int) -> np.ndarray:
        self._open()
        return np.array(self._flat.scale[self._check_index(index)])

    def is_ok(self, index: int) -> bool:
        self._open()
        return bool(self._flat.status[self._check_index(index)] == STATUS_OK)

    @property
    def ok(self) -> np.ndarray:
        """bool [N]: the images that were read and detected (train on these only)."""
        self._open()
        return np.asarray(self._flat.status) == STATUS_OK

    @property
    def counts(self) -> np.ndarray:
        """int64 [N]: keypoints per image."""
        self._open()
        return np.diff(self._flat.offsets)

    def check_dataset(self, dataset) -> None:
        check_dataset(self.manifest, self.path, dataset)
