"""The cache-scale benchmark's loader ratio at one N (bench/scale.py): kamim-cached against simmim on real
photos indexed modulo N, as images/s through real DataLoader workers and as CPU time per image."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

import numpy as np

from kamim.cache import open_cache

from .common import cores, interleaved, log, paired_ratio

if TYPE_CHECKING:
    from .scale import ScaleBenchConfig


class Modulo:
    """A dataset of ``count`` samples that repeats ``base`` (the real photos, indexed modulo its size)."""

    def __init__(self, base, count: int) -> None:  # noqa: ANN001
        self.base, self.count = base, count
        self.name, self.split = base.name, base.split

    def __len__(self) -> int:
        return self.count

    def __getitem__(self, index: int):  # noqa: ANN204
        return self.base[index % len(self.base)]

    def describe(self) -> str:
        return f"{self.base.describe()} repeated to {self.count}"


def loader_ratio(cache_dir, detector: str, cfg: ScaleBenchConfig) -> dict:  # noqa: ANN001
    from torch.utils.data import DataLoader

    from kamim.train.data import EpochBatches, PretrainSamples, collate

    from .caches import source
    from .pipelines import loader_rate

    cache = open_cache(cache_dir)
    photos = source(cfg.ratio_source, "train").open()
    dataset = Modulo(photos, len(cache))
    workers = cfg.ratio_workers or cores()

    def measure(mode: str) -> float:
        samples = PretrainSamples(dataset, mode, 16, 0, cache if mode == "cached" else None, detector)
        loader = DataLoader(samples, batch_sampler=EpochBatches(np.arange(len(cache)), cfg.batch_size, 0),
                            num_workers=workers, collate_fn=collate, multiprocessing_context="forkserver")
        return loader_rate(loader, cfg.ratio_batches, cfg.ratio_skip)

    rates = interleaved({"simmim": lambda: measure("simmim"), "cached": lambda: measure("cached")},
                        cfg.ratio_repetitions, log)
    work = work_ratio(dataset, cache, detector, cfg)
    log(f"  loader work per image (CPU time, batches interleaved): simmim {work['simmim_us']:.0f} us, "
        f"cached {work['cached_us']:.0f} us (collate {work['collate_us']['simmim']:.1f} / "
        f"{work['collate_us']['cached']:.1f} us per image): ratio {work['ratio']:.3f}")
    return {"images_per_s": {k: float(np.median(v)) for k, v in rates.items()}, "samples": rates,
            "ratio": paired_ratio(rates["cached"], rates["simmim"]), "workers": workers, "work": work,
            "dataset": f"{cfg.ratio_source} ({len(photos)} photos) modulo {len(cache)}"}


def work_ratio(dataset, cache, detector: str, cfg: ScaleBenchConfig) -> dict:  # noqa: ANN001
    """The loader's work per image, simmim against kamim-cached, as CPU time in one process: each batch of
    random indices is fetched (``__getitems__``, as a DataLoader worker does) and collated in both modes
    back to back (which goes first alternates, so neither always finds the CPU's caches warm). A
    throughput ratio on this shared 2-core VM moves by +-15% between repetitions; this one is what it
    converges to when the loader is CPU bound."""
    from kamim.train.data import PretrainSamples, collate

    modes = {m: PretrainSamples(dataset, m, 16, 0, cache if m == "cached" else None, detector)
             for m in ("simmim", "cached")}
    order = np.random.default_rng(len(cache)).integers(0, len(cache), cfg.work_batches * cfg.batch_size).tolist()
    spent: dict[str, list[int]] = {m: [] for m in modes}
    collated: dict[str, list[int]] = {m: [] for m in modes}
    for b in range(cfg.work_batches):
        keys = [(0, index) for index in order[b * cfg.batch_size : (b + 1) * cfg.batch_size]]
        for mode in (("simmim", "cached") if b % 2 else ("cached", "simmim")):
            began = time.thread_time_ns()
            batch = modes[mode].__getitems__(keys)
            fetched = time.thread_time_ns()
            collate(batch)
            spent[mode].append(fetched - began)
            collated[mode].append(time.thread_time_ns() - fetched)
    per_batch = {m: (float(np.mean(spent[m][1:])) + float(np.mean(collated[m][1:]))) / 1e3 for m in modes}
    per_image = {m: per_batch[m] / cfg.batch_size for m in modes}  # the first batch warms both paths
    return {"simmim_us": per_image["simmim"], "cached_us": per_image["cached"],
            "collate_us": {m: float(np.mean(collated[m][1:])) / 1e3 / cfg.batch_size for m in modes},
            "ratio": per_image["simmim"] / per_image["cached"], "images": len(order) - cfg.batch_size}
