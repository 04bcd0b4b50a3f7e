"""The training DataLoader, built the way `kamim pretrain` builds it (train/pretrain.py), per variant.

Variants: ``simmim`` (image + mask), ``cached-zarr`` (the trainer's cached mode), ``online`` (the
original's per-crop detection in the workers), and ``cached-wds``: the trainer reads zarr caches only,
so for the webdataset format the loader streams the shards (split over workers) and turns each sample
into a training sample with the trainer's own per-sample code (PretrainSamples.__getitem__).
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Iterator

import numpy as np
import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from kamim.cache import open_cache
from kamim.train.data import EpochBatches, PretrainSamples, collate

from .caches import Source, ensure_cache

SEED = 0
PATCH = 16  # ViT patch size: the mask generator's output grid
VARIANTS = ("simmim", "cached-zarr", "cached-wds", "online")


class _OneImage:
    """A one-sample dataset + cache, so a streamed wds sample goes through PretrainSamples unchanged."""

    def __init__(self, image: np.ndarray, points: np.ndarray, label: int) -> None:
        self.image, self._points, self.label = image, points, label

    def __len__(self) -> int:
        return 1

    def __getitem__(self, index: int) -> tuple[np.ndarray, int]:
        return self.image, self.label

    def points(self, index: int) -> np.ndarray:
        return self._points


class WdsSamples(IterableDataset):
    """Endless stream of training samples from wds shards; worker w reads shards w, w+W, ..."""

    def __init__(self, cache_path: str, detector: str, seed: int = SEED, shuffle_buffer: int = 256) -> None:
        self.cache_path, self.detector, self.seed, self.buffer = cache_path, detector, seed, shuffle_buffer

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        import webdataset as wds

        from kamim.cache.wds_store import _known_file, decode_wds_sample

        info = get_worker_info()
        worker, workers = (info.id, info.num_workers) if info else (0, 1)
        shards = [str(p) for p in open_cache(self.cache_path).shards]
        mine = shards[worker::workers] or shards  # fewer shards than workers: share rather than idle
        stream = wds.WebDataset(mine, shardshuffle=False, empty_check=False, select_files=_known_file,
                                nodesplitter=None, workersplitter=None).repeat()
        stream = stream.shuffle(self.buffer, seed=self.seed * 1000 + worker).map(decode_wds_sample)
        for count, (image, points, label) in enumerate(stream):
            one = _OneImage(image, points, label)
            samples = PretrainSamples(one, "cached", PATCH, self.seed, one, self.detector)
            yield samples[(0, count * workers + worker)]


def build_loader(variant: str, src: Source, detector: str, batch_size: int, workers: int,
                 pin_memory: bool = False, store_size: int | None = None) -> DataLoader:
    """The DataLoader `kamim pretrain` would build for this variant (same sampler, collate, context)."""
    if variant == "cached-wds":
        path = ensure_cache(src, detector, "wds", store_size)
        return DataLoader(WdsSamples(str(path), detector), batch_size=batch_size, num_workers=workers,
                          collate_fn=collate, pin_memory=pin_memory,
                          multiprocessing_context="forkserver" if workers else None)
    dataset = src.open()
    cache = open_cache(ensure_cache(src, detector, "zarr")) if variant == "cached-zarr" else None
    mode = {"simmim": "simmim", "cached-zarr": "cached", "online": "online"}[variant]
    samples = PretrainSamples(dataset, mode, PATCH, SEED, cache, detector)
    try:
        indices = samples.usable_indices()
    except TypeError:  # train/data.py calls ZarrCache.ok(), a property (reported to the lead)
        indices = np.flatnonzero(cache.ok)
    # As train/pretrain.py: zarr must not be touched before a fork, so cached mode uses forkserver.
    return DataLoader(samples, batch_sampler=EpochBatches(indices, batch_size, SEED), num_workers=workers,
                      collate_fn=collate, pin_memory=pin_memory,
                      multiprocessing_context=("forkserver" if cache is not None else None) if workers else None)


def loader_rate(loader: DataLoader, batches: int, skip: int) -> float:
    """Images/s over ``batches`` batches after ``skip`` batches (worker start-up and the first fill)."""
    iterator = iter(loader)
    try:
        for batch in itertools.islice(iterator, skip):
            del batch
        began = time.perf_counter()
        images = sum(batch["image"].shape[0] for batch in itertools.islice(iterator, batches))
        return images / (time.perf_counter() - began)
    finally:
        del iterator  # shuts the workers down before the next variant starts
