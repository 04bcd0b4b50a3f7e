"""Train-step time, kamim-cached vs simmim: forward + backward + optimiser through the trainer's own
loop (train.engine.train_steps), the weights computed where the trainer computes them (ring maps on
the device from the padded points). The same real batch feeds both, so only the weighting differs.
Side by side: ``--keypoints device`` (FAST detected on the batch's uint8 crops where the model runs),
and that detection + raster + weights alone at batch ``detect_batch`` (64: the trainer's default).
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
    detectors: tuple[str, ...] = ("fast", "sift")  # FAST: ~1,900 points per crop, SIFT: ~500
    weight_ps: int = 8
    temperature: float = 0.25
    steps: int = 3  # timed steps per measurement
    warmup_steps: int = 2
    repetitions: int = 5
    weighting_calls: int = 20
    device_fast: bool = True  # also time --keypoints device (FAST on the device) against simmim
    detect_batch: int = 64  # batch for timing device FAST + raster + weights alone
    compiled_raster: bool = True  # also time the cached path's ring raster torch.compile'd (CPU/CUDA)


def real_batch(cfg: StepBenchConfig, detector: str) -> dict[str, torch.Tensor]:
    """One batch from the cached loader (in-process): uint8 images, masks, padded points + counts.
    Same seed, so every detector's batch holds the same crops."""
    loader = build_loader("cached-zarr", source(cfg.source), detector, cfg.batch_size, 0)
    return next(iter(loader))


def make_trainer(model: torch.nn.Module, device, method: str, cfg: StepBenchConfig, batch: dict,  # noqa: ANN001, ANN201
                 keypoints: str = "cached"):
    """A train_steps generator for ``method`` over an endless repeat of ``batch``."""
    from timm.scheduler import CosineLRScheduler

    from kamim.train.engine import LossSpec, train_steps

    optimizer = torch.optim.AdamW(model.parameters(), lr=8e-4, weight_decay=0.05, betas=(0.9, 0.999))
    scheduler = CosineLRScheduler(optimizer, t_initial=10**6, lr_min=1e-5, warmup_t=10, warmup_lr_init=1e-6,
                                  t_in_epochs=False)
    spec = LossSpec(method, cfg.weight_ps, cfg.temperature, 192, model.patch_size, keypoints=keypoints)
    if method == "simmim" or keypoints == "device":  # the device mode's loader sends what simmim's does
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


def weighting_ms(batch: dict, cfg: StepBenchConfig, device, calls: int, keypoints: str = "cached") -> float:  # noqa: ANN001
    """Ring maps (device: FAST detection first) + densities + weights for the whole batch, alone (median ms)."""
    from kamim.train.engine import LossSpec, batch_weights

    spec = LossSpec("kamim", cfg.weight_ps, cfg.temperature, 192, 16, keypoints=keypoints)
    batch = device.to(batch)
    times = []
    for _ in range(calls + 2):
        began = time.perf_counter()
        batch_weights(batch, spec)
        device.synchronize()
        times.append(time.perf_counter() - began)
    return median(times[2:]) * 1e3


def kept_counts(batch: dict) -> list[int]:
    """Points per crop (a plain cache's batch carries all of each image's codes; the crop keeps some)."""
    from kamim.train.crop_codes import FAR, batch_points

    points, counts = batch_points(batch)
    present = torch.arange(points.shape[1])[None] < counts[:, None]
    return (present & (points[..., 0] > FAR / 2)).sum(1).tolist()


def run(cfg: StepBenchConfig) -> dict:
    from kamim.train.crop_codes import batch_points
    from kamim.train.device import resolve_device
    from kamim.train.models import build_model

    began = start(cfg)
    device = resolve_device(cfg.device, cfg.precision)
    batches = {d: real_batch(cfg, d) for d in cfg.detectors}
    counts = {d: kept_counts(b) for d, b in batches.items()}
    log(f"step: {cfg.model} batch {cfg.batch_size} on {device.kind} ({device.precision}); points per crop "
        + ", ".join(f"{d} median {median(c):.0f}" for d, c in counts.items()))
    torch.manual_seed(0)
    base = build_model(cfg.model, 192).to(device.device)
    first = batches[cfg.detectors[0]]
    trainers = {"simmim": make_trainer(copy.deepcopy(base), device, "simmim", cfg, first)}
    trainers |= {f"kamim-{d}": make_trainer(copy.deepcopy(base), device, "kamim", cfg, b) for d, b in batches.items()}
    device_fast = cfg.device_fast and "fast" in batches
    if device_fast:  # the same crops, FAST detected on them in the step
        trainers["kamim-fast-device"] = make_trainer(copy.deepcopy(base), device, "kamim", cfg, batches["fast"], "device")
    for steps in trainers.values():
        time_steps(steps, cfg.warmup_steps, device)
    samples = interleaved({m: (lambda s=s: time_steps(s, cfg.steps, device)) for m, s in trainers.items()},
                          cfg.repetitions, log)
    weight_ms = {d: weighting_ms(b, cfg, device, cfg.weighting_calls) for d, b in batches.items()}
    compiled = {d: compiled_raster(b, cfg, device) for d, b in batches.items()} if cfg.compiled_raster else {}
    simmim_s = median(samples["simmim"])
    ratios = [ratio_entry(f"step {cfg.model} kamim-cached/simmim {d} ({device.kind})",
                          paired_ratio(samples[f"kamim-{d}"], samples["simmim"]), 1.03, False,
                          note=f"weighting alone {weight_ms[d]:.1f} ms of a {simmim_s * 1e3:.0f} ms step")
              for d in cfg.detectors]
    detect = {}
    if device_fast:
        weight_ms["fast-device"] = weighting_ms(batches["fast"], cfg, device, cfg.weighting_calls, "device")
        detect = device_detect_ms(cfg, device)
        ratios.append(ratio_entry(f"step {cfg.model} kamim-device/simmim fast ({device.kind})",
                                  paired_ratio(samples["kamim-fast-device"], samples["simmim"]), 1.03, False,
                                  note=f"detection + weighting alone {weight_ms['fast-device']:.1f} ms of a "
                                       f"{simmim_s * 1e3:.0f} ms step; batch {cfg.detect_batch}: "
                                       f"{detect['ms']:.1f} ms"
                                       + (f", {detect['cpu_ms_one_thread_detect_raster_weights']:.1f} ms CPU "
                                          f"time on one thread" if "cpu_ms_one_thread_detect" in detect else "")))
    payload = {
        "device": device.kind, "precision": device.precision,
        "points_per_crop": {d: {"median": median(c), "max": max(c), "padded": int(batch_points(batches[d])[0].shape[1])}
                            for d, c in counts.items()},
        "step_seconds": summary(samples),
        "images_per_s": {m: cfg.batch_size / median(v) for m, v in samples.items()},
        "weighting_ms": {d: round(v, 3) for d, v in weight_ms.items()},
        "weighting_fraction_of_simmim_step": {d: round(v / 1e3 / simmim_s, 4) for d, v in weight_ms.items()},
        "device_fast_detect_weights": detect,
        "raster_compiled": compiled,
        "ratios": ratios + [ratio_entry(f"ring raster {d} compiled/eager ({device.kind})", c["ratio"], None, False,
                                        note=f"{c['compiled_ms']:.1f} vs {c['eager_ms']:.1f} ms for batch {cfg.batch_size}")
                            for d, c in compiled.items()],
    }
    write_result("step", cfg, payload, began)
    return payload


def compiled_raster(batch: dict, cfg: StepBenchConfig, device, calls: int = 5) -> dict:  # noqa: ANN001
    """The cached path's ring raster alone, eager against --compile's, interleaved on the batch's real
    points; the time of ``calls`` calls (median ms per call)."""
    from kamim.preprocess.raster import ring_maps_torch
    from kamim.train.crop_codes import batch_points

    points, counts = batch_points(device.to(batch))

    def timed(compile_: bool) -> float:
        began = time.perf_counter()
        for _ in range(calls):
            ring_maps_torch(points, counts, 192, compile_=compile_)
        device.synchronize()
        return (time.perf_counter() - began) / calls * 1e3

    timed(True)  # compiles (once for every point count)
    samples = interleaved({"eager": lambda: timed(False), "compiled": lambda: timed(True)}, cfg.repetitions, log)
    return {"eager_ms": round(median(samples["eager"]), 3), "compiled_ms": round(median(samples["compiled"]), 3),
            "ratio": round(paired_ratio(samples["compiled"], samples["eager"]), 4)}


def device_detect_ms(cfg: StepBenchConfig, device) -> dict:  # noqa: ANN001
    """FAST on the device + ring maps + weights for ``detect_batch`` real 192-px crops (median ms)."""
    loader = build_loader("simmim", source(cfg.source), "fast", cfg.detect_batch, 0)
    batch = next(iter(loader))
    ms = weighting_ms(batch, cfg, device, max(3, cfg.weighting_calls // 4), "device")
    out = {"batch": cfg.detect_batch, "ms": round(ms, 2), "ms_per_crop": round(ms / cfg.detect_batch, 3),
           "threads": torch.get_num_threads()}
    if device.kind == "cpu":  # CPU time on one thread: what the work costs, even on a shared machine
        from kamim.preprocess.fast_torch import fast_keypoints_torch
        from kamim.train.engine import LossSpec, batch_weights

        spec = LossSpec("kamim", cfg.weight_ps, cfg.temperature, 192, 16, keypoints="device")
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            for name, work in (("detect", lambda: fast_keypoints_torch(batch["image"])),
                               ("detect_raster_weights", lambda: batch_weights(batch, spec))):
                times = []
                for _ in range(max(3, cfg.weighting_calls // 2) + 1):
                    began = time.process_time()
                    work()
                    times.append(time.process_time() - began)
                out[f"cpu_ms_one_thread_{name}"] = round(median(times[1:]) * 1e3, 2)
        finally:
            torch.set_num_threads(threads)
    return out


def config(quick: bool = False) -> StepBenchConfig:
    cfg = StepBenchConfig(quick=quick)
    if quick:
        cfg.batch_size, cfg.steps, cfg.warmup_steps, cfg.repetitions, cfg.weighting_calls = 8, 1, 1, 2, 5
        cfg.detect_batch = 16
    return cfg


@click.command()
@click.option("--quick", is_flag=True, help="Few repetitions: checks the benchmark works (noisy).")
def main(quick: bool) -> None:
    """Train-step time kamim-cached and kamim-device (FAST) vs simmim (vit_t, CPU), and the weighting cost alone."""
    run(config(quick))


if __name__ == "__main__":
    main()
