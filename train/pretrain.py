"""``kamim pretrain``: SimMIM or KAMIM pretraining, faithful to the original recipe, resumable."""

from __future__ import annotations

import contextlib
import dataclasses
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import click
import numpy as np
import torch

from kamim.config import config_dict, format_config, save_config
from kamim.errors import UserError, UserErrorLines
from kamim.paths import runs_root
from kamim.validation import check_numbers, check_out

from .checkpoint import export_model, latest_checkpoint, load_checkpoint, non_finite, save_checkpoint
from .compile import adamw, check_compile, compile_module, restore_optimizer_impl
from .data import EpochBatches, OneLineErrorLoader, PretrainSamples, collate
from .device import Device, resolve_device, to_host
from .device_decode import UndecodableJpeg, check_decode
from .distributed import broadcast_object, main_first, mean_across_ranks
from .engine import LossSpec, parameters_finite, train_steps
from .init import INITS
from .interrupt import EXIT_INTERRUPTED, ignore_interrupts, resume_command, stop_on_signal
from .keypoint_mode import choose_keypoints
from .models import MODELS, build_model
from .observe import MetricsLog, save_grid
from .recipes import apply_recipe, fit_global_batch
from .rng import restore_rng_states, rng_states
from .setup import (
    check_resume_data,
    data_fingerprints,
    is_wds_cache,
    open_training_cache,
    parse_overrides,
    resume_mismatches,
    training_cache_path,
)
from .wds_stream import wds_batches_per_epoch, wds_loader
from .weighting import WEIGHT_PATCH_SIZES

IMG_SIZE = 192
WARMUP_FRACTION = 10 / 110  # the original: 10 warmup epochs of 110, overlapping the cosine
COSINE_FRACTION = 100 / 110  # the cosine reaches lr_min after 100 of 110 epochs; the rest runs at lr_min


def default_workers() -> int:
    """Loader processes: the cores this process may use, at most 8 (more rarely pays for one GPU)."""
    from kamim.preprocess.build import available_cores

    return max(1, min(8, available_cores()))


@dataclass
class PretrainConfig:
    recipe: str = "kamim"  # kamim: these defaults; original: the original's values (train/recipes.py)
    model: str = "vit_t"
    init: str = "hf"  # hf: the original's HuggingFace init (train/init.py); timm: timm's own
    overrides: dict[str, Any] = field(default_factory=dict)
    method: str = "kamim"
    keypoints: str = "auto"  # cached: a keypoint cache; online: OpenCV per crop in the loader; device: FAST only,
    # detected on the batch where the model runs with torch ops, bit-exact to online (preprocess/fast_torch.py);
    # auto: device for FAST, cached for SIFT/ORB (online for tiny images), cached when --cache is given
    cache: str | None = None
    cache_format: str = "zarr"  # the default cache's format when --cache is not given (zarr or wds)
    detector: str = "fast"
    detect_size: int = 256
    gray: str = "bgr"
    weight_ps: int = 8
    temperature: float = 0.25
    dataset: str = "photos"
    split: str = "train"
    data_root: str | None = None
    device: str = "auto"
    precision: str = "auto"
    out: str | None = None
    steps: int | None = None
    epochs: float | None = None
    stop_after: int | None = None
    batch_size: int = 64
    accumulation: int = 1
    global_batch: int | None = None  # if set: accumulation = global_batch / (batch_size x processes)
    lr: float = 8e-4
    weight_decay: float = 0.05
    warmup_steps: int | None = None
    warmup_lr: float = 1e-6
    min_lr: float = 1e-5
    clip_grad: float = 1.0
    workers: int = field(default_factory=default_workers)
    seed: int = 0
    resume: bool = False
    log_every: int = 1
    save_every: int = 500
    grid_every: int = 500
    keep_checkpoints: int = 2
    save_optimizer: bool = True  # AdamW's moments: 2/3 of a checkpoint, needed for a bit-exact resume
    nan_policy: str = "stop"  # stop: a NaN/Inf loss ends the run; skip: drop that step's update and count it
    tensorboard: bool = False
    wandb: str | None = None
    compile: bool = False  # torch.compile the model, weighting and loss (same checkpoints either way)
    decode: str = "worker"  # worker: loader workers decode the JPEGs; device: the step does (train/device_decode.py)


def validate(cfg: PretrainConfig) -> None:
    check_numbers("pretrain", cfg)  # every numeric flag: type, finite, range (kamim/validation.py)
    check_out(cfg.out)
    checks = [
        (cfg.model in MODELS, f"--model {cfg.model}: unknown model; choose one of {', '.join(MODELS)}"),
        (cfg.method in ("kamim", "simmim"), f"--method {cfg.method}: use kamim or simmim"),
        (cfg.gray in ("bgr", "rgb"), f"--gray {cfg.gray}: use bgr or rgb"),
        (cfg.init in INITS, f"--init {cfg.init}: use hf (the original's HuggingFace init) or timm"),
        (cfg.detector in ("fast", "sift", "orb"), f"--detector {cfg.detector}: use fast, sift or orb"),
        (cfg.keypoints in ("auto", "cached", "online", "device"),
         f"--keypoints {cfg.keypoints}: use auto, cached, online or device"),
        (cfg.keypoints != "device" or cfg.detector == "fast" or cfg.method == "simmim",
         f"--keypoints device detects FAST only, not {cfg.detector}: use --keypoints online (exact) or cached for "
         f"{cfg.detector}"),
        (cfg.cache_format in ("zarr", "wds"), f"--cache-format {cfg.cache_format}: use zarr or wds"),
        (cfg.weight_ps in WEIGHT_PATCH_SIZES and IMG_SIZE % cfg.weight_ps == 0,
         f"--weight-ps {cfg.weight_ps}: use 8, 16 or 32 (must divide {IMG_SIZE} and sit inside a 32-px mask patch)"),
        (cfg.temperature > 0, f"--temperature {cfg.temperature}: must be > 0 (inf gives SimMIM's loss)"),
        (cfg.batch_size >= 1 and cfg.accumulation >= 1, "--batch-size and --accumulation must be >= 1"),
        (cfg.steps is None or cfg.steps >= 1, f"--steps {cfg.steps}: must be >= 1"),
        (cfg.epochs is None or cfg.epochs > 0, f"--epochs {cfg.epochs}: must be > 0"),
        (cfg.warmup_steps is None or cfg.warmup_steps >= 0, "--warmup-steps must be >= 0"),
        (cfg.workers >= 0, f"--workers {cfg.workers}: must be >= 0"),
        (cfg.nan_policy in ("stop", "skip"), f"--nan-policy {cfg.nan_policy}: use stop or skip"),
        (cfg.decode in ("worker", "device"), f"--decode {cfg.decode}: use worker or device"),
        (min(cfg.log_every, cfg.save_every) >= 1 and cfg.grid_every >= 0, "--log-every/--save-every must be >= 1"),
    ]
    for ok, message in checks:
        if not ok:
            raise UserError(message)


def default_run_dir(cfg: PretrainConfig) -> Path:
    stamp = time.strftime("%Y%m%d-%H%M%S")
    if cfg.method == "simmim":  # no keypoints, no weights: w_ps and T do not apply
        return runs_root() / f"{cfg.dataset}-{cfg.model}-simmim-{stamp}"
    return runs_root() / f"{cfg.dataset}-{cfg.model}-kamim-{cfg.detector}-wps{cfg.weight_ps}-T{cfg.temperature:g}-{stamp}"


def schedule_lengths(cfg: PretrainConfig, batches_per_epoch: int) -> tuple[int, int, int]:
    """(total optimiser steps, warmup steps, cosine length) in optimiser steps."""
    steps_per_epoch = max(1, batches_per_epoch // cfg.accumulation)
    total = cfg.steps if cfg.steps is not None else max(1, round((cfg.epochs or 110) * steps_per_epoch))
    warmup = cfg.warmup_steps if cfg.warmup_steps is not None else round(total * WARMUP_FRACTION)
    return total, warmup, max(1, round(total * COSINE_FRACTION))


def run_pretrain(cfg: PretrainConfig) -> Path:
    """Train as ``cfg`` says; returns the run dir (with model.safetensors once all steps are done)."""
    validate(cfg)
    build_model(cfg.model, IMG_SIZE, init="timm", **cfg.overrides)  # bad overrides fail before any work
    device = resolve_device(cfg.device, cfg.precision)
    cfg = fit_global_batch(cfg, device.world)  # --global-batch (--recipe original: 2048) over these processes
    # ranks may name a default run dir a second apart: rank 0's name wins
    run_dir = broadcast_object(Path(cfg.out) if cfg.out else default_run_dir(cfg), device)
    checkpoint = None
    if latest_checkpoint(run_dir) is not None and not cfg.resume:
        raise UserError(f"{run_dir} already holds checkpoints; pass --resume to continue it or a new --out")
    if cfg.resume:
        if cfg.out is None:
            raise UserError("--resume needs --out RUN_DIR (the run to continue)")
        path = latest_checkpoint(run_dir)
        if path is None:
            raise UserError(f"--resume: {run_dir} has no checkpoints/step-*.pt to continue from")
        checkpoint = load_checkpoint(path)
        saved_keypoints = checkpoint.get("config", {}).get("keypoints")
        if cfg.keypoints == "auto" and saved_keypoints in ("cached", "online", "device"):
            cfg = dataclasses.replace(cfg, keypoints=saved_keypoints)  # what auto resolved to when the run began
        bad = resume_mismatches(checkpoint.get("config", {}), config_dict(cfg))
        if int(checkpoint.get("world", 1)) != device.world:  # the data order and global batch depend on it
            bad["world size (processes)"] = (int(checkpoint.get("world", 1)), device.world)
        if bad:
            raise UserErrorLines(f"--resume: these settings differ from the checkpoint {path}: {', '.join(bad)}; give "
                                 f"them as the run had them (or leave them out):",
                                 [f"{k}: the run had {was}, now {now}" for k, (was, now) in bad.items()])
    cfg = dataclasses.replace(cfg, out=str(run_dir), device=device.kind)  # resolved, as config.json records it
    log = click.echo if device.is_main else (lambda *a, **k: None)

    from kamim.datasets import open_dataset

    mode = "simmim" if cfg.method == "simmim" else cfg.keypoints
    if mode == "auto" and (cfg.cache or cfg.cache_format == "wds"):
        mode = "cached"  # a cache named (or a wds stream asked for): train from it
    streamed = mode == "cached" and is_wds_cache(cfg)  # self-contained shards: no dataset needed
    dataset = None if streamed else open_dataset(cfg.dataset, cfg.split, cfg.data_root)
    if cfg.method == "kamim":
        mode, note = choose_keypoints(None if mode == "auto" else mode, cfg.detector, dataset,
                                      available=("cached", "online", "device"))
        if note:
            log(note, err=True)
        cfg = dataclasses.replace(cfg, keypoints=mode)  # resolved, as config.json records it
    check_decode(cfg.decode, mode, streamed, dataset, cfg.dataset, device.device, cfg.detector, cfg.resume)
    with main_first(device):  # rank 0 builds a missing cache; the others then open it
        cache = open_training_cache(cfg, dataset, log) if mode == "cached" else None
    if cache is not None:
        cfg = dataclasses.replace(cfg, cache=str(training_cache_path(cfg)[0]))  # resolved, as config.json records it
    log(format_config(cfg), err=True)
    fingerprints = data_fingerprints(dataset, cache)
    if checkpoint is not None:  # before anything is written: same data, and a checkpoint worth continuing
        check_resume_data(checkpoint, path, fingerprints)
        if non_finite(checkpoint["model"]) is not None:
            raise UserError(f"--resume: {path} holds NaN/Inf weights ({non_finite(checkpoint['model'])}); delete it "
                            f"to resume from the one before")
    torch.manual_seed(cfg.seed)
    model = build_model(cfg.model, IMG_SIZE, init=cfg.init, **cfg.overrides).to(device.device)
    check_compile(cfg.compile, device.kind)
    compile_module(model, cfg.compile)  # in place: state_dict keys stay the eager model's
    samples = None if streamed else PretrainSamples(dataset, mode, model.patch_size, cfg.seed, cache, cfg.detector,
                                                    cfg.gray, IMG_SIZE, cfg.decode)
    indices = np.arange(len(cache)) if streamed else samples.usable_indices()
    try:
        batches_per_epoch = (wds_batches_per_epoch(len(cache), cfg.batch_size, device.world) if streamed else
                             EpochBatches(indices, cfg.batch_size, cfg.seed, 0, device.rank, device.world).batches_per_epoch)
    except ValueError as error:
        raise UserError(f"--batch-size {cfg.batch_size}: {error}") from None
    total, warmup, cosine = schedule_lengths(cfg, batches_per_epoch)
    optimizer = adamw(model.parameters(), device.kind, lr=cfg.lr, weight_decay=cfg.weight_decay, betas=(0.9, 0.999))
    from timm.scheduler import CosineLRScheduler

    scheduler = CosineLRScheduler(optimizer, t_initial=cosine, lr_min=cfg.min_lr, warmup_t=warmup,
                                  warmup_lr_init=cfg.warmup_lr, cycle_limit=1, t_in_epochs=False)
    scaler = device.grad_scaler()
    start = 0
    if checkpoint is not None:
        model.load_state_dict(checkpoint["model"])
        if "optimizer" in checkpoint:
            optimizer.load_state_dict(checkpoint["optimizer"])
            restore_optimizer_impl(optimizer, device.kind)  # fused on cuda, foreach on cpu, whoever saved it
        else:  # saved with --no-save-optimizer: AdamW's moments restart at zero (not bit-exact)
            log(f"--resume: {path} was saved without the optimizer state (--no-save-optimizer): AdamW "
                f"restarts its moments at zero, so this resume is not bit-exact", err=True)
        scheduler.load_state_dict(checkpoint["scheduler"])
        scaler.load_state_dict(checkpoint["scaler"])
        restore_rng_states(checkpoint["rng"])
        start = int(checkpoint["step"])
        if start > total:
            raise UserError(f"--steps {total}: the run in {run_dir} is already at step {start}; give more steps to "
                            f"extend it, or leave --steps out")
        log(f"resuming {run_dir} from step {start}", err=True)
    effective = cfg.batch_size * cfg.accumulation * device.world
    log(f"model {cfg.model} ({sum(p.numel() for p in model.parameters()) / 1e6:.2f}M params) on {device.kind} "
        f"({device.precision}); {len(indices)} images, {batches_per_epoch} batches/epoch per rank", err=True)
    log(f"effective batch {effective} = {cfg.batch_size} x {cfg.accumulation} accumulation x {device.world} "
        f"rank(s) (original recipe: 2048); lr {cfg.lr:g} (AdamW, wd {cfg.weight_decay:g}); {total} optimiser "
        f"steps, warmup {warmup} from {cfg.warmup_lr:g}, cosine to {cfg.min_lr:g} over {cosine} steps, "
        f"stepped per optimiser step (the original stepped per micro-batch)", err=True)
    if device.is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
        save_config(cfg, run_dir / "config.json")

    if streamed:  # shards resampled per rank and worker: every rank always has data (train/wds_stream.py)
        loader = wds_loader(cache, mode, model.patch_size, cfg.seed, cfg.batch_size, device.rank, cfg.workers,
                            start * cfg.accumulation, cfg.detector, cfg.gray, pin_memory=device.kind == "cuda")
    else:
        loader = OneLineErrorLoader(  # a worker's UserError (damaged cache) reaches the user as one line
            samples, batch_sampler=EpochBatches(indices, cfg.batch_size, cfg.seed, start * cfg.accumulation,
                                                device.rank, device.world),
            num_workers=cfg.workers, collate_fn=collate, pin_memory=device.kind == "cuda",
            worker_init_fn=ignore_interrupts,  # Ctrl-C is the main process's: it checkpoints, then stops
            # zarr must not be touched before a fork (reference/anchors.md B.3): cached mode starts workers
            # from a clean forkserver process instead.
            multiprocessing_context=("forkserver" if cache is not None else None) if cfg.workers else None,
        )
    info = {"model": cfg.model, "overrides": cfg.overrides, "img_size": IMG_SIZE, "method": cfg.method,
            "keypoints": cfg.keypoints, "detector": cfg.detector if cfg.method == "kamim" else None,
            "detect_size": cfg.detect_size, "gray": cfg.gray, "weight_ps": cfg.weight_ps,
            "temperature": cfg.temperature, "dataset": cfg.dataset, "split": cfg.split, "seed": cfg.seed}
    fingerprint = cache.manifest["dataset"]["fingerprint"] if cache is not None else dataset.fingerprint()
    train_model = model
    if device.world > 1 and device.kind != "xla":
        train_model = torch.nn.parallel.DistributedDataParallel(model)
    spec = LossSpec(cfg.method, cfg.weight_ps, cfg.temperature, IMG_SIZE, model.patch_size, cfg.compile,
                    keypoints=cfg.keypoints, gray=cfg.gray)
    stop = min(total, cfg.stop_after) if cfg.stop_after else total

    def save(step: int) -> None:
        state = {"model": model.state_dict(), **({"optimizer": optimizer.state_dict()} if cfg.save_optimizer else {}),
                 "scheduler": scheduler.state_dict(), "scaler": scaler.state_dict(), "step": step,
                 "micro_batches": step * cfg.accumulation, "world": device.world, "rng": rng_states(), "config": config_dict(cfg),
                 "model_info": {**info, "step": step}, "cache_fingerprint": fingerprint, "data_fingerprints": fingerprints}
        if device.is_main:
            save_checkpoint(run_dir, step, to_host(state), keep=cfg.keep_checkpoints)

    metrics = MetricsLog(run_dir, config_dict(cfg), cfg.tensorboard, cfg.wandb, start) if device.is_main else None
    try:
        interrupted = run_steps(train_model, model, optimizer, scheduler, scaler, iter(loader), device, spec, cfg,
                                start, stop, total, metrics, save, run_dir, batches_per_epoch)
    except UndecodableJpeg as error:  # a file damaged since its header was read: name it and the way on
        raise error.user_error(dataset.files[error.index], intact(run_dir, error.saved), resume_command(run_dir)) from None
    if interrupted is not None:
        log(f"stopped at step {interrupted} of {total}; checkpoint {run_dir / 'checkpoints'}/step-{interrupted:07d}.pt; "
            f"resume with: {resume_command(run_dir)}", err=True)
        raise SystemExit(EXIT_INTERRUPTED)
    if stop == total and device.is_main:
        export_model(model, {**info, "step": total}, run_dir)
        log(f"done: {run_dir / 'model.safetensors'} (+ model.json); checkpoints in {run_dir / 'checkpoints'}", err=True)
    device.barrier()
    return run_dir


def intact(run_dir: Path, saved: int | None) -> str:
    """What is safe to resume from: said only of a checkpoint this process verified finite."""
    if saved is None:
        return "no checkpoint was written"
    return f"the last checkpoint ({run_dir / 'checkpoints'}/step-{saved:07d}.pt, checked finite) is intact"


def run_steps(train_model, model, optimizer, scheduler, scaler, batches, device: Device, spec: LossSpec,  # noqa: ANN001
              cfg: PretrainConfig, start: int, stop: int, total: int, metrics: MetricsLog | None, save,
              run_dir: Path, batches_per_epoch: int) -> int | None:
    """Train from ``start`` to ``stop``; returns the step a SIGINT/SIGTERM stopped at (checkpointed), else None."""
    from tqdm import tqdm

    bar = tqdm(total=total, initial=start, desc="pretrain", disable=not device.is_main, dynamic_ncols=True)
    skipped = 0
    saved = start or None  # the newest checkpoint known finite (a resumed one was checked at load)
    signals = contextlib.ExitStack()
    stop_request = signals.enter_context(stop_on_signal(announce=device.is_main))
    try:  # close the bar even on an error, so the error starts its own line
        for result in train_steps(train_model, optimizer, scheduler, scaler, batches, device, spec, start, stop,
                                  cfg.accumulation, cfg.clip_grad, cfg.nan_policy == "skip"):
            step = result.step
            skipped += result.skipped
            # Checked at every log and every save step, so a non-finite model is never checkpointed.
            if step % cfg.log_every == 0 or step % cfg.save_every == 0 or step == stop:  # on every rank: collective
                loss = float(mean_across_ranks(result.loss, device))
                if not (math.isfinite(loss) and math.isfinite(float(result.grad_norm))) and not result.skipped:
                    raise UserError(f"loss became {loss} at step {step} (grad norm {float(result.grad_norm)}); "
                                    f"{intact(run_dir, saved)}: lower --lr, use --precision fp32 or --nan-policy skip")
                if not parameters_finite(model):  # the update itself can overflow (huge lr, warmup lr, decay)
                    raise UserError(f"the weights are NaN/Inf after the update of step {step} (lr {result.lr:g}); "
                                    f"{intact(run_dir, saved)}: lower --lr/--warmup-lr/--weight-decay or use "
                                    f"--precision fp32")
            if metrics is not None and (step % cfg.log_every == 0 or step == stop):
                epoch = step * cfg.accumulation / batches_per_epoch
                grad_norm = float(result.grad_norm)
                record = {"step": step, "epoch": round(epoch, 4), "loss": loss if math.isfinite(loss) else None,
                          "lr": result.lr, "grad_norm": grad_norm if math.isfinite(grad_norm) else None,
                          "img_s": result.images / result.seconds, "time": time.time()}
                if cfg.nan_policy == "skip":
                    record["skipped_steps"] = skipped  # updates dropped for NaN/Inf since this process started
                metrics.write(record)
                bar.set_postfix(loss=f"{loss:.4f}", lr=f"{result.lr:.2e}", img_s=f"{record['img_s']:.1f}")
            if device.is_main and cfg.grid_every and (step % cfg.grid_every == 0 or step == stop):
                last = result.last
                save_grid(run_dir / "grids" / f"step-{step:07d}.png", last["images"], last["pixel_mask"],
                          last["recon"], last["weights"], title=grid_title(cfg, step, total))
            if step % cfg.save_every == 0 or step == stop:
                save(step)
                saved = step
            bar.update(1)
            if stop_request.requested:  # Ctrl-C/SIGTERM: this step is whole; checkpoint it unless just saved
                if not (step % cfg.save_every == 0 or step == stop):
                    if not math.isfinite(float(result.loss)):
                        raise UserError(f"{stop_request.signal} at step {step}, whose loss is not finite: not "
                                        f"checkpointed; {intact(run_dir, saved)}")
                    save(step)
                return step
    except UndecodableJpeg as error:
        error.saved = saved
        raise
    finally:  # on every way out, errors included: the metrics log and its TensorBoard/wandb writers close
        bar.close()
        signals.close()
        if metrics is not None:
            metrics.close()
    return None


def grid_title(cfg: PretrainConfig, step: int, total: int) -> str:
    method = (f"KAMIM ({cfg.detector}, w_ps {cfg.weight_ps}, T {cfg.temperature:g})" if cfg.method == "kamim"
              else "SimMIM")
    return f"{method}, {cfg.model}, step {step} of {total}"


def config_from_options(options: dict[str, Any], given: set[str] | None = None) -> PretrainConfig:
    """Click options -> config; ``--recipe`` fills the flags not in ``given`` (config field names given on
    the command line; None: the keys of ``options``)."""
    options, note = apply_recipe(dict(options), given)
    if note and os.environ.get("RANK", "0") == "0":
        click.echo(note, err=True)
    try:
        options["temperature"] = float(options["temperature"])  # "inf": SimMIM's loss via the KAMIM path
    except ValueError:
        raise UserError(f"--temperature {options['temperature']!r}: not a number (e.g. 0.25, or inf)") from None
    options["overrides"] = parse_overrides(options.pop("override", ()))
    if options.get("workers") is None:
        options.pop("workers", None)  # the config's default: cores, at most 8
    names = {f.name for f in dataclasses.fields(PretrainConfig)}
    return PretrainConfig(**{k: v for k, v in options.items() if k in names})
