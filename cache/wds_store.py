"""The webdataset cache: self-contained tar shards of (re-encoded image, its keypoints, its label).

Each sample is ``<key>.jpg`` (RGB JPEG), ``<key>.kp.npy`` (float32 [N,2] (x, y) in the pixels of that
stored image, written with ``allow_pickle=False``) and ``<key>.cls`` (the label as text). Reading
decodes exactly these three keys and ignores anything else in a shard; nothing is ever unpickled.

Integrity: the first member of every shard, ``_index.json``, lists the shard's sample keys with a
CRC-32 of each sample's three members. Readers check every sample against it before handing it on and
check the count at the end, so a flipped byte, a truncated or garbage shard (tar stops silently at a
damaged header) or a missing file is a one-line UserError naming the shard, never a different sample.
Caches whose manifest says ``shard_index: 1`` (every build since) must carry the index.
"""

from __future__ import annotations

import io
import json
import os
import re
import tarfile
import zlib
from collections.abc import Iterable, Iterator
from pathlib import Path

import cv2
import numpy as np

from kamim.cache.manifest import check_dataset, read_manifest
from kamim.datasets import BadSampleError, decode_image
from kamim.errors import UserError

SHARD_NAME = "shard-{:06d}.tar"
JPEG_QUALITY = 90
SAMPLE_KEYS = ("jpg", "kp.npy", "cls")
INDEX_MEMBER = "_index.json"
SHARD_INDEX_VERSION = 1  # the manifest's "shard_index": shards carry INDEX_MEMBER


def sample_crc(sample: dict) -> str:
    """CRC-32 (hex) of a sample's key and its three members, as the shard index records it."""
    crc = zlib.crc32(str(sample.get("__key__", "")).encode())
    for key in SAMPLE_KEYS:
        crc = zlib.crc32(key.encode() + b"\0" + bytes(sample.get(key, b"")), crc)
    return f"{crc:08x}"


def sample_key(index: int) -> str:
    return f"{index:09d}"  # the dataset index: no dots, sorts in order


def encode_sample(index: int, image_rgb: np.ndarray, points: np.ndarray, label: int) -> dict:
    ok, jpeg = cv2.imencode(
        ".jpg", cv2.cvtColor(image_rgb, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY]
    )
    if not ok:
        raise RuntimeError(f"JPEG encoding failed for sample {index}")
    buffer = io.BytesIO()
    np.save(buffer, np.asarray(points, dtype="<f4").reshape(-1, 2), allow_pickle=False)
    return {
        "__key__": sample_key(index),
        "jpg": jpeg.tobytes(),
        "kp.npy": buffer.getvalue(),
        "cls": str(int(label)).encode(),
    }


def write_shard(path: Path, samples: list[dict]) -> None:
    """Write a tar shard atomically (temp + rename), byte-reproducibly (fixed mtime and owner)."""
    from webdataset import TarWriter  # imports torch: only when a wds cache is written or read

    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    index = {"version": SHARD_INDEX_VERSION, "samples": [[s["__key__"], sample_crc(s)] for s in samples]}
    try:
        with open(tmp, "wb") as handle:
            with TarWriter(handle, encoder=False, mtime=0, user="kamim", group="kamim", mode=0o444) as writer:
                writer.write({"__key__": INDEX_MEMBER.split(".")[0], "json": json.dumps(index).encode()})
                for sample in samples:
                    writer.write(sample)
            handle.flush()
            os.fsync(handle.fileno())
    except BaseException as error:  # disk full or interrupted: leave no partial temp behind
        tmp.unlink(missing_ok=True)
        if isinstance(error, OSError) and not error.filename:
            error.filename = os.fspath(path)  # name the shard in the one-line message
        raise
    os.replace(tmp, path)


# The header np.save writes for our float32 [N, 2] points (format 1.0): parsed with one regex, since
# np.load's literal_eval of it costs ~25 us a sample, as much as moving the points into the crop.
_POINTS_HEADER = re.compile(rb"\{'descr': '<f4', 'fortran_order': False, 'shape': \((\d+), 2\), \} *\n")


def load_points(data: bytes) -> np.ndarray:
    """float32 [N,2] points of a ``kp.npy`` member. Our writer's exact header is read directly (a view of
    the bytes, read-only); anything else goes through np.load (allow_pickle=False, so a pickle is refused)."""
    if data[:8] == b"\x93NUMPY\x01\x00":
        end = 10 + int.from_bytes(data[8:10], "little")
        match = _POINTS_HEADER.fullmatch(data, 10, end)
        if match is not None and len(data) == end + 8 * int(match.group(1)):
            return np.frombuffer(data, np.float32, offset=end).reshape(-1, 2)
    return np.load(io.BytesIO(data), allow_pickle=False).astype(np.float32).reshape(-1, 2)


def decode_wds_sample(sample: dict) -> tuple[np.ndarray, np.ndarray, int]:
    """A raw webdataset sample dict -> (uint8 RGB image, float32 [N,2] points, label).

    Use it as ``wds.WebDataset(...).map(decode_wds_sample)``; only the three known keys are read.
    """
    key = sample.get("__key__", "?")
    where = f"{sample.get('__url__', 'shard')}: sample {key}"
    missing = [k for k in SAMPLE_KEYS if k not in sample]
    if missing:
        raise UserError(f"{where} lacks {', '.join(missing)}: not a kamim shard; rebuild with `kamim cache --format wds`")
    try:
        image = decode_image(sample["jpg"], name=f"{key}.jpg")
    except BadSampleError as error:
        raise UserError(f"{where}: {error.reason}; the shard is damaged: rebuild the cache with `kamim cache`") from None
    try:  # allow_pickle=False: an object array (a pickle) is refused, never loaded
        points = load_points(sample["kp.npy"])
        label = int(sample["cls"])
    except (ValueError, OSError, EOFError) as error:
        raise UserError(f"{where}: unreadable keypoints or label ({error}); rebuild with `kamim cache`") from None
    return image, points, label


def _known_file(name: str) -> bool:
    # Our shards are flat: a member with a directory part (path-like, e.g. ../x.jpg) is never ours.
    return "/" not in name and name.split(".", 1)[-1].lower() in SAMPLE_KEYS


def shard_damaged(path: str | os.PathLike, what: str) -> UserError:
    return UserError(f"{path}: {what}; the webdataset cache is damaged: delete it and rebuild it with "
                     f"`kamim cache --format wds`")


def read_index(tar: tarfile.TarFile, member: tarfile.TarInfo, path: str) -> list[list[str]]:
    try:
        index = json.loads(tar.extractfile(member).read())
        entries = index["samples"]
        if index.get("version") != SHARD_INDEX_VERSION or not all(
                isinstance(e, list) and len(e) == 2 and all(isinstance(x, str) for x in e) for e in entries):
            raise ValueError("malformed")
    except (ValueError, KeyError, TypeError, AttributeError):
        raise shard_damaged(path, f"unreadable {INDEX_MEMBER}") from None
    return entries


def read_shard(path: str | os.PathLike, require_index: bool = False) -> Iterator[dict]:
    """Raw samples (``{"__key__", "__url__", "jpg", "kp.npy", "cls"}``) of one shard, in order, each
    checked against the shard's index when it has one (required when ``require_index``)."""
    path = os.fspath(path)
    try:
        handle = open(path, "rb")  # noqa: SIM115 - closed below; an open error has its own message
    except OSError as error:
        raise shard_damaged(path, f"cannot open the shard ({error.strerror})") from None
    with handle:
        try:
            yield from _checked_samples(tarfile.open(fileobj=handle, mode="r|"), path, require_index)  # noqa: SIM115
        except (tarfile.TarError, EOFError, OSError, zlib.error) as error:
            raise shard_damaged(path, f"not a readable tar shard ({error or type(error).__name__})") from None


def _checked_samples(tar: tarfile.TarFile, path: str, require_index: bool) -> Iterator[dict]:
    index, done, current = None, 0, None

    def checked(sample: dict) -> dict:
        if index is not None and (done >= len(index) or index[done] != [sample["__key__"], sample_crc(sample)]):
            raise shard_damaged(path, f"sample {sample['__key__']} does not match the shard index (checksum)")
        return sample

    for position, member in enumerate(tar):
        if position == 0 and member.name == INDEX_MEMBER:
            index = read_index(tar, member, path)
            continue
        if position == 0 and require_index:
            raise shard_damaged(path, f"no {INDEX_MEMBER} (first member {member.name!r})")
        if not member.isfile() or not _known_file(member.name):
            continue
        data = tar.extractfile(member).read()
        if len(data) != member.size:
            raise shard_damaged(path, f"member {member.name} is truncated")
        key, ext = member.name.split(".", 1)
        if current is not None and key != current["__key__"]:
            yield checked(current)
            done, current = done + 1, None
        current = current or {"__key__": key, "__url__": path}
        current[ext] = data
    if current is not None:
        yield checked(current)
        done += 1
    if require_index and index is None:
        raise shard_damaged(path, f"empty shard (no {INDEX_MEMBER})")
    if index is not None and done != len(index):
        raise shard_damaged(path, f"{done} of the {len(index)} samples its index lists (truncated or damaged)")


def iter_wds(shards: Iterable[str | os.PathLike], require_index: bool = False
             ) -> Iterator[tuple[np.ndarray, np.ndarray, int]]:
    """Stream (image, points, label) from the shards in order (no splitting, shuffling or resampling)."""
    for shard in shards:
        for sample in read_shard(shard, require_index):
            yield decode_wds_sample(sample)


class WdsCache:
    """A complete webdataset cache: its manifest, shard paths and a plain in-order stream."""

    def __init__(self, path: str | os.PathLike, manifest: dict | None = None) -> None:
        self.path = Path(path)
        self.manifest = manifest if manifest is not None else read_manifest(self.path)
        self.checksummed = self.manifest.get("shard_index") == SHARD_INDEX_VERSION
        self.check_shards()

    def check_shards(self) -> None:
        """Cheap checks before any use (so a run stops before writing anything): every shard is there,
        is whole tar blocks, and (checksummed caches) its index reads; the indexes add up to the manifest."""
        listed = 0
        for shard in self.shards:
            try:
                size = shard.stat().st_size
            except OSError as error:
                raise shard_damaged(shard, f"missing ({error.strerror})") from None
            if size == 0 or size % 512:
                raise shard_damaged(shard, f"{size} bytes, not whole 512-byte tar blocks (truncated?)")
            if self.checksummed:
                listed += len(_index_of(shard))
        if self.checksummed and listed != len(self):
            raise shard_damaged(self.path / "manifest.json", f"the shards list {listed} samples, the manifest {len(self)}")

    def __len__(self) -> int:
        return int(self.manifest["samples"])

    @property
    def shards(self) -> list[Path]:
        return [self.path / name for name in self.manifest["shards"]]

    def __iter__(self) -> Iterator[tuple[np.ndarray, np.ndarray, int]]:
        return iter_wds(self.shards, self.checksummed)

    def check_dataset(self, dataset) -> None:
        check_dataset(self.manifest, self.path, dataset)


def _index_of(shard: Path) -> list[list[str]]:
    """A shard's index (its first member), read without reading the rest of the shard."""
    try:
        with open(shard, "rb") as handle, tarfile.open(fileobj=handle, mode="r|") as tar:
            member = tar.next()
            if member is None or member.name != INDEX_MEMBER:
                raise shard_damaged(shard, f"no {INDEX_MEMBER} first")
            return read_index(tar, member, os.fspath(shard))
    except (tarfile.TarError, EOFError, OSError) as error:
        raise shard_damaged(shard, f"not a readable tar shard ({error or type(error).__name__})") from None
