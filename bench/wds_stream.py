"""Webdataset like for like: the kamim-cached wds stream against a SimMIM stream reading the same shards.

Both are `train.wds_stream.WdsPretrainStream` over the same shard list, seed, shuffle buffer, crops and masks;
the SimMIM side decodes the image only (the keypoints in the shard are not parsed), the kamim side decodes
the image and its points and hands them over with the crop's numbers (the step moves them through the crop).
Three measures, all interleaved: images/s of the DataLoader; the CPU time per image of its main process
and workers over the same batches; and the work per image in one process (CPU time to decode, augment,
collate and hand a batch over), which a 2-core VM's noise moves least.

    python -m bench.wds_stream [--quick]
"""

from __future__ import annotations

import random
import time
from collections.abc import Iterator
from dataclasses import dataclass

import click
import numpy as np
import torch

from kamim.cache import open_cache
from kamim.train.wds_stream import (
    SHUFFLE_BUFFER,
    WdsPretrainStream,
    _zero_seed,
    collated,
)

from .caches import ensure_cache, source
from .common import cores, interleaved, log, paired_ratio, ratio_entry, start, summary, write_result
from .pipelines import PATCH, SEED, loader_rate_and_cpu
from .scale_loader import interleaved_work


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


def work_ratio(cache, cfg: WdsStreamBenchConfig) -> dict:  # noqa: ANN001
    """CPU time per image of one loader worker's work plus the hand-over, SimMIM against kamim-cached, on the
    same raw samples, crops and masks: each batch of random samples is decoded, augmented, collated and
    handed over in both modes back to back (bench.scale_loader.interleaved_work)."""
    from kamim.cache.wds_store import decode_wds_sample, read_shard
    from kamim.datasets import decode_image
    from kamim.train.data import collate

    verify = bool(getattr(cache, "checksummed", False))
    raw = [sample for shard in cache.shards for sample in read_shard(str(shard), verify)]
    streams = {m: WdsPretrainStream(cache.shards, m, PATCH, SEED, cfg.batch_size) for m in ("simmim", "cached")}
    none = np.zeros((0, 2), np.float32)

    def decoded(mode: str, sample: dict) -> tuple:
        if mode == "cached":
            return decode_wds_sample(sample)[:2]
        return decode_image(sample["jpg"], name=f"{sample['__key__']}.jpg"), none  # as ImagesOnlyStream

    rng = np.random.default_rng(SEED)
    chunks = [[raw[i] for i in rng.integers(0, len(raw), cfg.batch_size)] for _ in range(cfg.work_batches)]

    def fill(mode: str, b: int) -> dict:
        began = time.thread_time_ns()
        batch = collate([streams[mode].augment(*decoded(mode, sample), SEED + b * cfg.batch_size + k)
                         for k, sample in enumerate(chunks[b])])
        return {"batch": batch, "worker": time.thread_time_ns() - began}

    parts = interleaved_work(fill, ("simmim", "cached"), cfg.work_batches, cfg.batch_size, warm=2)
    total = {m: sum(parts[m].values()) for m in parts}
    return {"simmim_us": total["simmim"], "cached_us": total["cached"], "parts_us": parts,
            "ratio": total["simmim"] / total["cached"], "images": (cfg.work_batches - 2) * cfg.batch_size}


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
    work_batches: int = 60  # batches of the work measure (each in both modes)


def run(cfg: WdsStreamBenchConfig) -> dict:
    began = start(cfg)
    workers = cfg.workers or cores()
    results, ratios = {}, []
    for tag in cfg.sources:
        store = cfg.store_size if tag == "large" else None
        cache = open_cache(ensure_cache(source(tag, "train"), cfg.detector, "wds", store))
        verify = bool(getattr(cache, "checksummed", False))
        log(f"wds stream: {tag}, {len(cache.shards)} shards, batch {cfg.batch_size}, {workers} workers")

        cpu_us: dict[str, list[float]] = {"simmim-wds": [], "kamim-cached-wds": []}

        def measure(name: str, cache=cache, verify=verify, cpu_us=cpu_us) -> float:  # noqa: ANN001
            # wds_loader's stream and collate_fn in a plain DataLoader (whose iterator shows its workers, so
            # their CPU time is read too); wds_loader adds only error wording and a worker_init_fn
            kind = ImagesOnlyStream if name == "simmim-wds" else WdsPretrainStream
            stream = kind(cache.shards, "simmim" if name == "simmim-wds" else "cached", PATCH, SEED, cfg.batch_size,
                          detector=cfg.detector, verify=verify)
            loader = torch.utils.data.DataLoader(stream, batch_size=None, num_workers=workers, collate_fn=collated)
            rate, cpu = loader_rate_and_cpu(loader, cfg.batches, cfg.skip)
            cpu_us[name].append(cpu)
            return rate

        samples = interleaved({name: lambda n=name, m=measure: m(n) for name in cpu_us}, cfg.repetitions, log)
        work = work_ratio(cache, cfg)
        log(f"  work per image: simmim {work['simmim_us']:.0f} us, kamim-cached {work['cached_us']:.0f} us "
            f"(ratio {work['ratio']:.3f})")
        results[tag] = {"images_per_s": summary(samples), "cpu_us_per_image": summary(cpu_us), "work": work,
                        "shards": len(cache.shards), "store_size": store}
        ratios.append(ratio_entry(f"loader {tag} wds kamim-cached/simmim (same shards)",
                                  paired_ratio(samples["kamim-cached-wds"], samples["simmim-wds"]), 0.95))
        ratios.append(ratio_entry(f"loader {tag} wds all processes' CPU per image simmim/kamim-cached",
                                  paired_ratio(cpu_us["simmim-wds"], cpu_us["kamim-cached-wds"]), 0.95))
        ratios.append(ratio_entry(f"loader {tag} wds work per image simmim/kamim-cached (same samples)",
                                  work["ratio"], 0.95))
    payload = {"workers": workers, "results": results, "ratios": ratios}
    write_result("wds_stream", cfg, payload, began)
    return payload


def config(quick: bool = False) -> WdsStreamBenchConfig:
    cfg = WdsStreamBenchConfig(quick=quick)
    if quick:
        cfg.sources, cfg.batches, cfg.skip, cfg.repetitions, cfg.batch_size = ("large",), 6, 2, 2, 16
        cfg.work_batches = 6
    return cfg


@click.command()
@click.option("--quick", is_flag=True, help="Few batches, large photos only: checks it works (noisy).")
def main(quick: bool) -> None:
    """Loader images/s: kamim-cached wds stream vs a SimMIM stream over the same shards."""
    run(config(quick))


if __name__ == "__main__":
    main()
