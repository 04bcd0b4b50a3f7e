"""The training DataLoader, built the way `kamim pretrain` builds it (train/pretrain.py), per variant.

Variants: ``simmim`` (image + mask), ``cached-zarr`` (map-style samples + EpochBatches, forkserver
workers), ``cached-wds`` (the trainer's resampled webdataset stream, train.wds_stream.wds_loader), and
``online`` (the original's per-crop detection and OpenCV drawing in the workers).
"""

from __future__ import annotations

import contextlib
import itertools
import os
import time
from pathlib import Path

from torch.utils.data import DataLoader

from kamim.cache import open_cache
from kamim.train.data import EpochBatches, PretrainSamples, collate
from kamim.train.wds_stream import wds_loader

from .caches import Source, ensure_cache

SEED = 0
PATCH = 16  # ViT patch size: the mask generator's output grid
VARIANTS = ("simmim", "cached-zarr", "cached-wds", "online")


def build_loader(variant: str, src: Source, detector: str, batch_size: int, workers: int,
                 pin_memory: bool = False, store_size: int | None = None) -> DataLoader:
    """The DataLoader `kamim pretrain` would build for this variant (same sampler, collate, context)."""
    if variant == "cached-wds":
        cache = open_cache(ensure_cache(src, detector, "wds", store_size))
        return wds_loader(cache, "cached", PATCH, SEED, batch_size, 0, workers, 0, detector,
                          pin_memory=pin_memory)
    dataset = src.open()
    cache = open_cache(ensure_cache(src, detector, "zarr")) if variant == "cached-zarr" else None
    mode = {"simmim": "simmim", "cached-zarr": "cached", "online": "online"}[variant]
    samples = PretrainSamples(dataset, mode, PATCH, SEED, cache, detector)
    indices = samples.usable_indices()
    # As train/pretrain.py: zarr must not be touched before a fork, so cached mode uses forkserver.
    return DataLoader(samples, batch_sampler=EpochBatches(indices, batch_size, SEED), num_workers=workers,
                      collate_fn=collate, pin_memory=pin_memory,
                      multiprocessing_context=("forkserver" if cache is not None else None) if workers else None)


def loader_rate(loader: DataLoader, batches: int, skip: int) -> float:
    """Images/s over ``batches`` batches after ``skip`` batches (worker start-up and the first fill)."""
    return loader_rate_and_cpu(loader, batches, skip, cpu_needed=False)[0]


def loader_rate_and_cpu(loader: DataLoader, batches: int, skip: int, cpu_needed: bool = True) -> tuple[float, float]:
    """(images/s, CPU us per image of the main process and its loader workers together, every thread: the
    workers' fetch and collate, and both sides of handing each batch over) over the same batches."""
    iterator = iter(loader)
    try:
        for batch in itertools.islice(iterator, skip):
            del batch
        workers = getattr(iterator, "_workers", None)
        if cpu_needed and loader.num_workers and workers is None:  # a generator around the loader: workers unseen
            raise TypeError(f"{type(loader).__name__}'s iterator does not show its workers: time a plain DataLoader")
        processes = [os.getpid()] + [worker.pid for worker in workers or []]
        cpu, began = cpu_ns(processes), time.perf_counter()
        images = sum(batch["image"].shape[0] for batch in itertools.islice(iterator, batches))
        cpu, seconds = cpu_ns(processes) - cpu, time.perf_counter() - began
        return images / seconds, cpu / images / 1e3
    finally:
        del iterator  # shuts the workers down before the next variant starts


def cpu_ns(processes: list[int]) -> int:
    """CPU time the processes have run, every thread's (those that have ended too), ns; /proc's user and
    system clock ticks (10 ms each: a loader measurement spans hundreds of them)."""
    tick, total = 1e9 / os.sysconf("SC_CLK_TCK"), 0
    for pid in processes:
        with contextlib.suppress(OSError):  # a worker that has exited
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            total += int(fields[11]) + int(fields[12])  # utime, stime (fields 14 and 15 of proc(5))
    return int(total * tick)
