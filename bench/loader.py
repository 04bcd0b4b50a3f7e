"""Loader throughput: images/s of the training DataLoader per variant, side by side.

simmim vs kamim-cached (zarr, wds) vs kamim-online (the original's per-crop detection), FAST and SIFT,
on `photos` (224 px) and on ImageNet-sized photos (500-800 px); same dataset, 192 px, workers, batch.
"""

from __future__ import annotations

from dataclasses import dataclass

import click

from .caches import source
from .common import cores, interleaved, log, paired_ratio, ratio_entry, start, summary, write_result
from .pipelines import build_loader, loader_rate


@dataclass
class LoaderBenchConfig:
    quick: bool = False
    sources: tuple[str, ...] = ("photos", "large")
    detectors: tuple[str, ...] = ("fast", "sift")
    batch_size: int = 32
    workers: int = 0  # 0: all cores
    batches: int = 32  # timed batches per measurement (12, about half a second, let one slow phase decide)
    skip: int = 5  # untimed batches first (worker start-up and the workers' first fill, 2 batches each)
    repetitions: int = 5


def variants_for(detectors: tuple[str, ...]) -> list[tuple[str, str]]:
    out = [("simmim", detectors[0])]
    for mode in ("cached-zarr", "cached-wds", "online"):
        out += [(mode, d) for d in detectors]
    return out


def run(cfg: LoaderBenchConfig) -> dict:
    began = start(cfg)
    workers = cfg.workers or cores()
    results, ratios = {}, []
    for tag in cfg.sources:
        src = source(tag, "val" if cfg.quick and tag == "photos" else "train")
        pairs = variants_for(cfg.detectors)
        for mode, detector in pairs:  # build every cache first, outside the timing
            if mode != "simmim":
                build_loader(mode, src, detector, cfg.batch_size, 0)
        log(f"loader: {tag} ({src.dataset}/{src.split}), batch {cfg.batch_size}, {workers} workers")

        def measure(mode: str, detector: str, src=src) -> float:  # noqa: ANN001
            loader = build_loader(mode, src, detector, cfg.batch_size, workers)
            return loader_rate(loader, cfg.batches, cfg.skip)

        names = {("simmim" if m == "simmim" else f"{m}-{d}"): (m, d) for m, d in pairs}
        samples = interleaved({n: (lambda md=md: measure(*md)) for n, md in names.items()}, cfg.repetitions, log)
        results[tag] = {"images_per_s": summary(samples)}
        for d in cfg.detectors:
            for fmt in ("zarr", "wds"):
                ratios.append(ratio_entry(f"loader {tag} kamim-cached-{fmt}/simmim {d}",
                                          paired_ratio(samples[f"cached-{fmt}-{d}"], samples["simmim"]), 0.95))
            target = 3.0 if (tag == "large" and d == "sift") else None
            ratios.append(ratio_entry(f"loader {tag} kamim-cached-zarr/kamim-online {d}",
                                      paired_ratio(samples[f"cached-zarr-{d}"], samples[f"online-{d}"]), target))
    payload = {"workers": workers, "results": results, "ratios": ratios}
    write_result("loader", cfg, payload, began)
    return payload


def config(quick: bool = False) -> LoaderBenchConfig:
    cfg = LoaderBenchConfig(quick=quick)
    if quick:
        cfg.sources, cfg.batches, cfg.skip, cfg.repetitions, cfg.batch_size = ("large",), 6, 2, 2, 16
    return cfg


@click.command()
@click.option("--quick", is_flag=True, help="Small sizes: checks the benchmark works (numbers are noisy).")
def main(quick: bool) -> None:
    """Loader images/s: simmim vs kamim-cached (zarr, wds) vs kamim-online, FAST and SIFT."""
    run(config(quick))


if __name__ == "__main__":
    main()
