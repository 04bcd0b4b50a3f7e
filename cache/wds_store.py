"""The webdataset cache: self-contained tar shards of (re-encoded image, its keypoints, its label).

Each sample is ``<key>.jpg`` (RGB JPEG), ``<key>.kp.npy`` (float32 [N,2] (x, y) in the pixels of that
stored image, written with ``allow_pickle=False``) and ``<key>.cls`` (the label as text). Reading
decodes exactly these three keys and ignores anything else in a shard; nothing is ever unpickled.
"""

from __future__ import annotations

import io
import os
from collections.abc import Iterable, Iterator
from pathlib import Path

import cv2
import numpy as np

from kamim.cache.manifest import check_dataset, read_manifest
from kamim.datasets import decode_image
from kamim.errors import UserError

SHARD_NAME = "shard-{:06d}.tar"
JPEG_QUALITY = 90
SAMPLE_KEYS = ("jpg", "kp.npy", "cls")


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
    try:
        with open(tmp, "wb") as handle:
            with TarWriter(handle, encoder=False, mtime=0, user="kamim", group="kamim", mode=0o444) as writer:
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


def decode_wds_sample(sample: dict) -> tuple[np.ndarray, np.ndarray, int]:
    """A raw webdataset sample dict -> (uint8 RGB image, float32 [N,2] points, label).

    Use it as ``wds.WebDataset(...).map(decode_wds_sample)``; only the three known keys are read.
    """
    key = sample.get("__key__", "?")
    where = f"{sample.get('__url__', 'shard')}: sample {key}"
    missing = [k for k in SAMPLE_KEYS if k not in sample]
    if missing:
        raise UserError(f"{where} lacks {', '.join(missing)}: not a kamim shard; rebuild with `kamim cache --format wds`")
    image = decode_image(sample["jpg"], name=f"{key}.jpg")
    try:  # allow_pickle=False: an object array (a pickle) is refused, never loaded
        points = np.load(io.BytesIO(sample["kp.npy"]), allow_pickle=False).astype(np.float32).reshape(-1, 2)
        label = int(sample["cls"])
    except (ValueError, OSError, EOFError) as error:
        raise UserError(f"{where}: unreadable keypoints or label ({error}); rebuild with `kamim cache`") from None
    return image, points, label


def _known_file(name: str) -> bool:
    # Our shards are flat: a member with a directory part (path-like, e.g. ../x.jpg) is never ours.
    return "/" not in name and name.split(".", 1)[-1].lower() in SAMPLE_KEYS


def iter_wds(shards: Iterable[str | os.PathLike]) -> Iterator[tuple[np.ndarray, np.ndarray, int]]:
    """Stream (image, points, label) from the shards in order (no splitting, shuffling or resampling)."""
    from webdataset.tariterators import tarfile_samples

    urls = [{"url": os.fspath(shard)} for shard in shards]
    for sample in tarfile_samples(urls, select_files=_known_file):
        yield decode_wds_sample(sample)


class WdsCache:
    """A complete webdataset cache: its manifest, shard paths and a plain in-order stream."""

    def __init__(self, path: str | os.PathLike, manifest: dict | None = None) -> None:
        self.path = Path(path)
        self.manifest = manifest if manifest is not None else read_manifest(self.path)

    def __len__(self) -> int:
        return int(self.manifest["samples"])

    @property
    def shards(self) -> list[Path]:
        return [self.path / name for name in self.manifest["shards"]]

    def __iter__(self) -> Iterator[tuple[np.ndarray, np.ndarray, int]]:
        return iter_wds(self.shards)

    def check_dataset(self, dataset) -> None:
        check_dataset(self.manifest, self.path, dataset)
