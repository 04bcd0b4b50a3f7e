"""Does the device wait for the loader? A real `kamim pretrain` (train.pretrain.run_pretrain, its own
loader workers, pinned memory, loop, logging) on ImageNet-sized JPEGs, against the pure step (the same
model, batch, device and settings, fed one resident batch), side by side.

The pretrain rate is read from its own metrics.jsonl (a record every ``log_every`` steps, written after
the loss is read from the device, so the timestamps are real): images between the middle record and the
last over the seconds between them. The first half is left out: worker start-up, the first parallel
fill and a prefetch queue (2 batches per worker) that would otherwise flatter the loader.

    python -m bench.e2e            # CPU: vit_t with 4 blocks, batch 16; cached FAST, SIFT, device FAST;
                                   # cached and device FAST again with --decode device (JPEGs decoded in the step)
    python -m bench.e2e --quick    # tiny: checks it runs
    (GPU: python -m bench.gpu runs it at vit_b, bf16, batch 512)
"""

from __future__ import annotations

import json
import math
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import click
import torch

from .caches import Source, ensure_cache
from .common import cores, log, median, ratio_entry, start, write_result
from .large_photos import DEFAULT_ROOT, ensure_large_photos
from .peer import Feed, pinned, project_step, tiled, time_block
from .pipelines import build_loader


@dataclass
class E2EBenchConfig:
    quick: bool = False
    model: str = "vit_t"
    overrides: dict = field(default_factory=lambda: {"depth": 4})
    batch_size: int = 16
    device: str = "auto"
    # "+decode": the same with --decode device (the workers ship JPEG bytes; the step decodes: nvJPEG on cuda)
    methods: tuple[str, ...] = ("kamim-cached-fast", "kamim-cached-sift", "kamim-device-fast",
                                "kamim-cached-fast+decode", "kamim-device-fast+decode")
    steps: int = 24  # pretrain steps per run (rate over the second half)
    log_every: int = 4
    pure_steps: int = 6  # pure-step timing: steps per block, two blocks (before and after the runs)
    compile: bool = False
    weight_ps: int = 8
    temperature: float = 0.25
    workers: int = 0  # 0: as `kamim pretrain` (cores, at most 8); the GPU bench passes all cores


def repeated_photos(batch_size: int) -> Source:
    """The 300 ImageNet-sized training JPEGs, hard-linked k times under new names so one epoch holds at
    least two batches (the trainer drops incomplete batches); decoding cost per image is unchanged."""
    base = ensure_large_photos() / "train"
    files = sorted(base.glob("*/*.jpg"))
    copies = max(1, math.ceil(2 * batch_size / len(files)))
    if copies == 1:
        return Source("large", "folder", "train", str(DEFAULT_ROOT))
    root = DEFAULT_ROOT.parent / f"{DEFAULT_ROOT.name}-x{copies}"
    if not (root / "COMPLETE").is_file():
        shutil.rmtree(root, ignore_errors=True)
        for k in range(copies):
            for path in files:
                target = root / "train" / path.parent.name / f"{k}-{path.name}"
                target.parent.mkdir(parents=True, exist_ok=True)
                try:
                    os.link(path, target)
                except OSError:
                    shutil.copy(path, target)
        (root / "COMPLETE").write_text(f"{copies} copies of {len(files)} photos\n")
    return Source(f"large-x{copies}", "folder", "train", str(root))


def pretrain_rate(run_dir: Path, batch_size: int) -> dict:
    """Images/s between the middle metrics record and the last one (see the module docstring)."""
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    first, last = records[len(records) // 2], records[-1]
    seconds = last["time"] - first["time"]
    return {"images_per_s": (last["step"] - first["step"]) * batch_size / seconds, "from_step": first["step"],
            "to_step": last["step"], "seconds": seconds, "records": len(records)}


def parse_method(method: str) -> tuple[str, str, str, str]:
    """simmim | kamim-cached-DETECTOR | kamim-device-fast, each with an optional "+decode" (--decode device)
    -> (method, keypoints, detector, decode)."""
    name, _, device_decode = method.partition("+")
    decode = "device" if device_decode == "decode" else "worker"
    if name == "simmim":
        return "simmim", "cached", "fast", decode
    _, keypoints, detector = name.split("-")
    return "kamim", keypoints, detector, decode


def run_one(cfg: E2EBenchConfig, src: Source, method: str, workers: int, out: Path) -> dict:
    from kamim.train.pretrain import PretrainConfig, run_pretrain

    kind, keypoints, detector, decode = parse_method(method)
    cache = str(ensure_cache(src, detector, "zarr")) if (kind, keypoints) == ("kamim", "cached") else None
    pcfg = PretrainConfig(model=cfg.model, overrides=dict(cfg.overrides), method=kind, keypoints=keypoints, cache=cache,
                          detector=detector, dataset="folder", data_root=src.data_root, device=cfg.device,
                          out=str(out / method), steps=cfg.steps, batch_size=cfg.batch_size, workers=workers,
                          log_every=cfg.log_every, save_every=10**9, grid_every=0, keep_checkpoints=1,
                          compile=cfg.compile, decode=decode)
    return pretrain_rate(run_pretrain(pcfg), cfg.batch_size)


def pure_step_rate(cfg: E2EBenchConfig, src: Source, device, method: str):  # noqa: ANN001, ANN201
    """A closure timing one block of pure steps (a resident real batch, the same trainer settings)."""
    from kamim.train.models import build_model

    kind, keypoints, detector, _ = parse_method(method)  # the pure step is fed decoded crops either way
    sample = next(iter(build_loader("cached-zarr", src, detector, min(cfg.batch_size, 64), 0)))
    batch = pinned(tiled(sample, cfg.batch_size), device)
    if kind == "simmim" or keypoints == "device":  # the loader hands over images and masks only
        batch = {k: v for k, v in batch.items() if k in ("image", "mask")}
    torch.manual_seed(0)
    model = build_model(cfg.model, 192, **cfg.overrides).to(device.device)
    step = project_step(model, device, kind, cfg, Feed(iter(lambda: batch, None)), cfg.compile, keypoints)
    time_block(step, 2, device)  # warm-up (and the compile, if any)
    return lambda: cfg.batch_size / time_block(step, cfg.pure_steps, device)


def run(cfg: E2EBenchConfig) -> dict:
    from kamim.train.device import resolve_device
    from kamim.train.pretrain import default_workers

    os.environ.setdefault("TQDM_DISABLE", "1")  # the runs' progress bars would bury the log
    began = start(cfg)
    device = resolve_device(cfg.device)
    cfg.device = device.kind
    workers = cfg.workers or default_workers()
    src = repeated_photos(cfg.batch_size)
    for method in cfg.methods:
        kind, keypoints, detector, _ = parse_method(method)
        if (kind, keypoints) == ("kamim", "cached"):
            ensure_cache(src, detector, "zarr")
    log(f"e2e: {cfg.model} batch {cfg.batch_size} on {device.kind} ({device.precision}), {workers} workers, "
        f"{src.data_root}; {cfg.steps} steps per run, rate over the second half")
    results, ratios = {}, []
    with tempfile.TemporaryDirectory(prefix="kamim-e2e-") as tmp:
        for method in cfg.methods:
            pure = pure_step_rate(cfg, src, device, method)
            before = pure()
            e2e = run_one(cfg, src, method, workers, Path(tmp))
            after = pure()
            step_rate = median([before, after])
            ratio = e2e["images_per_s"] / step_rate
            log(f"  {method}: pretrain {e2e['images_per_s']:.1f} img/s, pure step {before:.1f} / {after:.1f} img/s "
                f"-> {ratio:.3f}")
            results[method] = {"pretrain": e2e, "pure_step_images_per_s": [before, after], "ratio": ratio}
            ratios.append(ratio_entry(f"e2e {cfg.model} pretrain/pure step {method} ({device.kind})", ratio,
                                      0.95 if device.kind == "cuda" else None,
                                      note=f"{workers} workers, batch {cfg.batch_size}"))
            if device.kind == "cuda":
                torch.cuda.empty_cache()
    payload = {"device": device.kind, "precision": device.precision, "workers": workers, "cores": cores(),
               "data": src.data_root, "results": results, "ratios": ratios}
    write_result("e2e", cfg, payload, began)
    return payload


def config(quick: bool = False) -> E2EBenchConfig:
    cfg = E2EBenchConfig(quick=quick)
    if quick:
        cfg.overrides, cfg.batch_size, cfg.steps, cfg.log_every, cfg.pure_steps = {"depth": 1}, 8, 6, 2, 2
        cfg.methods = ("kamim-cached-fast", "kamim-cached-fast+decode")
    return cfg


@click.command()
@click.option("--quick", is_flag=True, help="Tiny sizes: checks the benchmark runs (numbers are noisy).")
@click.option("--compile", "compile_", is_flag=True, help="Both sides under --compile.")
@click.option("--steps", type=int, default=None, help="Pretrain steps per run (default 24); logged every steps/6.")
def main(quick: bool, compile_: bool, steps: int | None) -> None:
    """End-to-end `kamim pretrain` img/s over the pure step's, on ImageNet-sized JPEGs."""
    cfg = config(quick)
    cfg.compile = compile_
    if steps:
        cfg.steps, cfg.log_every = steps, max(1, steps // 6)
    run(cfg)


if __name__ == "__main__":
    main()
