"""The derived flat points file (kamim.cache.flat) behind ZarrCache: same points as the zarr read path
for every index, rebuilt (never used) when stale or damaged, safe to build from several processes at
once, and usable from forked and spawned DataLoader workers without zarr in the parent."""

from __future__ import annotations

import hashlib
import json
import multiprocessing
import os
import shutil
import threading
from pathlib import Path

import numpy as np
import pytest
import zarr

from kamim.cache import open_cache
from kamim.cache.flat import HEADER_BYTES, flat_path
from kamim.cache.manifest import atomic_write, json_bytes, keypoint_stats
from kamim.cache.parts import Block
from kamim.cache.points import decode_points, encode_points, to_source
from kamim.cache.zarr_store import POINT_SHARD, write_zarr
from kamim.errors import UserError


def write_synthetic(out: Path, images: int, mean: int, steps: int, seed: int = 0) -> Path:
    """A zarr cache written by the project's writer: Poisson(mean) points per image, every 7th bad."""
    rng = np.random.default_rng(seed)
    counts = rng.poisson(mean, images)
    status = np.zeros(images, np.uint8)
    status[::7] = 1
    counts[status == 1] = 0
    scale = np.stack([rng.uniform(0.3, 2.0, images), rng.uniform(0.3, 2.0, images)], axis=1)
    codes = [encode_points(rng.uniform(0, [256, 340], (c, 2)), steps) for c in counts]
    blocks = [Block(i, counts[i : i + 1000], np.concatenate(codes[i : i + 1000]).reshape(-1, 2),
                    scale[i : i + 1000], status[i : i + 1000]) for i in range(0, images, 1000)]
    out.mkdir(parents=True)
    write_zarr(out, blocks, images, int(counts.sum()))
    ok = status == 0
    manifest = {"format_version": 1, "format": "zarr", "detector": "sift", "detect_size": 256, "gray": "bgr",
                "subpixel_steps": steps, "status_counts": {"ok": int(ok.sum()), "bad": int((~ok).sum())},
                "keypoints_per_image": keypoint_stats(counts[ok]),
                "dataset": {"name": "synthetic", "split": "train", "count": images, "fingerprint": f"s{seed}"}}
    atomic_write(out / "manifest.json", json_bytes(manifest))
    return out


def zarr_read_path(cache_dir: Path) -> list[np.ndarray]:
    """What the zarr store says, read and decoded image by image (the reference)."""
    group = zarr.open_group(cache_dir, mode="r")
    offsets, scale, codes = group["offsets"][:], group["scale"][:], group["points"][:]
    steps = json.loads((cache_dir / "manifest.json").read_text())["subpixel_steps"]
    return [to_source(decode_points(codes[a:b], steps), s) for a, b, s in zip(offsets[:-1], offsets[1:], scale, strict=True)]


def _write_and_read(out: Path, images: int) -> list[np.ndarray]:
    return zarr_read_path(write_synthetic(out, images, 420, steps=16))


def _in_child(out: Path, images: int) -> tuple[Path, list[np.ndarray]]:
    # zarr runs in a spawned child only, so this process can check that the reader never starts it.
    with multiprocessing.get_context("spawn").Pool(1) as pool:
        return out, pool.apply(_write_and_read, (out, images))


@pytest.fixture(scope="module")
def big(tmp_path_factory):
    # Two zarr shards: the build's batches and shard edges all run.
    return _in_child(tmp_path_factory.mktemp("flat") / "big.zarr", 12_600)


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    return _in_child(tmp_path_factory.mktemp("flat") / "small.zarr", 3_000)


def test_flat_file_gives_exactly_the_zarr_points_for_every_index(big):
    cache, expected = big
    assert sum(len(p) for p in expected) > POINT_SHARD  # more than one shard
    reader = open_cache(cache)
    assert not flat_path(cache).exists()  # opening reads the manifest only
    for index, want in enumerate(expected):
        got = reader.points(index)
        assert got.dtype == np.float32 and got.shape == want.shape
        assert np.array_equal(got, want), index
    assert np.array_equal(reader.counts, [len(p) for p in expected])
    assert int(reader.ok.sum()) == 12_600 - 1800 and not reader.is_ok(0) and reader.is_ok(1)
    assert flat_path(cache).stat().st_size > 16 * 2**20
    assert len(reader._flat.records) == len(expected)  # every image's codes carry their own checksum


def _flip(path: Path, at: int) -> None:
    with open(path, "r+b") as handle:
        handle.seek(at)
        byte = handle.read(1)
        handle.seek(at)
        handle.write(bytes([byte[0] ^ 0x5A]))


def _built_copy(source: Path, cache: Path) -> tuple[Path, Path, object]:
    """A copy of the cache, its flat file's path and a reader that has built it."""
    shutil.copytree(source, cache)
    reader = open_cache(cache)
    reader.points(1)  # builds it
    return cache, flat_path(cache), reader


@pytest.mark.parametrize("damage", ["points", "header", "offsets", "records", "truncate", "other-store"])
def test_stale_or_damaged_flat_file_is_rebuilt_never_used(small, tmp_path, damage):
    source, expected = small
    cache, flat, built = _built_copy(source, tmp_path / "c.zarr")
    before = flat.stat().st_ino
    if damage == "points":  # the middle of the points: found when that image is read
        _flip(flat, built._flat.sections["points"][0] + 2 * int(built._flat.offsets[-1]))
    elif damage == "header":
        _flip(flat, 40)
    elif damage == "offsets":
        _flip(flat, HEADER_BYTES + 8 * 500)
    elif damage == "records":  # image 700's detect scale: found when the file is opened
        _flip(flat, built._flat.sections["records"][0] + 32 * 700 + 20)
    elif damage == "truncate":
        os.truncate(flat, flat.stat().st_size - 4096)
    else:  # a valid flat file of another store put in its place
        other, _ = _in_child(tmp_path / "o.zarr", 300)
        open_cache(other).points(1)
        shutil.copy(flat_path(other), flat)
        before = flat.stat().st_ino
    reader = open_cache(cache)
    for index in range(len(expected)):
        assert np.array_equal(reader.points(index), expected[index]), index
    assert flat.stat().st_ino != before  # it was rebuilt, not patched or trusted


@pytest.mark.parametrize("field", ["scale", "count", "start"])
def test_a_record_damaged_after_open_is_found_when_read(small, tmp_path, field):
    # The open checks the records section once; a byte changed under an open reader (the file rewritten in
    # place) must still never reach the points: each image's crc covers its record as well as its codes.
    source, expected = small
    cache, flat, reader = _built_copy(source, tmp_path / "c.zarr")
    before, index = flat.stat().st_ino, 700
    at = reader._flat.sections["records"][0] + 32 * index + {"count": 4, "start": 8, "scale": 20}[field]
    record = reader._flat.records[index].tobytes()
    _flip(flat, at)
    assert reader._flat.records[index].tobytes() != record  # the open reader sees the damage
    assert np.array_equal(reader.points(index), expected[index])
    assert flat.stat().st_ino != before  # found, deleted and rebuilt: the damaged record was never used


def _open_and_digest(cache: str) -> tuple[int, str]:
    reader = open_cache(cache)
    digest = np.concatenate([reader.points(i).ravel() for i in range(len(reader))]).tobytes()
    return reader._flat.inode, hashlib.sha256(digest).hexdigest()


def test_processes_opening_at_once_build_one_good_file(small, tmp_path):
    source, expected = small
    cache = tmp_path / "c.zarr"
    shutil.copytree(source, cache)
    want = hashlib.sha256(np.concatenate([p.ravel() for p in expected]).tobytes()).hexdigest()
    with multiprocessing.get_context("spawn").Pool(3) as pool:
        results = pool.map(_open_and_digest, [str(cache)] * 3)
    assert {digest for _, digest in results} == {want}
    assert len({inode for inode, _ in results}) == 1  # built once: the others waited for the lock
    assert not list(flat_path(cache).parent.glob("*.tmp"))


class PointsOf:  # a map-style dataset (no torch import here: the spawned pools above stay light)
    def __init__(self, cache) -> None:
        self.cache = cache

    def __len__(self) -> int:
        return len(self.cache)

    def __getitem__(self, index: int):
        return np.ascontiguousarray(self.cache.points(index)), os.getpid()


@pytest.mark.parametrize("context", ["fork", "spawn"])
def test_forked_and_spawned_dataloader_workers_read_the_same_points(big, context):
    cache, expected = big
    zarr_running = any(t.name == "zarr_io" for t in threading.enumerate())  # earlier tests in this process
    reader = open_cache(cache)
    indices = list(range(0, len(expected), 97))
    assert np.array_equal(reader.points(indices[1]), expected[indices[1]])  # parent has the file mapped
    if not zarr_running:
        assert not any(t.name == "zarr_io" for t in threading.enumerate())  # the reader never started zarr here
    from torch.utils.data import DataLoader

    loader = DataLoader(PointsOf(reader), batch_size=None, sampler=indices, num_workers=2,
                        multiprocessing_context=multiprocessing.get_context(context))
    pids = set()
    for index, (points, pid) in zip(indices, loader, strict=True):
        assert np.array_equal(np.asarray(points), expected[index]), index
        pids.add(pid)
    assert len(pids) == 2 and os.getpid() not in pids


def test_a_flat_file_beside_a_shared_cache_is_read_not_rebuilt(small, tmp_path, monkeypatch):
    # The cache's owner built <cache>.flat beside it; a user whose $KAMIM_DERIVED_DIR points elsewhere reads
    # that file instead of building gigabytes of their own, and rebuilds into their own directory only when
    # it fails its checks.
    source, expected = small
    cache = tmp_path / "shared" / "c.zarr"
    shutil.copytree(source, cache)
    open_cache(cache).points(1)
    beside = cache.parent / "c.zarr.flat"
    assert beside.exists()
    mine = tmp_path / "mine"
    monkeypatch.setenv("KAMIM_DERIVED_DIR", str(mine))
    reader = open_cache(cache)
    assert all(np.array_equal(reader.points(i), expected[i]) for i in range(0, len(expected), 7))
    assert reader._flat.inode == beside.stat().st_ino and not list(mine.glob("*.flat"))
    _flip(beside, reader._flat.sections["points"][0] + 2 * int(reader._flat.offsets[-1]))  # the owner's file damaged
    reader = open_cache(cache)
    assert all(np.array_equal(reader.points(i), expected[i]) for i in range(len(expected)))
    assert [p.name for p in mine.glob("*.flat")] == [flat_path(cache).name]
    assert reader._flat.inode == flat_path(cache).stat().st_ino


def test_a_damaged_flat_file_that_cannot_be_removed_is_one_user_error(small, tmp_path, monkeypatch):
    _, flat, reader = _built_copy(small[0], tmp_path / "c.zarr")
    _flip(flat, reader._flat.sections["points"][0] + 2 * int(reader._flat.offsets[-1]))

    def refuse(self, missing_ok=False):  # noqa: ANN001 - another user's file in a shared directory (root ignores modes)
        raise PermissionError(13, "Permission denied", str(self))

    monkeypatch.setattr(Path, "unlink", refuse)
    with pytest.raises(UserError) as caught:
        for index in range(len(reader)):
            reader.points(index)
    message = caught.value.format_message()
    assert str(flat) in message and "Permission denied" in message and "KAMIM_DERIVED_DIR" in message, message
    assert "\n" not in message
