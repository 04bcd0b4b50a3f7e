"""Webdataset like for like: the kamim-cached wds stream against a SimMIM stream reading the same shards.

Both are `train.wds_stream.WdsPretrainStream` over the same shard list, seed, shuffle buffer, crops and masks;
the SimMIM side decodes the image only (the keypoints in the shard are not parsed), the kamim side decodes
the image and its points and moves the points through the crop. Images/s of the DataLoader, interleaved.

    python -m bench.wds_stream [--quick]
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from dataclasses import dataclass

import click
import numpy as np
import torch

from kamim.cache import open_cache
from kamim.train.wds_stream import (
    SHUFFLE_BUFFER,
    OneLineErrorLoader,
    WdsPretrainStream,
    _zero_seed,
    wds_loader,
)

from .caches import ensure_cache, source
from .common import cores, interleaved, log, paired_ratio, ratio_entry, start, summary, write_result
from .pipelines import PATCH, SEED, loader_rate


class ImagesOnlyStream(WdsPretrainStream):
    """SimMIM on the same shards: the image is decoded, the stored keypoints are never parsed."""

    def samples(self) -> Iterator[dict[str, torch.Tensor]]:
        import webdataset as wds

        from kamim.cache.wds_store import read_shard
        from kamim.datasets import decode_image

        seed = self.stream_seed()
        shards = wds.ResampledShards(self.shards, seed=seed, worker_seed=_zero_seed, deterministic=True)
        raw = (sample for shard in shards for sample in read_shard(shard["url"], self.verify))
        mixed = wds.shuffle(SHUFFLE_BUFFER, SHUFFLE_BUFFER // 4, rng=random.Random(seed))(raw)
        none = np.zeros((0, 2), np.float32)
        for draw, sample in enumerate(mixed):
            key = sample["__key__"]
            index = int(key) if key.isdigit() else draw
            yield self.augment(decode_image(sample["jpg"], name=f"{key}.jpg"), none,
                               sample_seed_of(seed, draw, index))


def sample_seed_of(seed: int, draw: int, index: int) -> int:
    from kamim.train.augment import sample_seed

    return sample_seed(seed, draw, index)


@dataclass
class WdsStreamBenchConfig:
    quick: bool = False
    sources: tuple[str, ...] = ("large", "photos")
    detector: str = "fast"
    store_size: int = 256  # the large photos' shards hold images pre-resized to this shorter side
    batch_size: int = 32
    workers: int = 0  # 0: all cores
    batches: int = 32  # as bench.loader: 12 timed batches let one slow phase decide
    skip: int = 5
    repetitions: int = 5


def run(cfg: WdsStreamBenchConfig) -> dict:
    began = start(cfg)
    workers = cfg.workers or cores()
    results, ratios = {}, []
    for tag in cfg.sources:
        store = cfg.store_size if tag == "large" else None
        cache = open_cache(ensure_cache(source(tag, "train"), cfg.detector, "wds", store))
        verify = bool(getattr(cache, "checksummed", False))
        log(f"wds stream: {tag}, {len(cache.shards)} shards, batch {cfg.batch_size}, {workers} workers")

        def measure(mode: str, cache=cache, verify=verify) -> float:  # noqa: ANN001
            if mode == "cached":
                loader = wds_loader(cache, "cached", PATCH, SEED, cfg.batch_size, 0, workers, 0, cfg.detector)
            else:
                stream = ImagesOnlyStream(cache.shards, "simmim", PATCH, SEED, cfg.batch_size, verify=verify)
                loader = OneLineErrorLoader(stream, batch_size=None, num_workers=workers)
            return loader_rate(loader, cfg.batches, cfg.skip)

        samples = interleaved({"simmim-wds": lambda m=measure: m("simmim"),
                               "kamim-cached-wds": lambda m=measure: m("cached")}, cfg.repetitions, log)
        results[tag] = {"images_per_s": summary(samples), "shards": len(cache.shards),
                        "store_size": store}
        ratios.append(ratio_entry(f"loader {tag} wds kamim-cached/simmim (same shards)",
                                  paired_ratio(samples["kamim-cached-wds"], samples["simmim-wds"]), 0.95))
    payload = {"workers": workers, "results": results, "ratios": ratios}
    write_result("wds_stream", cfg, payload, began)
    return payload


def config(quick: bool = False) -> WdsStreamBenchConfig:
    cfg = WdsStreamBenchConfig(quick=quick)
    if quick:
        cfg.sources, cfg.batches, cfg.skip, cfg.repetitions, cfg.batch_size = ("large",), 6, 2, 2, 16
    return cfg


@click.command()
@click.option("--quick", is_flag=True, help="Few batches, large photos only: checks it works (noisy).")
def main(quick: bool) -> None:
    """Loader images/s: kamim-cached wds stream vs a SimMIM stream over the same shards."""
    run(config(quick))


if __name__ == "__main__":
    main()
