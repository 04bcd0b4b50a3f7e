"""Pretraining batches streamed from a webdataset cache, safe under DDP and with many loader workers.

Webdataset pipelines hang DDP when ranks run out of data at different times (uneven shards, fewer
shards than ranks x workers; reference/anchors.md B.2). Training therefore never splits shards:
every (rank, worker) *resamples* shards with replacement from its own seed, forever, and the trainer
draws the same number of batches on every rank, so no rank can run dry. An "epoch" is a count:
the good samples over the global batch.

Samples get the same augmentation and mask code as the map-style path (train/data.py), seeded per
(rank, worker, resume point, draw); a resumed stream is a fresh draw, not a replay of the first run.
"""

from __future__ import annotations

import os
import random
from collections.abc import Iterator

import numpy as np
import torch
from torch.utils.data import IterableDataset, get_worker_info

from kamim.malloc import keep_freed_memory

from .augment import crop_image, sample_crop, sample_seed, seeded
from .crop_codes import point_crop
from .data import OneLineErrorLoader, collate, online_ring_map
from .masking import random_mask

SHUFFLE_BUFFER = 256  # samples; shards are drawn at random, this mixes within and across shards


def _zero_seed() -> int:
    return 0  # webdataset's own worker seed reads RANK from the environment, wrong under XLA: we seed


class WdsPretrainStream(IterableDataset):
    """Endless batches (dicts, as ``data.collate`` makes them) for one rank; iterate inside a DataLoader
    with ``batch_size=None`` (each worker yields whole batches)."""

    def __init__(self, shards: list[str | os.PathLike], mode: str, model_patch_size: int, seed: int,
                 batch_size: int, rank: int = 0, start: int = 0, detector: str = "fast", gray: str = "bgr",
                 img_size: int = 192, verify: bool = False) -> None:
        if not shards:
            raise ValueError("no webdataset shards to stream")
        self.shards = [os.fspath(s) for s in shards]
        self.mode, self.model_patch_size, self.seed = mode, model_patch_size, seed
        self.batch_size, self.rank, self.start = batch_size, rank, start
        self.detector, self.gray, self.img_size = detector, gray, img_size
        self.verify = verify  # every shard must carry its index (checksums): the cache's manifest says so

    def stream_seed(self) -> int:
        info = get_worker_info()
        worker = info.id if info is not None else 0
        return sample_seed(self.seed, self.rank * 1_000_003 + worker, self.start)

    def samples(self) -> Iterator[dict[str, torch.Tensor]]:
        import webdataset as wds

        from kamim.cache.wds_store import decode_wds_sample, read_shard

        seed = self.stream_seed()
        shards = wds.ResampledShards(self.shards, seed=seed, worker_seed=_zero_seed, deterministic=True)
        # The cache's own reader: each sample checked against its shard's index before it is used, and
        # a damaged shard is one line naming it (webdataset's tar reader stops silently at a bad header).
        raw = (sample for shard in shards for sample in read_shard(shard["url"], self.verify))
        mixed = wds.shuffle(SHUFFLE_BUFFER, SHUFFLE_BUFFER // 4, rng=random.Random(seed))(raw)
        for draw, sample in enumerate(mixed):
            image, points, _ = decode_wds_sample(sample)
            key = sample["__key__"]  # the dataset index (kamim.cache.wds_store.sample_key)
            index = int(key) if key.isdigit() else draw
            yield self.augment(image, points, sample_seed(seed, draw, index))

    def augment(self, image: np.ndarray, points: np.ndarray, seed: int) -> dict[str, torch.Tensor]:
        with seeded(seed):
            crop = sample_crop(image.shape[0], image.shape[1], self.img_size)
            mask = random_mask(None, self.model_patch_size, self.img_size)
        sample = {"image": crop_image(image, crop, self.img_size), "mask": mask}
        if self.mode == "cached":  # moved into the crop on the device (kamim.train.crop_codes.point_crop)
            sample["source_points"], sample["point_crop"] = points, point_crop(crop, self.img_size)
        elif self.mode == "online":
            sample["map"] = torch.from_numpy(online_ring_map(sample["image"], self.detector, self.gray))
        return sample

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        keep_freed_memory()  # once per worker: big decode buffers stop costing page faults
        batch: list[dict[str, torch.Tensor]] = []
        for sample in self.samples():
            batch.append(sample)
            if len(batch) == self.batch_size:
                yield collate(batch)
                batch = []


def collated(batch: dict) -> dict:
    """The DataLoader's collate_fn for a stream whose workers yield whole batches: the batch as it is. Its
    default for ``batch_size=None`` (default_convert) turns the numpy arrays ``collate`` made into tensors in
    the worker, and each tensor is then handed over through its own shared-memory segment and
    file-descriptor handshake (bench/wds_stream.py measures the stream)."""
    return batch


def wds_batches_per_epoch(good_samples: int, batch_size: int, world: int) -> int:
    """Batches per rank that make one pass over the data's size (at least one)."""
    return max(1, good_samples // (batch_size * world))


def wds_loader(cache, mode: str, model_patch_size: int, seed: int, batch_size: int, rank: int,  # noqa: ANN001
               workers: int, start: int = 0, detector: str = "fast", gray: str = "bgr",
               pin_memory: bool = False) -> torch.utils.data.DataLoader:
    """An endless DataLoader of this rank's batches from a ``WdsCache`` (``start``: micro-batches done)."""
    stream = WdsPretrainStream(cache.shards, mode, model_patch_size, seed, batch_size, rank, start, detector, gray,
                               verify=bool(getattr(cache, "checksummed", False)))
    from .interrupt import ignore_interrupts

    return OneLineErrorLoader(stream, batch_size=None, num_workers=workers, pin_memory=pin_memory,
                              collate_fn=collated, worker_init_fn=ignore_interrupts)  # Ctrl-C is the main process's to handle
