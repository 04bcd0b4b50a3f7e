"""`make bench-gpu`: the loader and train-step benchmarks on one CUDA GPU, in a few minutes.

vit_b, bf16 autocast, the largest batch that fits (512, 256, ...), kamim-cached vs simmim step time
(img/s) and MFU (FLOPs of one step counted by torch.utils.flop_counter, over the card's bf16 dense
peak), the weighting alone, and the loader img/s (workers = cores) for simmim / kamim-cached /
kamim-online (FAST, SIFT) on the ImageNet-sized photos. Builds all the data it needs itself.

    python -m bench.gpu              # on the GPU machine -> bench/results/gpu.json
    python -m bench.gpu --dry-run    # anywhere (CPU if no CUDA): tiny sizes, checks it runs

On a machine without the project's venv: `python3 -m pip install --no-deps --no-build-isolation -e .`
(offline) plus the wheels of any missing dependency (zarr, numcodecs, donfig, webdataset, braceexpand).
"""

from __future__ import annotations

import copy
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

import click
import torch

from .caches import ensure_cache, source
from .common import cores, interleaved, median, paired_ratio, ratio_entry, results_dir, summary, write_result
from .large_photos import ensure_large_photos
from .pipelines import build_loader, loader_rate
from .step import make_trainer, weighting_ms

# bf16 dense tensor-core peaks (FLOP/s), most specific name first.
PEAKS = (("H200", 989e12), ("H100 PCIe", 756e12), ("H100 NVL", 835e12), ("H100", 989e12),
         ("A100", 312e12), ("L40S", 362e12), ("L4", 121e12))
T0 = time.perf_counter()


def say(message: str) -> None:
    print(f"[{time.perf_counter() - T0:6.1f} s] {message}", flush=True)


@dataclass
class GpuBenchConfig:
    quick: bool = False  # --dry-run: tiny sizes; results go to bench/results/quick/
    model: str = "vit_b"
    overrides: dict = field(default_factory=dict)
    batch_sizes: tuple[int, ...] = (512, 256, 128, 64, 32)
    detector: str = "fast"
    weight_ps: int = 8
    temperature: float = 0.25
    warmup_steps: int = 3
    steps: int = 5
    repetitions: int = 3
    loader_batch: int = 64
    loader_batches: int = 0  # 0: 3 per worker
    loader_skip: int = 0  # 0: one per worker + 2 (all workers fill their first batch at once)
    loader_repetitions: int = 2
    workers: int = 0  # 0: all cores


def peak_flops(name: str) -> float | None:
    return next((peak for key, peak in PEAKS if key in name), None)


def tiled_batch(batch: dict, size: int) -> dict:
    """A real batch repeated to ``size`` images (the loader's own output, just more of it)."""
    reps = -(-size // batch["image"].shape[0])
    return {k: torch.cat([v] * reps)[:size] for k, v in batch.items()}


def fits(model_fn, device, cfg: GpuBenchConfig, batch: dict) -> bool:  # noqa: ANN001
    """Can both trainers (simmim and kamim, each with its model and AdamW state, as the timing holds
    them) take a step at this batch size?"""
    trainers = []
    try:
        for method in ("simmim", "kamim"):
            trainers.append(make_trainer(model_fn(), device, method, cfg, batch))
            next(trainers[-1])
        device.synchronize()
        return True
    except torch.cuda.OutOfMemoryError:
        return False
    finally:
        trainers.clear()
        if device.kind == "cuda":
            torch.cuda.empty_cache()


def time_block(steps, count: int, device) -> float:  # noqa: ANN001
    """Seconds per step over ``count`` back-to-back steps (one sync at the end, as in training)."""
    began = time.perf_counter()
    for _ in range(count):
        next(steps)
    device.synchronize()
    return (time.perf_counter() - began) / count


def step_flops(steps) -> int:  # noqa: ANN001
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        next(steps)
    return int(counter.get_total_flops())


def run(cfg: GpuBenchConfig) -> dict:
    from kamim.train.device import resolve_device
    from kamim.train.models import build_model

    began = time.perf_counter()
    print(__doc__.splitlines()[0], flush=True)
    cuda = torch.cuda.is_available()
    device = resolve_device("cuda" if cuda else "cpu", "bf16" if cuda else "fp32")
    name = torch.cuda.get_device_name(0) if cuda else "cpu"
    workers = cfg.workers or cores()
    say(f"device {name} ({device.precision}), {workers} loader workers, model {cfg.model}")
    src = source("large", "train")
    ensure_large_photos()
    for detector in ("fast", "sift"):
        ensure_cache(src, detector, "zarr")
    say("data and caches ready")
    sample = next(iter(build_loader("cached-zarr", src, cfg.detector, min(64, cfg.batch_sizes[-1] * 2), workers)))

    def model_fn() -> torch.nn.Module:
        torch.manual_seed(0)
        return build_model(cfg.model, 192, **cfg.overrides).to(device.device)

    batch_size = next((b for b in cfg.batch_sizes if fits(model_fn, device, cfg, tiled_batch(sample, b))), None)
    if batch_size is None:
        raise SystemExit(f"no batch size in {cfg.batch_sizes} fits on {name}")
    batch = tiled_batch(sample, batch_size)
    if cuda:  # as the trainer's DataLoader hands it over (pin_memory=True on cuda)
        batch = {k: v.pin_memory() for k, v in batch.items()}
    say(f"largest batch that fits: {batch_size}")
    base = model_fn()
    trainers = {m: make_trainer(copy.deepcopy(base), device, m, cfg, batch) for m in ("simmim", "kamim")}
    del base
    for steps in trainers.values():
        time_block(steps, cfg.warmup_steps, device)
    flops = {m: step_flops(s) for m, s in trainers.items()}
    say(f"FLOPs per step: {flops['simmim'] / 1e12:.2f} TFLOP (simmim), {flops['kamim'] / 1e12:.2f} (kamim)")
    samples = interleaved({m: (lambda s=s: time_block(s, cfg.steps, device)) for m, s in trainers.items()},
                          cfg.repetitions, say)
    trainers.clear()
    peak = peak_flops(name) if cuda else None
    step = {m: {"seconds": median(v), "images_per_s": batch_size / median(v),
                "tflops_per_s": flops[m] / median(v) / 1e12,
                "mfu": (flops[m] / median(v) / peak) if peak else None} for m, v in samples.items()}
    weight_ms = weighting_ms(batch, cfg, device, 10 if not cfg.quick else 2)
    say(f"step: simmim {step['simmim']['images_per_s']:.0f} img/s, kamim {step['kamim']['images_per_s']:.0f} "
        f"img/s; weighting alone {weight_ms:.2f} ms")

    loaders = {"simmim": ("simmim", "fast"), "kamim-cached-fast": ("cached-zarr", "fast"),
               "kamim-cached-sift": ("cached-zarr", "sift"), "kamim-online-fast": ("online", "fast"),
               "kamim-online-sift": ("online", "sift")}

    def measure(variant: str, detector: str) -> float:
        loader = build_loader(variant, src, detector, cfg.loader_batch, workers, pin_memory=cuda)
        return loader_rate(loader, cfg.loader_batches or 3 * workers, cfg.loader_skip or workers + 2)

    rates = interleaved({n: (lambda v=v: measure(*v)) for n, v in loaders.items()}, cfg.loader_repetitions, say)
    ratios = [
        ratio_entry(f"gpu step {cfg.model} kamim-cached/simmim (time)",
                    paired_ratio(samples["kamim"], samples["simmim"]), 1.03, False),
        ratio_entry("gpu loader kamim-cached/simmim fast",
                    paired_ratio(rates["kamim-cached-fast"], rates["simmim"]), 0.95),
        *[ratio_entry(f"gpu loader kamim-cached/kamim-online {d}",
                      paired_ratio(rates[f"kamim-cached-{d}"], rates[f"kamim-online-{d}"]), 3.0 if d == "sift" else None)
          for d in ("fast", "sift")],
    ]
    payload = {"device": name, "model": cfg.model, "precision": device.precision, "batch_size": batch_size,
               "peak_bf16_flops": peak, "flops_per_step": flops, "step": step, "step_seconds": summary(samples),
               "weighting_ms": round(weight_ms, 3),
               "loader": {"workers": workers, "batch_size": cfg.loader_batch,
                          "images_per_s": {k: median(v) for k, v in rates.items()}, "samples": summary(rates)},
               "ratios": ratios}
    write_result("gpu", cfg, payload, began)
    say("done")
    return payload


def config(dry_run: bool = False) -> GpuBenchConfig:
    cfg = GpuBenchConfig(quick=dry_run)
    if dry_run:
        cfg.model, cfg.overrides, cfg.batch_sizes = "vit_t", {"depth": 2}, (8, 4)
        cfg.warmup_steps, cfg.steps, cfg.repetitions = 1, 1, 1
        cfg.loader_batch, cfg.loader_batches, cfg.loader_skip, cfg.loader_repetitions = 8, 2, 1, 1
    return cfg


@click.command()
@click.option("--dry-run", is_flag=True, help="Tiny model and batches (CPU if no CUDA): checks the script runs.")
@click.option("--copy-to", type=click.Path(file_okay=False), help="Also copy the JSON into this folder.")
def main(dry_run: bool, copy_to: str | None) -> None:
    """Loader and train-step benchmarks on one GPU: vit_b, bf16, largest batch, img/s and MFU.

    \b
    Examples:
      python -m bench.gpu --dry-run          # tiny, anywhere
      python -m bench.gpu --copy-to "$OUT"   # on the GPU machine
    """
    run(config(dry_run))
    if copy_to:
        Path(copy_to).mkdir(parents=True, exist_ok=True)
        shutil.copy(results_dir(dry_run) / "gpu.json", Path(copy_to) / "gpu.json")


if __name__ == "__main__":
    main()
