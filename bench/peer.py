"""The project's trainer against the original's (HF ViTForMaskedImageModeling, bench/original.py), side
by side: the train step on the same batches, and end to end (loader + step) at the same worker count.

- step: the project's step (train.engine.train_steps; cached points rastered on the device; AdamW fused
  on cuda) vs the original's (float maps in, conv2d weights, HF model, GradScaler), same weights (the HF
  model converted by evaluate.convert, its loss checked equal first), same crops, masks and ring maps;
  with ``compile`` also the project's step under --compile;
- end to end: `kamim pretrain`'s cached loader feeding its step vs the original pipeline (per-crop
  detection in the workers, float tensors handed over) feeding its step, FAST and SIFT.

    python -m bench.peer            # CPU: vit_t with 6 blocks, batch 16 (a few minutes)
    python -m bench.peer --quick    # tiny, ~1 min: checks it runs
    (GPU: python -m bench.gpu runs it at vit_b, bf16, batch 512)
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import click
import torch

from .caches import ensure_cache, source
from .common import cores, interleaved, log, median, paired_ratio, ratio_entry, start, summary, write_result
from .original import OriginalStep, hf_model, model_sizes, original_batch, original_loader, original_loss
from .pipelines import build_loader


@dataclass
class PeerBenchConfig:
    quick: bool = False
    model: str = "vit_t"
    overrides: dict = field(default_factory=lambda: {"depth": 6})
    batch_size: int = 16
    device: str = "auto"  # cuda if present (bf16), else cpu (fp32)
    detectors: tuple[str, ...] = ("fast", "sift")
    weight_ps: int = 8
    temperature: float = 0.25
    compile: bool = False  # also time the project's step under --compile
    warmup_steps: int = 2
    steps: int = 3  # steps per timed block
    repetitions: int = 5
    e2e: bool = True
    e2e_batches: int = 6  # timed batches per end-to-end measurement
    e2e_skip: int = 2  # untimed first batches (worker start-up, first fill, compile)
    e2e_repetitions: int = 2
    e2e_batch_size: int = 0  # 0: batch_size
    workers: int = 0  # 0: all cores


class Feed:
    """An endless iterator whose source can be swapped: one trainer, a fresh loader per measurement."""

    def __init__(self, source: Iterator | None = None) -> None:
        self.source = source

    def __iter__(self) -> Feed:
        return self

    def __next__(self) -> dict[str, torch.Tensor]:
        return next(self.source)


def project_step(model: torch.nn.Module, device, method: str, cfg, batches: Iterator,  # noqa: ANN001
                 compile_: bool = False, keypoints: str = "cached") -> Callable[[], torch.Tensor]:
    """One optimiser step of `kamim pretrain`'s loop per call (its AdamW, scheduler, clip, scaler)."""
    from timm.scheduler import CosineLRScheduler

    from kamim.train.compile import adamw, compile_module
    from kamim.train.engine import LossSpec, train_steps

    compile_module(model, compile_)
    optimizer = adamw(model.parameters(), device.kind, lr=8e-4, weight_decay=0.05, betas=(0.9, 0.999))
    scheduler = CosineLRScheduler(optimizer, t_initial=10**6, lr_min=1e-5, warmup_t=10, warmup_lr_init=1e-6,
                                  t_in_epochs=False)
    spec = LossSpec(method, cfg.weight_ps, cfg.temperature, 192, model.patch_size, compile_, keypoints=keypoints)
    steps = train_steps(model, optimizer, scheduler, device.grad_scaler(), iter(batches), device, spec, 0, 10**9, 1,
                        1.0)
    return lambda: next(steps).loss


def time_block(step: Callable[[], torch.Tensor], count: int, device) -> float:  # noqa: ANN001
    """Seconds per step over ``count`` back-to-back steps (one sync at the end, as in training)."""
    began = time.perf_counter()
    for _ in range(count):
        step()
    device.synchronize()
    return (time.perf_counter() - began) / count


def tiled(batch: dict[str, torch.Tensor], size: int) -> dict[str, torch.Tensor]:
    reps = -(-size // batch["image"].shape[0])  # (a plain cache's codes come from the loader as numpy)
    return {k: torch.cat([torch.as_tensor(v)] * reps)[:size] for k, v in batch.items()}


def pinned(batch: dict[str, torch.Tensor], device) -> dict[str, torch.Tensor]:  # noqa: ANN001
    """As the trainer's DataLoader hands batches over (pin_memory on cuda)."""
    return {k: v.pin_memory() for k, v in batch.items()} if device.kind == "cuda" else batch


def twin_models(cfg: PeerBenchConfig) -> tuple[torch.nn.Module, torch.nn.Module, tuple[int, int, int]]:
    """(HF model, project model holding the same weights (evaluate.convert), sizes)."""
    from kamim.evaluate.convert import convert_hf

    embed_dim, depth, heads = model_sizes(cfg.model, cfg.overrides)
    torch.manual_seed(0)
    hf = hf_model(embed_dim, depth, heads)
    ours, _ = convert_hf(hf.state_dict(), cfg.model, num_heads=heads)
    return hf, ours, (embed_dim, depth, heads)


def loss_gap(hf: torch.nn.Module, ours: torch.nn.Module, batch: dict[str, torch.Tensor], cfg: PeerBenchConfig) -> float:
    """|project - original| / original loss on a few images in float32 on the CPU (same weights, crops)."""
    from kamim.train.device import Device
    from kamim.train.engine import LossSpec, micro_batch

    cpu = Device("cpu", torch.device("cpu"), "fp32")
    small = {k: v[:4] for k, v in batch.items()}
    hf.eval(), ours.eval()
    with torch.no_grad():
        theirs = original_loss(hf, original_batch(small), cfg.weight_ps, cfg.temperature)
        mine, _ = micro_batch(ours, small, LossSpec("kamim", cfg.weight_ps, cfg.temperature, 192, 16), cpu)
    hf.train(), ours.train()
    return abs(float(mine) - float(theirs)) / float(theirs)


def run(cfg: PeerBenchConfig) -> dict:
    import copy

    from kamim.train.device import resolve_device

    began = start(cfg)
    device = resolve_device(cfg.device)
    workers = cfg.workers or cores()
    src = source("large")
    for detector in cfg.detectors:  # build the caches outside any timing
        ensure_cache(src, detector, "zarr")
    sample = next(iter(build_loader("cached-zarr", src, cfg.detectors[0], min(cfg.batch_size, 64), 0)))
    batch = pinned(tiled(sample, cfg.batch_size), device)
    theirs_batch = pinned(original_batch(tiled(sample, cfg.batch_size)), device)
    hf, ours, sizes = twin_models(cfg)
    gap = loss_gap(hf, ours, sample, cfg)
    log(f"peer: {cfg.model} {sizes} batch {cfg.batch_size} on {device.kind} ({device.precision}); "
        f"project vs original loss on the same weights and crops differs by {gap:.2e} (relative)")
    if gap > 1e-4:
        raise SystemExit(f"peer: the two trainers compute different losses ({gap:.2e}); not comparable")
    ours = ours.to(device.device)
    steps = {"original": OriginalStep(copy.deepcopy(hf), device, cfg.weight_ps, cfg.temperature),
             "project": project_step(copy.deepcopy(ours), device, "kamim", cfg, Feed(iter(lambda: batch, None)))}
    steps["original"] = (lambda s=steps["original"]: s(theirs_batch))
    if cfg.compile:
        steps["project-compiled"] = project_step(copy.deepcopy(ours), device, "kamim", cfg,
                                                 Feed(iter(lambda: batch, None)), compile_=True)
    for name, step in steps.items():
        warm = time.perf_counter()
        time_block(step, cfg.warmup_steps, device)
        log(f"  warm-up {name}: {time.perf_counter() - warm:.1f} s")
    samples = interleaved({n: (lambda s=s: time_block(s, cfg.steps, device)) for n, s in steps.items()},
                          cfg.repetitions, log)
    steps.clear()
    cuda = device.kind == "cuda"
    ratios = [ratio_entry(f"peer step {cfg.model} project/original img/s ({device.kind})",
                          paired_ratio(samples["original"], samples["project"]), 1.3 if cuda else None)]
    if cfg.compile:
        ratios.append(ratio_entry(f"peer step {cfg.model} project --compile/original img/s ({device.kind})",
                                  paired_ratio(samples["original"], samples["project-compiled"]), 1.3 if cuda else None))
        ratios.append(ratio_entry(f"step {cfg.model} --compile speed-up (eager/compiled time, {device.kind})",
                                  paired_ratio(samples["project"], samples["project-compiled"]), None,
                                  note=f"batch {cfg.batch_size}, {cfg.steps} steps per block after warm-up"))
    payload = {"device": device.kind, "precision": device.precision, "model": cfg.model, "sizes": sizes,
               "batch_size": cfg.batch_size, "loss_gap": gap,
               "attention": getattr(hf.config, "_attn_implementation", None),
               "step_images_per_s": {n: cfg.batch_size / median(v) for n, v in samples.items()},
               "step_seconds": summary(samples)}
    if cfg.e2e:
        e2e = end_to_end(cfg, device, hf, ours, workers, src)
        payload["e2e"] = e2e
        for d in cfg.detectors:
            ratios.append(ratio_entry(f"peer e2e {cfg.model} project-cached/original-online {d} ({device.kind})",
                                      paired_ratio(e2e["samples"][f"project-{d}"]["samples"],
                                                   e2e["samples"][f"original-{d}"]["samples"]),
                                      ({"fast": 2.0, "sift": 4.0}.get(d) if cuda else None)))
    payload["ratios"] = ratios
    write_result("peer", cfg, payload, began)
    return payload


def end_to_end(cfg: PeerBenchConfig, device, hf, ours, workers: int, src) -> dict:  # noqa: ANN001
    """Images/s of loader + step, each pipeline with its own trainer, a fresh loader per measurement."""
    import copy

    cuda = device.kind == "cuda"
    batch_size = cfg.e2e_batch_size or cfg.batch_size
    feeds = {"project": Feed(), "original": Feed()}
    original = OriginalStep(copy.deepcopy(hf), device, cfg.weight_ps, cfg.temperature)
    # eager, as `kamim pretrain` runs by default (and no second compile for the e2e batch size)
    trainers = {"project": project_step(copy.deepcopy(ours), device, "kamim", cfg, feeds["project"]),
                "original": lambda: original(next(feeds["original"]))}

    def measure(pipeline: str, detector: str) -> float:
        if pipeline == "project":
            loader = build_loader("cached-zarr", src, detector, batch_size, workers, pin_memory=cuda)
        else:
            loader = original_loader(src, detector, batch_size, workers, pin_memory=cuda)
        step = trainers[pipeline]
        feeds[pipeline].source = iter(loader)
        try:
            time_block(step, cfg.e2e_skip, device)
            return batch_size / time_block(step, cfg.e2e_batches, device)
        finally:
            feeds[pipeline].source = None  # shuts the workers down before the next variant starts

    variants = {f"{p}-{d}": (lambda p=p, d=d: measure(p, d)) for d in cfg.detectors for p in ("project", "original")}
    log(f"peer e2e: batch {batch_size}, {workers} workers, {cfg.e2e_batches} timed batches")
    samples = interleaved(variants, cfg.e2e_repetitions, log)
    return {"workers": workers, "batch_size": batch_size, "compiled": False,
            "images_per_s": {n: median(v) for n, v in samples.items()}, "samples": summary(samples)}


def config(quick: bool = False) -> PeerBenchConfig:
    cfg = PeerBenchConfig(quick=quick)
    if quick:
        cfg.overrides, cfg.batch_size, cfg.steps, cfg.warmup_steps, cfg.repetitions = {"depth": 2}, 8, 1, 1, 2
        cfg.e2e_batches, cfg.e2e_skip, cfg.e2e_repetitions = 2, 1, 1
    return cfg


@click.command()
@click.option("--quick", is_flag=True, help="Tiny sizes: checks the benchmark runs (numbers are noisy).")
@click.option("--compile", "compile_", is_flag=True, help="Also time the project's step under --compile.")
@click.option("--depth", type=int, default=None, help="Blocks of the model (default 6; 0: the model's own 12).")
@click.option("--batch-size", type=int, default=None, help="Batch size (default 16).")
@click.option("--no-e2e", is_flag=True, help="The step comparison only.")
@click.option("--steps", type=int, default=None, help="Steps per timed block (default 3).")
@click.option("--repetitions", type=int, default=None, help="Interleaved repetitions (default 5; end to end 2).")
@click.option("--e2e-batches", type=int, default=None, help="Timed batches per end-to-end measurement (default 6).")
def main(quick: bool, compile_: bool, depth: int | None, batch_size: int | None, no_e2e: bool, steps: int | None,
         repetitions: int | None, e2e_batches: int | None) -> None:
    """The project's trainer vs the original's (HF), step and end to end, side by side.

    \b
    Examples:
      python -m bench.peer                                              # make bench's run
      python -m bench.peer --compile --depth 0 --batch-size 32 --no-e2e  # vit_t: --compile speed-up
    """
    cfg = config(quick)
    cfg.compile, cfg.e2e = compile_, not no_e2e
    if depth is not None:
        cfg.overrides = {k: v for k, v in cfg.overrides.items() if k != "depth"} | ({"depth": depth} if depth else {})
    cfg.batch_size = batch_size or cfg.batch_size
    if steps:
        cfg.steps, cfg.warmup_steps = steps, min(cfg.warmup_steps, steps)
    if repetitions:
        cfg.repetitions, cfg.e2e_repetitions = repetitions, min(cfg.e2e_repetitions, repetitions)
    cfg.e2e_batches = e2e_batches or cfg.e2e_batches
    run(cfg)


if __name__ == "__main__":
    main()
