"""The datasets and keypoint caches the benchmarks read, built once with the real `kamim cache` builder."""

from __future__ import annotations

import contextlib
import io
from dataclasses import dataclass
from pathlib import Path

from kamim.datasets import ImageDataset, open_dataset
from kamim.paths import cache_root

from .common import cores
from .large_photos import DEFAULT_ROOT, ensure_large_photos


@dataclass(frozen=True)
class Source:
    """A dataset as the cache builder and the trainer name it."""

    tag: str  # photos | large
    dataset: str
    split: str
    data_root: str | None

    def open(self) -> ImageDataset:
        return open_dataset(self.dataset, self.split, self.data_root)


def source(tag: str, split: str = "train") -> Source:
    if tag == "photos":
        return Source("photos", "photos", split, None)
    if tag == "large":
        return Source("large", "folder", split, str(ensure_large_photos(DEFAULT_ROOT)))
    raise ValueError(f"unknown benchmark source {tag!r}")


def cache_dir(src: Source, detector: str, fmt: str = "zarr", store_size: int | None = None,
              detect_size: int = 256) -> Path:
    suffix = f"-store{store_size}" if store_size else ""
    return cache_root() / "bench" / f"{src.tag}-{src.split}-{detector}-{detect_size}{suffix}.{fmt}"


def ensure_cache(src: Source, detector: str, fmt: str = "zarr", store_size: int | None = None,
                 detect_size: int = 256, quiet: bool = True) -> Path:
    """Build (or reuse) the cache with preprocess.build.build_cache on all cores; returns its dir."""
    from kamim.preprocess.build import CacheConfig, build_cache

    out = cache_dir(src, detector, fmt, store_size, detect_size)
    if (out / "manifest.json").is_file():
        return out
    print(f"bench: building cache {out}", flush=True)
    cfg = CacheConfig(dataset=src.dataset, split=src.split, data_root=src.data_root, detector=detector,
                      detect_size=detect_size, format=fmt, out=str(out), workers=cores(),
                      store_size=store_size)
    sink = io.StringIO()
    with contextlib.redirect_stderr(sink) if quiet else contextlib.nullcontext():
        build_cache(cfg)
    return out
