"""Pre-resized webdataset shards (images stored at shorter side 256, FFCV-style) vs reading the original
ImageNet-sized images from the image folder: training-loader images/s, kamim-cached, side by side.
"""

from __future__ import annotations

from dataclasses import dataclass

import click

from .caches import source
from .common import cores, interleaved, log, paired_ratio, ratio_entry, start, summary, write_result
from .pipelines import build_loader, loader_rate


@dataclass
class WdsBenchConfig:
    quick: bool = False
    detector: str = "fast"
    store_size: int = 256
    batch_size: int = 32
    workers: int = 0  # 0: all cores
    batches: int = 12
    skip: int = 3
    repetitions: int = 3


def run(cfg: WdsBenchConfig) -> dict:
    began = start(cfg)
    workers = cfg.workers or cores()
    src = source("large", "train")
    variants = {  # name -> (loader variant, store size)
        f"wds-store{cfg.store_size}": ("cached-wds", cfg.store_size),
        "wds-original": ("cached-wds", None),
        "folder+zarr": ("cached-zarr", None),
    }
    for mode, store in variants.values():  # caches built outside the timing
        build_loader(mode, src, cfg.detector, cfg.batch_size, 0, store_size=store)
    log(f"wds vs folder: large photos, {cfg.detector}, batch {cfg.batch_size}, {workers} workers")

    def measure(mode: str, store: int | None) -> float:
        loader = build_loader(mode, src, cfg.detector, cfg.batch_size, workers, store_size=store)
        return loader_rate(loader, cfg.batches, cfg.skip)

    samples = interleaved({n: (lambda v=v: measure(*v)) for n, v in variants.items()}, cfg.repetitions, log)
    ratios = [
        ratio_entry(f"loader large wds-store{cfg.store_size}/folder+zarr",
                    paired_ratio(samples[f"wds-store{cfg.store_size}"], samples["folder+zarr"]), None),
        ratio_entry("loader large wds-original/folder+zarr",
                    paired_ratio(samples["wds-original"], samples["folder+zarr"]), None),
    ]
    payload = {"workers": workers, "images_per_s": summary(samples), "ratios": ratios}
    write_result("wds_vs_folder", cfg, payload, began)
    return payload


def config(quick: bool = False) -> WdsBenchConfig:
    cfg = WdsBenchConfig(quick=quick)
    if quick:
        cfg.batches, cfg.skip, cfg.repetitions, cfg.batch_size = 6, 2, 2, 16
    return cfg


@click.command()
@click.option("--quick", is_flag=True, help="Few batches: checks the benchmark works (noisy).")
def main(quick: bool) -> None:
    """Loader images/s: wds shards pre-resized to 256 vs the original large images from a folder."""
    run(config(quick))


if __name__ == "__main__":
    main()
