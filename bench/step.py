"""Train-step time, kamim-cached vs simmim: forward + backward + optimiser through the trainer's own
loop (train.engine.train_steps), the weights computed where the trainer computes them (ring maps on
the device from the padded points). The same real batch feeds both, so only the weighting differs.
"""

from __future__ import annotations

import copy
import itertools
import time
from dataclasses import dataclass

import click
import torch

from .caches import source
from .common import interleaved, log, median, paired_ratio, ratio_entry, start, summary, write_result
from .pipelines import build_loader


@dataclass
class StepBenchConfig:
    quick: bool = False
    model: str = "vit_t"
    batch_size: int = 16
    device: str = "cpu"
    precision: str = "auto"  # fp32 on cpu, bf16 on cuda
    source: str = "large"  # ImageNet-sized photos: FAST finds the most points per crop there
    detector: str = "fast"
    weight_ps: int = 8
    temperature: float = 0.25
    steps: int = 3  # timed steps per measurement
    warmup_steps: int = 2
    repetitions: int = 5
    weighting_calls: int = 20


def real_batch(cfg: StepBenchConfig) -> dict[str, torch.Tensor]:
    """One batch from the cached loader (in-process): uint8 images, masks, padded points + counts."""
    loader = build_loader("cached-zarr", source(cfg.source), cfg.detector, cfg.batch_size, 0)
    return next(iter(loader))


def make_trainer(model: torch.nn.Module, device, method: str, cfg: StepBenchConfig, batch: dict):  # noqa: ANN001, ANN201
    """A train_steps generator for ``method`` over an endless repeat of ``batch``."""
    from timm.scheduler import CosineLRScheduler

    from kamim.train.engine import LossSpec, train_steps

    optimizer = torch.optim.AdamW(model.parameters(), lr=8e-4, weight_decay=0.05, betas=(0.9, 0.999))
    scheduler = CosineLRScheduler(optimizer, t_initial=10**6, lr_min=1e-5, warmup_t=10, warmup_lr_init=1e-6,
                                  t_in_epochs=False)
    spec = LossSpec(method, cfg.weight_ps, cfg.temperature, 192, model.patch_size)
    if method == "simmim":
        batch = {k: v for k, v in batch.items() if k in ("image", "mask")}
    return train_steps(model, optimizer, scheduler, device.grad_scaler(), itertools.repeat(batch), device, spec,
                       0, 10**9, 1, 1.0)


def time_steps(steps, count: int, device) -> float:  # noqa: ANN001
    """Median seconds per optimiser step over ``count`` steps (the loss is read, forcing completion)."""
    times = []
    for _ in range(count):
        began = time.perf_counter()
        result = next(steps)
        float(result.loss)
        device.synchronize()
        times.append(time.perf_counter() - began)
    return median(times)


def weighting_ms(batch: dict, cfg: StepBenchConfig, device, calls: int) -> float:  # noqa: ANN001
    """Ring maps + densities + weights for the whole batch, alone (median ms)."""
    from kamim.train.engine import LossSpec, batch_weights

    spec = LossSpec("kamim", cfg.weight_ps, cfg.temperature, 192, 16)
    batch = device.to(batch)
    times = []
    for _ in range(calls + 2):
        began = time.perf_counter()
        batch_weights(batch, spec)
        device.synchronize()
        times.append(time.perf_counter() - began)
    return median(times[2:]) * 1e3


def run(cfg: StepBenchConfig) -> dict:
    from kamim.train.device import resolve_device
    from kamim.train.models import build_model

    began = start(cfg)
    device = resolve_device(cfg.device, cfg.precision)
    batch = real_batch(cfg)
    counts = batch["counts"].tolist()
    log(f"step: {cfg.model} batch {cfg.batch_size} on {device.kind} ({device.precision}); points per crop "
        f"median {median(counts):.0f}, padded to {batch['points'].shape[1]}")
    torch.manual_seed(0)
    base = build_model(cfg.model, 192).to(device.device)
    trainers = {m: make_trainer(copy.deepcopy(base), device, m, cfg, batch) for m in ("simmim", "kamim")}
    for steps in trainers.values():
        time_steps(steps, cfg.warmup_steps, device)
    samples = interleaved({m: (lambda s=s: time_steps(s, cfg.steps, device)) for m, s in trainers.items()},
                          cfg.repetitions, log)
    weight_ms = weighting_ms(batch, cfg, device, cfg.weighting_calls)
    ratio = paired_ratio(samples["kamim"], samples["simmim"])
    simmim_s = median(samples["simmim"])
    payload = {
        "device": device.kind, "precision": device.precision,
        "points_per_crop": {"median": median(counts), "max": max(counts), "padded": int(batch["points"].shape[1])},
        "step_seconds": summary(samples),
        "images_per_s": {m: cfg.batch_size / median(v) for m, v in samples.items()},
        "weighting_ms": round(weight_ms, 3),
        "weighting_fraction_of_simmim_step": round(weight_ms / 1e3 / simmim_s, 4),
        "ratios": [ratio_entry(f"step {cfg.model} kamim-cached/simmim ({device.kind})", ratio, 1.03, False,
                               note=f"weighting alone {weight_ms:.1f} ms of a {simmim_s * 1e3:.0f} ms step")],
    }
    write_result("step", cfg, payload, began)
    return payload


def config(quick: bool = False) -> StepBenchConfig:
    cfg = StepBenchConfig(quick=quick)
    if quick:
        cfg.batch_size, cfg.steps, cfg.warmup_steps, cfg.repetitions, cfg.weighting_calls = 8, 1, 1, 2, 5
    return cfg


@click.command()
@click.option("--quick", is_flag=True, help="Few repetitions: checks the benchmark works (noisy).")
def main(quick: bool) -> None:
    """Train-step time kamim-cached vs simmim (vit_t, CPU), and the weighting cost alone."""
    run(config(quick))


if __name__ == "__main__":
    main()
