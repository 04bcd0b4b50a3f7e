"""`make bench-gpu`: everything that needs a GPU, as one fail-fast script that fits a 10-minute lease.

On one CUDA GPU (vit_b, bf16, the largest batch that fits: 512 on an H200), in this order:
  1. step: kamim-cached vs simmim, eager and --compile (img/s, MFU = FLOPs of one step counted by
     torch.utils.flop_counter over the card's bf16 dense peak), the weighting alone;
  2. host syncs: torch.cuda.set_sync_debug_mode("error") around steady-state steps of the trainer;
  3. peer (bench/peer.py): the project's step and pipeline vs the original's (HF) -> peer.json;
  4. end to end (bench/e2e.py): a real `kamim pretrain` vs the pure step -> e2e.json;
  5. decode (bench/decode.py): nvJPEG batched decode + crop on the GPU vs PIL (pixels, img/s), and the
     rate of workers that only read bytes and draw crops (what a device-decode loader could feed);
  6. loader img/s (workers = cores) for simmim / kamim-cached / kamim-online (FAST, SIFT).
Parts run in that order; none starts after --budget seconds (default 480), so a lease is not overrun.
Writes bench/results/gpu.json (with "failed" naming the part that broke, if one did) and gpu.log.

    python -m bench.gpu --copy-to "$OUT"   # on the GPU machine (~6-8 min on an H200)
    python -m bench.gpu --quick            # anywhere (CPU without CUDA): tiny sizes, the same code paths
                                           # (~3 min on 2 quiet cores; 9 min on the busy 2-core dev box)
    python -m bench.gpu --skip peer --skip e2e

On a machine without the project's venv: `python3 -m pip install --no-deps --no-build-isolation -e .`
(offline) plus the wheels of any missing dependency (zarr, numcodecs, donfig, webdataset, braceexpand).
"""

from __future__ import annotations

import copy
import functools
import shutil
import sys
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path

import click
import torch

from .caches import ensure_cache, source
from .common import cores, interleaved, median, paired_ratio, ratio_entry, results_dir, summary, write_result
from .large_photos import ensure_large_photos
from .peer import Feed, pinned, project_step, tiled, time_block
from .pipelines import build_loader, loader_rate
from .step import compiled_raster, weighting_ms

# bf16 dense tensor-core peaks (FLOP/s), most specific name first.
PEAKS = (("H200", 989e12), ("H100 PCIe", 756e12), ("H100 NVL", 835e12), ("H100", 989e12),
         ("A100", 312e12), ("L40S", 362e12), ("L4", 121e12))
PARTS = ("step", "syncs", "peer", "e2e", "decode", "loader")  # most wanted first: a lease may end early
T0 = time.perf_counter()


def say(message: str) -> None:
    print(f"[{time.perf_counter() - T0:6.1f} s] {message}", flush=True)


@dataclass
class GpuBenchConfig:
    quick: bool = False  # --quick: tiny sizes; results go to bench/results/quick/
    model: str = "vit_b"
    overrides: dict = field(default_factory=dict)
    batch_sizes: tuple[int, ...] = (512, 256, 128, 64, 32)
    detector: str = "fast"
    weight_ps: int = 8
    temperature: float = 0.25
    compile: bool = True
    warmup_steps: int = 3
    steps: int = 5
    repetitions: int = 3
    sync_steps: int = 3
    loader_batch: int = 64
    loader_batches: int = 0  # 0: 3 per worker
    loader_skip: int = 0  # 0: one per worker + 2 (all workers fill their first batch at once)
    loader_repetitions: int = 1
    workers: int = 0  # 0: all cores
    peer_e2e_batch: int = 256  # end-to-end peer batches: 3 per worker after one per worker + 2
    e2e_steps: int = 64
    e2e_log_every: int = 8
    decode_images: int = 256
    budget_s: int = 480  # start no part after this many seconds (0: no limit): the lease is 10 minutes
    skip: tuple[str, ...] = ()


def peak_flops(name: str) -> float | None:
    return next((peak for key, peak in PEAKS if key in name), None)


def trainer(model_fn, device, method: str, cfg: GpuBenchConfig, batch: dict, compile_: bool = False):  # noqa: ANN001, ANN201
    if method == "simmim":
        batch = {k: v for k, v in batch.items() if k in ("image", "mask")}
    return project_step(model_fn(), device, method, cfg, Feed(iter(lambda: batch, None)), compile_)


def fits(model_fn, device, cfg: GpuBenchConfig, batch: dict) -> bool:  # noqa: ANN001
    """Can both trainers (simmim and kamim, each with its model and AdamW state) take a step at this size?"""
    steps = []
    try:
        for method in ("simmim", "kamim"):
            steps.append(trainer(model_fn, device, method, cfg, batch))
            steps[-1]()
        device.synchronize()
        return True
    except torch.cuda.OutOfMemoryError:
        return False
    finally:
        steps.clear()
        if device.kind == "cuda":
            torch.cuda.empty_cache()


def step_flops(step) -> int:  # noqa: ANN001
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        step()
    return int(counter.get_total_flops())


def part_step(cfg: GpuBenchConfig, state: dict) -> dict:
    device, name, sample = state["device"], state["name"], state["sample"]

    def model_fn() -> torch.nn.Module:
        from kamim.train.models import build_model

        torch.manual_seed(0)
        return build_model(cfg.model, 192, **cfg.overrides).to(device.device)

    batch_size = next((b for b in cfg.batch_sizes if fits(model_fn, device, cfg, tiled(sample, b))), None)
    if batch_size is None:
        raise RuntimeError(f"no batch size in {cfg.batch_sizes} fits on {name}")
    batch = pinned(tiled(sample, batch_size), device)
    state["batch_size"], state["batch"], state["model_fn"] = batch_size, batch, model_fn
    say(f"largest batch that fits: {batch_size}")
    clone = functools.partial(copy.deepcopy, model_fn())  # every variant starts from the same weights
    steps = {m: trainer(clone, device, m, cfg, batch) for m in ("simmim", "kamim")}
    if cfg.compile:
        steps |= {f"{m}-compiled": trainer(clone, device, m, cfg, batch, True) for m in ("simmim", "kamim")}
    del clone
    for variant, step in steps.items():
        began = time.perf_counter()
        time_block(step, cfg.warmup_steps, device)
        say(f"warm-up {variant}: {time.perf_counter() - began:.1f} s")
    flops = {m: step_flops(steps[m]) for m in ("simmim", "kamim")}  # eager: the compiled step does the same math
    say(f"FLOPs per step: {flops['simmim'] / 1e12:.3f} TFLOP (simmim), {flops['kamim'] / 1e12:.3f} (kamim)")
    samples = interleaved({m: (lambda s=s: time_block(s, cfg.steps, device)) for m, s in steps.items()},
                          cfg.repetitions, say)
    steps.clear()
    peak = peak_flops(name) if device.kind == "cuda" else None
    step = {m: {"seconds": median(v), "images_per_s": batch_size / median(v),
                "tflops_per_s": flops[m.split("-")[0]] / median(v) / 1e12,
                "mfu": (flops[m.split("-")[0]] / median(v) / peak) if peak else None} for m, v in samples.items()}
    weight_ms = weighting_ms(batch, cfg, device, 10 if not cfg.quick else 2)
    say("step: " + ", ".join(f"{m} {s['images_per_s']:.0f} img/s" for m, s in step.items())
        + f"; weighting alone {weight_ms:.2f} ms")
    ratios = [ratio_entry(f"gpu step {cfg.model} kamim-cached/simmim (time)",
                          paired_ratio(samples["kamim"], samples["simmim"]), 1.03, False)]
    if cfg.compile:
        ratios += [
            ratio_entry(f"gpu step {cfg.model} kamim-cached/simmim --compile (time)",
                        paired_ratio(samples["kamim-compiled"], samples["simmim-compiled"]), 1.01, False),
            ratio_entry(f"gpu step {cfg.model} --compile speed-up kamim (eager/compiled time)",
                        paired_ratio(samples["kamim"], samples["kamim-compiled"]), None),
        ]
        if peak:
            ratios.append(ratio_entry(f"gpu MFU {cfg.model} kamim --compile", step["kamim-compiled"]["mfu"], 0.45))
    if peak:
        ratios.append(ratio_entry(f"gpu MFU {cfg.model} kamim eager", step["kamim"]["mfu"], None))
    raster = compiled_raster(batch, cfg, device) if cfg.compile else {}
    if raster:
        say(f"ring raster alone: eager {raster['eager_ms']:.2f} ms, compiled {raster['compiled_ms']:.2f} ms")
        ratios.append(ratio_entry(f"gpu ring raster compiled/eager (time, batch {batch_size})", raster["ratio"], None, False))
    return {"batch_size": batch_size, "peak_bf16_flops": peak, "flops_per_step": flops, "step": step,
            "step_seconds": summary(samples), "weighting_ms": round(weight_ms, 3), "raster_compiled": raster,
            "ratios": ratios}


def part_syncs(cfg: GpuBenchConfig, state: dict) -> dict:
    """Steady-state trainer steps under set_sync_debug_mode("error"): any host sync raises (cuda only)."""
    device = state["device"]
    out = {}
    for variant, compile_ in (("eager", False), ("compiled", True))[: 2 if cfg.compile else 1]:
        step = trainer(state["model_fn"], device, "kamim", cfg, state["batch"], compile_)
        time_block(step, 2, device)
        if device.kind != "cuda":
            time_block(step, cfg.sync_steps, device)
            out[variant] = "not checked (no CUDA): the same steps ran"
            continue
        try:
            torch.cuda.set_sync_debug_mode("error")
            for _ in range(cfg.sync_steps):
                step()
            out[variant] = f"no host sync in {cfg.sync_steps} steps"
        except RuntimeError as error:  # a finding, not a harness failure: record where it synced
            out[variant] = f"host sync: {str(error).splitlines()[0]}"
        finally:
            torch.cuda.set_sync_debug_mode(0)
        device.synchronize()
        say(f"host syncs ({variant}): {out[variant]}")
    return {"host_syncs": out}


def part_loader(cfg: GpuBenchConfig, state: dict) -> dict:
    src, workers, cuda = state["src"], state["workers"], state["device"].kind == "cuda"
    loaders = {"simmim": ("simmim", "fast"), "kamim-cached-fast": ("cached-zarr", "fast"),
               "kamim-cached-sift": ("cached-zarr", "sift"), "kamim-online-fast": ("online", "fast"),
               "kamim-online-sift": ("online", "sift")}

    def measure(variant: str, detector: str) -> float:
        loader = build_loader(variant, src, detector, cfg.loader_batch, workers, pin_memory=cuda)
        return loader_rate(loader, cfg.loader_batches or 3 * workers, cfg.loader_skip or workers + 2)

    rates = interleaved({n: (lambda v=v: measure(*v)) for n, v in loaders.items()}, cfg.loader_repetitions, say)
    ratios = [ratio_entry("gpu loader kamim-cached/simmim fast",
                          paired_ratio(rates["kamim-cached-fast"], rates["simmim"]), 0.95),
              *[ratio_entry(f"gpu loader kamim-cached/kamim-online {d}",
                            paired_ratio(rates[f"kamim-cached-{d}"], rates[f"kamim-online-{d}"]),
                            3.0 if d == "sift" else None) for d in ("fast", "sift")]]
    return {"loader": {"workers": workers, "batch_size": cfg.loader_batch,
                       "images_per_s": {k: median(v) for k, v in rates.items()}, "samples": summary(rates)},
            "ratios": ratios}


def part_peer(cfg: GpuBenchConfig, state: dict) -> dict:
    from . import peer

    pcfg = peer.config(cfg.quick)
    pcfg.model, pcfg.overrides, pcfg.compile = cfg.model, dict(cfg.overrides), cfg.compile
    pcfg.batch_size, pcfg.workers = state.get("batch_size", cfg.batch_sizes[-1]), state["workers"]
    if not cfg.quick:  # enough batches that the workers' first parallel fill is not what gets timed
        pcfg.e2e_batch_size, pcfg.e2e_skip, pcfg.e2e_batches = cfg.peer_e2e_batch, state["workers"] + 2, 3 * state["workers"]
        pcfg.e2e_repetitions = 1
    payload = peer.run(pcfg)
    return {"peer": {"step_images_per_s": payload["step_images_per_s"], "e2e": payload.get("e2e")},
            "ratios": payload["ratios"]}


def part_e2e(cfg: GpuBenchConfig, state: dict) -> dict:
    from . import e2e

    ecfg = e2e.config(cfg.quick)
    ecfg.model, ecfg.overrides, ecfg.workers = cfg.model, dict(cfg.overrides), state["workers"]
    ecfg.batch_size = state.get("batch_size", cfg.batch_sizes[-1])
    if not cfg.quick:
        ecfg.steps, ecfg.log_every, ecfg.pure_steps = cfg.e2e_steps, cfg.e2e_log_every, cfg.steps
    payload = e2e.run(ecfg)
    return {"e2e": {m: {"pretrain_images_per_s": r["pretrain"]["images_per_s"],
                        "pure_step_images_per_s": r["pure_step_images_per_s"]} for m, r in payload["results"].items()},
            "ratios": payload["ratios"]}


def part_decode(cfg: GpuBenchConfig, state: dict) -> dict:
    from . import decode

    return decode.measure(state["src"], state["device"], cfg.decode_images if not cfg.quick else 16,
                          cfg.batch_sizes[0] if not cfg.quick else 8, state["workers"], say)


def run(cfg: GpuBenchConfig) -> dict:
    from kamim.train.device import resolve_device

    began = time.perf_counter()
    print(__doc__.splitlines()[0], flush=True)
    cuda = torch.cuda.is_available()
    device = resolve_device("cuda" if cuda else "cpu", "bf16" if cuda else "fp32")
    name = torch.cuda.get_device_name(0) if cuda else "cpu"
    workers = cfg.workers or cores()
    say(f"device {name} ({device.precision}), {workers} loader workers, model {cfg.model} {cfg.overrides}, "
        f"torch {torch.__version__}")
    src = source("large", "train")
    ensure_large_photos()
    for detector in ("fast", "sift"):
        ensure_cache(src, detector, "zarr")
    say("data and caches ready")
    sample = next(iter(build_loader("cached-zarr", src, cfg.detector, min(64, cfg.batch_sizes[-1] * 2), 0)))
    state = {"device": device, "name": name, "workers": workers, "src": src, "sample": sample}
    payload: dict = {"device": name, "model": cfg.model, "precision": device.precision, "parts": {}, "ratios": []}
    parts = {"step": part_step, "syncs": part_syncs, "peer": part_peer, "e2e": part_e2e, "decode": part_decode,
             "loader": part_loader}
    for part, fn in parts.items():
        if part in cfg.skip or (part == "syncs" and "step" in cfg.skip):
            continue
        if cfg.budget_s and time.perf_counter() - began > cfg.budget_s:
            say(f"=== {part}: skipped, past the {cfg.budget_s} s budget ===")
            payload["parts"][part] = "skipped (time budget)"
            continue
        say(f"=== {part} ===")
        start = time.perf_counter()
        try:
            result = fn(cfg, state)
        except BaseException as error:  # fail fast, but keep what the earlier parts measured
            traceback.print_exc()
            payload["failed"] = f"{part}: {type(error).__name__}: {error}"
            write_result("gpu", cfg, payload, began)
            raise SystemExit(f"bench.gpu: part '{part}' failed ({type(error).__name__}); see the log") from None
        payload["ratios"] += result.pop("ratios", [])
        payload.update(result)
        payload["parts"][part] = round(time.perf_counter() - start, 1)
        if cuda:
            torch.cuda.empty_cache()
    write_result("gpu", cfg, payload, began)
    say("done")
    return payload


def config(quick: bool = False) -> GpuBenchConfig:
    cfg = GpuBenchConfig(quick=quick)
    if quick:
        cfg.model, cfg.overrides, cfg.batch_sizes = "vit_t", {"depth": 1, "embed_dim": 64, "num_heads": 2}, (8, 4)
        cfg.warmup_steps, cfg.steps, cfg.repetitions, cfg.sync_steps, cfg.budget_s = 1, 1, 1, 1, 0
        cfg.loader_batch, cfg.loader_batches, cfg.loader_skip, cfg.loader_repetitions = 8, 2, 1, 1
    return cfg


class Tee:
    """Everything printed also goes to the log file."""

    def __init__(self, stream, path: Path) -> None:  # noqa: ANN001
        self.stream, self.file = stream, path.open("a")

    def write(self, text: str) -> int:
        self.file.write(text)
        self.file.flush()
        return self.stream.write(text)

    def flush(self) -> None:
        self.stream.flush()

    def __getattr__(self, name: str):  # noqa: ANN204
        return getattr(self.stream, name)


@click.command()
@click.option("--quick", "--dry-run", "quick", is_flag=True,
              help="Tiny model and batches (CPU if no CUDA): the same code paths in a few minutes.")
@click.option("--skip", multiple=True, type=click.Choice(PARTS), help="Leave out a part (repeatable).")
@click.option("--no-compile", is_flag=True, help="Leave out the --compile variants.")
@click.option("--budget", type=int, default=None,
              help="Start no part after this many seconds (0: no limit) [default: 480; --quick: no limit].")
@click.option("--copy-to", type=click.Path(file_okay=False), help="Also copy the JSON files and the log here.")
def main(quick: bool, skip: tuple[str, ...], no_compile: bool, budget: int | None, copy_to: str | None) -> None:
    """Everything that needs a GPU: step, MFU, --compile, host syncs, loader, peer, end to end.

    \b
    Examples:
      python -m bench.gpu --quick            # tiny, anywhere (~3 min on 2 CPU cores)
      python -m bench.gpu --copy-to "$OUT"   # on the GPU machine
    """
    cfg = config(quick)
    cfg.skip, cfg.compile = skip, not no_compile
    cfg.budget_s = cfg.budget_s if budget is None else budget
    folder = results_dir(quick)
    folder.mkdir(parents=True, exist_ok=True)
    log = folder / "gpu.log"
    log.write_text("")
    sys.stdout, sys.stderr = Tee(sys.stdout, log), Tee(sys.stderr, log)
    try:
        run(cfg)
    finally:
        if copy_to:
            Path(copy_to).mkdir(parents=True, exist_ok=True)
            for name in ("gpu.json", "peer.json", "e2e.json", "gpu.log"):  # decode's figures are in gpu.json
                if (folder / name).is_file():
                    shutil.copy(folder / name, Path(copy_to) / name)


if __name__ == "__main__":
    main()
