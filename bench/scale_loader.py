"""The cache-scale benchmark's loader ratio at one N (bench/scale.py): kamim-cached against simmim on real
photos indexed modulo N, as images/s through real DataLoader workers (with the CPU time of the main process
and its workers over the same batches) and as CPU time per image in one process, batches interleaved."""

from __future__ import annotations

import time
from collections.abc import Callable
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
    from .pipelines import loader_rate_and_cpu

    cache = open_cache(cache_dir)
    photos = source(cfg.ratio_source, "train").open()
    dataset = Modulo(photos, len(cache))
    workers = cfg.ratio_workers or cores()

    cpu_us: dict[str, list[float]] = {"simmim": [], "cached": []}

    def measure(mode: str) -> float:
        samples = PretrainSamples(dataset, mode, 16, 0, cache if mode == "cached" else None, detector)
        loader = DataLoader(samples, batch_sampler=EpochBatches(np.arange(len(cache)), cfg.batch_size, 0),
                            num_workers=workers, collate_fn=collate, multiprocessing_context="forkserver")
        rate, cpu = loader_rate_and_cpu(loader, cfg.ratio_batches, cfg.ratio_skip)
        cpu_us[mode].append(cpu)
        return rate

    rates = interleaved({"simmim": lambda: measure("simmim"), "cached": lambda: measure("cached")},
                        cfg.ratio_repetitions, log)
    work = work_ratio(dataset, cache, detector, cfg)
    log(f"  loader work per image (CPU time, batches interleaved): simmim {work['simmim_us']:.0f} us, "
        f"cached {work['cached_us']:.0f} us (collate {work['collate_us']['simmim']:.1f} / "
        f"{work['collate_us']['cached']:.1f}, hand-over {work['handover_us']['simmim']:.1f} / "
        f"{work['handover_us']['cached']:.1f} us per image): ratio {work['ratio']:.3f}")
    return {"images_per_s": {k: float(np.median(v)) for k, v in rates.items()}, "samples": rates,
            "ratio": paired_ratio(rates["cached"], rates["simmim"]), "workers": workers, "work": work,
            "processes_cpu_us": {k: float(np.median(v)) for k, v in cpu_us.items()}, "processes_cpu_samples": cpu_us,
            "processes_cpu_ratio": paired_ratio(cpu_us["simmim"], cpu_us["cached"]),
            "dataset": f"{cfg.ratio_source} ({len(photos)} photos) modulo {len(cache)}"}


def hand_over(batch: dict) -> None:
    """What handing a collated batch from a worker to the main process costs: torch's pickling into shared
    memory, the receiver's rebuild (a file-descriptor handshake and a mapping per tensor; numpy arrays
    travel inside the message), and one read of every byte received (as the copy to the device does).
    The same ForkingPickler round trip a DataLoader queue makes, on bytes this function has just made, in
    one process (the handshake runs against this process's own resource-sharer thread)."""
    from multiprocessing.reduction import ForkingPickler

    import torch
    import torch.multiprocessing  # noqa: F401  (registers torch's shared-memory reductions)

    received = ForkingPickler.loads(ForkingPickler.dumps(batch))
    for value in received.values():  # tensors, or numpy arrays that travelled inside the message
        torch.as_tensor(value).clone()


def interleaved_work(fill: Callable[[str, int], dict], modes: tuple[str, str], batches: int, batch_size: int,
                     warm: int) -> dict[str, dict[str, float]]:
    """CPU time of building and handing over ``batches`` batches in each of two modes, back to back (which
    goes first alternates, so neither always finds the CPU's caches warm), in one process. ``fill(mode, b)``
    builds batch b and returns ``{"batch": collated, part: thread CPU ns, ...}``; each batch is then handed
    over (``hand_over``, timed in process CPU time: the resource-sharer thread's share of a tensor's
    handshake included). Returns, per mode and part ("hand_over" too), us per image: the mean over the
    batches after the first ``warm`` (which warm both paths)."""
    spent: dict[str, dict[str, list[int]]] = {m: {} for m in modes}
    for b in range(batches):
        for mode in (modes if b % 2 else modes[::-1]):
            parts = fill(mode, b)
            batch = parts.pop("batch")
            began = time.process_time_ns()
            hand_over(batch)
            parts["hand_over"] = time.process_time_ns() - began
            for part, ns in parts.items():
                spent[mode].setdefault(part, []).append(ns)
    return {m: {part: float(np.mean(ns[warm:])) / 1e3 / batch_size for part, ns in per_part.items()}
            for m, per_part in spent.items()}


def work_ratio(dataset, cache, detector: str, cfg: ScaleBenchConfig) -> dict:  # noqa: ANN001
    """The loader's work per image, simmim against kamim-cached, as CPU time in one process: each batch of
    random indices is fetched (``__getitems__``, as a DataLoader worker does), collated and handed over
    (``interleaved_work``). A throughput ratio on this shared 2-core VM moves by +-5-10% between
    repetitions; this one is what it converges to when the loader is CPU bound."""
    from kamim.train.data import PretrainSamples, collate

    modes = {m: PretrainSamples(dataset, m, 16, 0, cache if m == "cached" else None, detector)
             for m in ("simmim", "cached")}
    order = np.random.default_rng(len(cache)).integers(0, len(cache), cfg.work_batches * cfg.batch_size).tolist()

    def fill(mode: str, b: int) -> dict:
        keys = [(0, index) for index in order[b * cfg.batch_size : (b + 1) * cfg.batch_size]]
        began = time.thread_time_ns()
        batch = modes[mode].__getitems__(keys)
        fetched = time.thread_time_ns()
        collated = collate(batch)
        return {"batch": collated, "fetch": fetched - began, "collate": time.thread_time_ns() - fetched}

    parts = interleaved_work(fill, ("simmim", "cached"), cfg.work_batches, cfg.batch_size, warm=1)
    total = {m: sum(parts[m].values()) for m in parts}
    return {"simmim_us": total["simmim"], "cached_us": total["cached"],
            "collate_us": {m: parts[m]["collate"] for m in parts},
            "handover_us": {m: parts[m]["hand_over"] for m in parts},
            "ratio": total["simmim"] / total["cached"], "images": len(order) - cfg.batch_size}
