"""Does drawing the keypoint weights on a side CUDA stream hide their cost? vit_b, bf16, one GPU.

Step time of simmim, kamim with the weights on a side stream (the trainer's default on CUDA) and
kamim with them on the main stream, interleaved, same real batch -> bench/results/gpu_overlap.json.

    python -m bench.gpu_overlap [--copy-to DIR] [--dry-run]
"""

from __future__ import annotations

import copy
import shutil
import time
from pathlib import Path

import click
import torch

from kamim.train import engine

from .caches import ensure_cache, source
from .common import cores, interleaved, median, paired_ratio, ratio_entry, results_dir, summary, write_result
from .gpu import GpuBenchConfig, config, say, tiled_batch, time_block
from .large_photos import ensure_large_photos
from .pipelines import build_loader
from .step import make_trainer


def run(cfg: GpuBenchConfig) -> dict:
    from kamim.train.device import resolve_device
    from kamim.train.models import build_model

    began = time.perf_counter()
    cuda = torch.cuda.is_available()
    device = resolve_device("cuda" if cuda else "cpu", "bf16" if cuda else "fp32")
    name = torch.cuda.get_device_name(0) if cuda else "cpu"
    src = source("large", "train")
    ensure_large_photos()
    ensure_cache(src, cfg.detector, "zarr")
    sample = next(iter(build_loader("cached-zarr", src, cfg.detector, 64, cfg.workers or cores())))
    batch_size = cfg.batch_sizes[0]
    batch = tiled_batch(sample, batch_size)
    if cuda:
        batch = {k: v.pin_memory() for k, v in batch.items()}
    torch.manual_seed(0)
    base = build_model(cfg.model, 192, **cfg.overrides).to(device.device)
    # Same numbers either way: the side stream only changes when the weights are drawn.
    spec = engine.LossSpec("kamim", cfg.weight_ps, cfg.temperature, 192, base.patch_size)
    on_device = device.to(batch)
    losses = {}
    with torch.no_grad():
        for flag in (True, False):
            engine.OVERLAP_WEIGHTS = flag
            losses[flag] = float(engine.micro_batch(base, on_device, spec, device)[0])
    say(f"loss with weights on the side stream {losses[True]:.6f}, on the main stream {losses[False]:.6f}")
    if abs(losses[True] - losses[False]) > 1e-6 * max(1.0, abs(losses[False])):
        raise SystemExit("side-stream weights changed the loss")
    del on_device
    variants = {"simmim": ("simmim", False), "kamim-side-stream": ("kamim", True), "kamim-main-stream": ("kamim", False)}
    trainers = {v: make_trainer(copy.deepcopy(base), device, m, cfg, batch) for v, (m, _) in variants.items()}
    del base

    def timed(variant: str) -> float:
        engine.OVERLAP_WEIGHTS = variants[variant][1]
        return time_block(trainers[variant], cfg.steps, device)

    for variant in variants:
        engine.OVERLAP_WEIGHTS = variants[variant][1]
        time_block(trainers[variant], cfg.warmup_steps, device)
    say(f"{name}: warm, batch {batch_size}")
    samples = interleaved({v: (lambda v=v: timed(v)) for v in variants}, cfg.repetitions, say)
    engine.OVERLAP_WEIGHTS = True
    ratios = [ratio_entry(f"gpu step {cfg.model} {v}/simmim (time)", paired_ratio(samples[v], samples["simmim"]),
                          1.03, False) for v in ("kamim-side-stream", "kamim-main-stream")]
    payload = {"device": name, "model": cfg.model, "precision": device.precision, "batch_size": batch_size,
               "images_per_s": {v: batch_size / median(s) for v, s in samples.items()},
               "step_seconds": summary(samples), "loss_side_vs_main": [losses[True], losses[False]],
               "ratios": ratios}
    write_result("gpu_overlap", cfg, payload, began)
    return payload


@click.command()
@click.option("--dry-run", is_flag=True, help="Tiny model and batch (CPU if no CUDA): checks the script runs.")
@click.option("--copy-to", type=click.Path(file_okay=False), help="Also copy the JSON into this folder.")
def main(dry_run: bool, copy_to: str | None) -> None:
    """Step time with the keypoint weights on a side CUDA stream vs on the main stream."""
    cfg = config(dry_run)
    cfg.repetitions = max(cfg.repetitions, 3)
    run(cfg)
    if copy_to:
        Path(copy_to).mkdir(parents=True, exist_ok=True)
        shutil.copy(results_dir(dry_run) / "gpu_overlap.json", Path(copy_to) / "gpu_overlap.json")


if __name__ == "__main__":
    main()
