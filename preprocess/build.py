"""The multiprocess cache builder behind ``kamim cache``: fixed blocks, joblib processes, resumable.

Work is split into fixed blocks of ``block_size`` consecutive images. Each block is processed by one
worker process and written atomically (temp + rename) to ``OUT/parts/``; a rerun skips finished
blocks, so an interrupted build resumes, and the output does not depend on the number of workers or
on interruptions. ``--num-partitions P --partition I`` builds only partition I's share of the blocks
(for P machines); ``kamim cache finalize`` then joins them. The manifest is written last.
"""

from __future__ import annotations

import functools
import os
import shlex
import shutil
import signal
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

import click
import cv2
import numpy as np
from joblib import Parallel, delayed
from tqdm import tqdm

from kamim.cache.finalize import finalize
from kamim.cache.manifest import (
    BUILD,
    FORMAT_VERSION,
    FORMATS,
    MANIFEST,
    PARTS,
    STATUS_BAD,
    STATUS_OK,
    atomic_write,
    json_bytes,
    read_json,
    read_manifest,
)
from kamim.cache.parts import Block, block_path, finished_blocks, remove_stale_temps, write_block
from kamim.cache.points import SUBPIXEL_STEPS, decode_points, encode_points, max_side
from kamim.cache.select import encode_attrs, sort_order
from kamim.cache.wds_store import JPEG_QUALITY, SHARD_INDEX_VERSION, SHARD_NAME, encode_sample, write_shard
from kamim.config import format_config, save_config
from kamim.datasets import BadSampleError, open_dataset
from kamim.errors import UserError
from kamim.malloc import keep_freed_memory
from kamim.paths import data_root as resolve_data_root
from kamim.paths import default_cache_dir
from kamim.preprocess.detect import (
    DETECTORS,
    GRAY_MODES,
    SELECTION_PARAMS,
    detect_keypoints,
    detect_with_attributes,
    detector_parameters,
)
from kamim.preprocess.guard import build_lock, die_with_parent, naming
from kamim.preprocess.resize import canonical_resize, canonical_size, from_source, to_source
from kamim.validation import check_numbers


def available_cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


@dataclass
class CacheConfig:
    dataset: str = "photos"
    split: str = "train"
    data_root: str | None = None
    detector: str = "fast"
    detect_size: int = 256
    format: str = "zarr"
    out: str | None = None  # default: kamim.paths.default_cache_dir(...)
    workers: int = field(default_factory=available_cores)
    gray: str = "bgr"
    store_size: int | None = None  # wds only: pre-resize stored images down to this shorter side
    block_size: int = 256
    num_partitions: int = 1
    partition: int = 0
    # SIFT/ORB: store per-point attributes so each crop keeps what its own detector would (see
    # kamim.cache.select; bench/fidelity.py measures it). None = on for SIFT/ORB zarr caches.
    select: bool | None = None


def selects(cfg: CacheConfig) -> bool:
    """Whether this build stores a selection cache (zarr only: wds shards carry plain points)."""
    wanted = cfg.select if cfg.select is not None else cfg.detector in SELECTION_PARAMS
    return bool(wanted) and cfg.detector in SELECTION_PARAMS and cfg.format == "zarr"


SELECTION_MEANING = {
    "sift": "keypoint size at detect size, (log2(size) + 8) * 1024",
    "orb": "pyramid level << 12 | rank of the Harris response in the image (0 = strongest)",
}


def validate(cfg: CacheConfig) -> None:
    check_numbers("cache", cfg)  # every numeric flag: type, finite, range (kamim/validation.py)
    checks = [
        (cfg.detector in DETECTORS, f"--detector {cfg.detector}: use one of {', '.join(DETECTORS)}"),
        (cfg.format in FORMATS, f"--format {cfg.format}: use one of {', '.join(FORMATS)}"),
        (cfg.gray in GRAY_MODES, f"--gray {cfg.gray}: use one of {', '.join(GRAY_MODES)}"),
        (16 <= cfg.detect_size <= 4096, f"--detect-size {cfg.detect_size}: use 16..4096 (default 256)"),
        (cfg.detector not in SUBPIXEL_STEPS or cfg.detect_size <= max_side(SUBPIXEL_STEPS[cfg.detector]),
         f"--detect-size {cfg.detect_size}: {cfg.detector} positions are kept at 1/"
         f"{SUBPIXEL_STEPS.get(cfg.detector, 1)} px, which holds sides up to "
         f"{max_side(SUBPIXEL_STEPS.get(cfg.detector, 1))} px; use a smaller --detect-size"),
        (cfg.workers >= 1, f"--workers {cfg.workers}: use at least 1"),
        (cfg.block_size >= 1, f"block_size {cfg.block_size}: use at least 1"),
        (cfg.num_partitions >= 1, f"--num-partitions {cfg.num_partitions}: use at least 1"),
        (
            0 <= cfg.partition < cfg.num_partitions,
            f"--partition {cfg.partition}: use 0..{cfg.num_partitions - 1}",
        ),
        (cfg.store_size is None or cfg.store_size >= 16, f"--store-size {cfg.store_size}: use at least 16"),
        (cfg.store_size is None or cfg.format == "wds", "--store-size applies to --format wds only"),
    ]
    for ok, message in checks:
        if not ok:
            raise UserError(message)


def output_dir(cfg: CacheConfig) -> Path:
    if cfg.out:
        return Path(cfg.out)
    return default_cache_dir(cfg.dataset, cfg.split, cfg.detector, cfg.detect_size, cfg.format, cfg.gray,
                             data_root=cfg.data_root)


def build_identity(cfg: CacheConfig, dataset) -> dict:
    """What the cache is (recorded in parts/build.json and the manifest); identical for every partition."""
    return {
        "format_version": FORMAT_VERSION,
        "format": cfg.format,
        "dataset": {
            "name": dataset.name,
            "split": dataset.split,
            "count": len(dataset),
            "fingerprint": dataset.fingerprint(),
            "classes": list(dataset.classes),
        },
        "detector": cfg.detector,
        "detector_params": ({**SELECTION_PARAMS[cfg.detector], "selection": True} if selects(cfg)
                            else detector_parameters(cfg.detector)),
        "point_attrs": {"meaning": SELECTION_MEANING[cfg.detector]} if selects(cfg) else None,
        "gray": cfg.gray,
        "detect_size": cfg.detect_size,
        "subpixel_steps": SUBPIXEL_STEPS[cfg.detector],
        "opencv": cv2.__version__,
        "block_size": cfg.block_size,
        "num_blocks": -(-len(dataset) // cfg.block_size),
        "store_size": cfg.store_size,
        "jpeg_quality": JPEG_QUALITY if cfg.format == "wds" else None,
        **({"shard_index": SHARD_INDEX_VERSION} if cfg.format == "wds" else {}),  # shards carry checksums
        # Where the files were read (absolute): tells "another dataset" from "files changed" later, and
        # makes printed rebuild commands complete. Not part of what the cache *is* (see same_build).
        "data_root": os.fspath(resolve_data_root(cfg.data_root).resolve()),
    }


def same_build(recorded: dict, identity: dict) -> bool:
    """Whether a cache (manifest or parts/build.json) is this build: the same files (fingerprint) and
    options; the data root may differ (partitions on machines that mount the data elsewhere)."""
    return {k: recorded.get(k) for k in identity if k != "data_root"} == {
        k: v for k, v in identity.items() if k != "data_root"}


def partition_blocks(num_blocks: int, num_partitions: int, partition: int) -> range:
    """Contiguous, disjoint ranges of blocks covering all of them."""
    return range(num_blocks * partition // num_partitions, num_blocks * (partition + 1) // num_partitions)


@functools.lru_cache(maxsize=2)
def _open_dataset(name: str, split: str, data_root: str | None):
    return open_dataset(name, split, data_root)  # once per worker process


def detect_canonical(image: np.ndarray, detector: str, gray: str, detect_size: int, steps: int):
    """(codes uint16 [N,2], scale [2]): detection on the canonical image, encoded for storage."""
    _check_side(image, detect_size, steps)
    resized, scale = canonical_resize(image, detect_size)
    return encode_points(detect_keypoints(resized, detector, gray), steps), scale


def detect_canonical_selected(image: np.ndarray, detector: str, gray: str, detect_size: int, steps: int):
    """(codes uint16 [N,2], attrs uint16 [N], scale [2]) for a selection cache: the attributes in the
    order of the codes (sorted by quantised (y, x))."""
    _check_side(image, detect_size, steps)
    resized, scale = canonical_resize(image, detect_size, aliased=True)
    points, response, octave, size = detect_with_attributes(resized, detector, gray)
    order = sort_order(points, steps)
    attrs = encode_attrs(detector, response, octave, size)[order]
    return encode_points(points[order], steps), attrs, scale


def _check_side(image: np.ndarray, detect_size: int, steps: int) -> None:
    height, width = image.shape[:2]
    longest = max(canonical_size(height, width, detect_size))
    if longest > max_side(steps):  # checked before resizing: a 100:1 strip would cost a huge resize
        raise BadSampleError("", (
            f"aspect ratio too extreme ({width}x{height}): at --detect-size {detect_size} its longer side "
            f"would be {longest} px, more than the {max_side(steps)} px the cache's 1/{steps}-px codes hold; "
            f"crop it into parts or use a smaller --detect-size"))


def process_block(job: dict, index: int) -> tuple[int, int]:
    """Detect keypoints for one block's images and write its block file (and wds shard). -> (block, n)."""
    # One core per worker: OpenCV's own thread pool (SIFT's pyramid) only oversubscribes the cores the
    # workers already use, and --workers 1 then really means one core.
    cv2.setNumThreads(1)
    keep_freed_memory()
    if job.get("parent_pid", os.getpid()) != os.getpid():
        die_with_parent()  # a loky worker: end with `kamim cache`, never outlive it as an orphan
        # Ctrl-C reaches the whole terminal group: the parent alone reacts (says how to resume, stops the
        # pool), so workers print no KeyboardInterrupt tracebacks.
        signal.signal(signal.SIGINT, signal.SIG_IGN)
    dataset = _open_dataset(job["dataset"], job["split"], job["data_root"])
    start = index * job["block_size"]
    end = min(start + job["block_size"], len(dataset))
    counts, scales, status, codes, errors, samples, attrs = [], [], [], [], [], [], []
    for i in range(start, end):
        try:
            image, label = dataset[i]
            args = (image, job["detector"], job["gray"], job["detect_size"], job["steps"])
            if job.get("select"):
                encoded, point_attrs, scale = detect_canonical_selected(*args)
                attrs.append(point_attrs)
            else:
                encoded, scale = detect_canonical(*args)
        except (BadSampleError, cv2.error) as error:
            reason = error.reason if isinstance(error, BadSampleError) else f"OpenCV failed ({error})"
            errors.append({"index": i, "name": dataset.sample_name(i), "reason": reason})
            counts.append(0), scales.append(np.ones(2)), status.append(STATUS_BAD)
            continue
        counts.append(len(encoded)), scales.append(scale), status.append(STATUS_OK)
        if job["format"] == "zarr":
            codes.append(encoded)
            continue
        points = to_source(decode_points(encoded, job["steps"]), scale)  # exactly what zarr would return
        if job["store_size"] and min(image.shape[:2]) > job["store_size"]:
            image, store_scale = canonical_resize(image, job["store_size"])
            points = from_source(points, store_scale)
        samples.append(encode_sample(i, image, points, label))
    if samples:
        write_shard(Path(job["out"]) / SHARD_NAME.format(index), samples)
    block = Block(
        index=index,
        counts=np.asarray(counts, np.int64),
        codes=np.concatenate(codes) if codes else np.zeros((0, 2), np.uint16),
        scale=np.asarray(scales, np.float64).reshape(-1, 2),
        status=np.asarray(status, np.uint8),
        errors=errors,
        attrs=(np.concatenate(attrs) if attrs else np.zeros(0, np.uint16)) if job.get("select") else None,
    )
    write_block(Path(job["out"]) / PARTS, block)  # last: its presence marks the block (and shard) done
    return index, end - start


def _prepare(cfg: CacheConfig, out: Path, identity: dict) -> bool:
    """Check ``out`` against this build; returns True if the cache there is already complete."""
    if (out / MANIFEST).is_file():
        manifest = read_manifest(out)
        if same_build(manifest, identity):
            shutil.rmtree(out / PARTS, ignore_errors=True)  # a build killed during its final cleanup
            return True
        raise UserError(
            f"{out} holds a different cache (other dataset files or options); delete it or pick --out"
        )
    parts = out / PARTS
    parts.mkdir(parents=True, exist_ok=True)
    if (parts / BUILD).is_file():
        if not same_build(read_json(parts / BUILD), identity):
            raise UserError(
                f"{out} holds an unfinished build with other options or dataset files "
                f"(see {parts / BUILD}); delete {out} or pick another --out"
            )
    else:
        atomic_write(parts / BUILD, json_bytes(identity))
    return False


def build_cache(cfg: CacheConfig) -> Path:
    """Build (or resume, or do this partition's share of) the cache described by ``cfg``; returns its dir."""
    validate(cfg)
    out = output_dir(cfg)
    cfg = replace(cfg, out=os.fspath(out))  # printed and saved resolved, not None
    click.echo(format_config(cfg), err=True)
    dataset = open_dataset(cfg.dataset, cfg.split, cfg.data_root)
    identity = build_identity(cfg, dataset)
    part = f".part{cfg.partition}of{cfg.num_partitions}" if cfg.num_partitions > 1 else ""
    with build_lock(out, part):  # one build per --out (and partition): a second one stops naming this pid
        return _build(cfg, dataset, out, identity)


def _build(cfg: CacheConfig, dataset, out: Path, identity: dict) -> Path:  # noqa: ANN001
    if _prepare(cfg, out, identity):
        click.echo(f"cache: {out} is already complete; nothing to do")
        return out
    save_config(cfg, out / PARTS / f"config-partition-{cfg.partition}.json")
    mine = partition_blocks(identity["num_blocks"], cfg.num_partitions, cfg.partition)
    remove_stale_temps(out / PARTS, {block_path(out / PARTS, b).name for b in mine})
    remove_stale_temps(out, {SHARD_NAME.format(b) for b in mine})
    done = finished_blocks(out / PARTS)
    todo = [b for b in mine if b not in done]
    total = sum(min(cfg.block_size, len(dataset) - b * cfg.block_size) for b in todo)
    job = {
        "dataset": cfg.dataset, "split": cfg.split, "data_root": cfg.data_root, "detector": cfg.detector,
        "gray": cfg.gray, "detect_size": cfg.detect_size, "steps": identity["subpixel_steps"],
        "select": selects(cfg),
        "format": cfg.format, "store_size": cfg.store_size, "block_size": cfg.block_size,
        "out": os.fspath(out), "parent_pid": os.getpid(),
    }  # fmt: skip
    workers = max(1, min(cfg.workers, len(todo)))
    started = time.perf_counter()
    if workers == 1:
        results = (process_block(job, b) for b in todo)
    else:
        run = Parallel(n_jobs=workers, backend="loky", return_as="generator_unordered")
        results = run(delayed(process_block)(job, b) for b in todo)
    try:
        with tqdm(total=total, unit="img", desc=f"cache {cfg.detector}", dynamic_ncols=True) as bar:
            for _, n in results:
                bar.update(n)
    except KeyboardInterrupt:  # finished blocks are on disk; the same command skips them
        kept = len(finished_blocks(out / PARTS) & set(mine))
        click.echo(f"cache build interrupted: {kept} of {len(mine)} blocks are kept in {out / PARTS}; resume "
                   f"with: {cache_command(cfg, out)}", err=True)
        raise SystemExit(130) from None
    seconds = time.perf_counter() - started
    rate = (f"{total} images in {seconds:.1f} s ({total / max(seconds, 1e-9):.1f} img/s, {workers} "
            f"worker{'' if workers == 1 else 's'})")
    if cfg.num_partitions > 1:
        click.echo(
            f"cache: partition {cfg.partition}/{cfg.num_partitions} done: {rate}; when every partition has "
            f"finished, run `kamim cache finalize {out}`"
        )
        return out
    with naming(out):  # a full disk inside zarr's writer names no file: name the cache
        finalize(out)
    click.echo(summary_line(out) + f"; built {rate}")
    return out


def cache_command(cfg: CacheConfig, out: Path) -> str:
    """The ``kamim cache`` command that resumes this build exactly (same output dir, data root and options)."""
    parts = [f"kamim cache --dataset {cfg.dataset} --split {cfg.split} --detector {cfg.detector} --detect-size "
             f"{cfg.detect_size} --format {cfg.format} --gray {cfg.gray}"]
    if cfg.data_root:
        parts.append(f"--data-root {shlex.quote(os.fspath(cfg.data_root))}")
    if cfg.store_size:
        parts.append(f"--store-size {cfg.store_size}")
    if cfg.block_size != CacheConfig.block_size:
        parts.append(f"--block-size {cfg.block_size}")
    if cfg.num_partitions > 1:
        parts.append(f"--num-partitions {cfg.num_partitions} --partition {cfg.partition}")
    return " ".join([*parts, f"--out {shlex.quote(os.fspath(out))}"])


def summary_line(out: Path) -> str:
    manifest = read_manifest(out)
    counts, kp = manifest["status_counts"], manifest["keypoints_per_image"]
    ok, bad = counts["ok"], counts["bad"]
    size = sum(p.stat().st_size for p in out.rglob("*") if p.is_file())
    bad_note = f", {bad} bad (see {out / 'errors.jsonl'})" if bad else ""
    return (
        f"cache: {out}: {ok} images ok{bad_note}, {kp['total']} keypoints (median {kp['median']:g}/image), "
        f"{size / max(ok, 1) / 1024:.2f} KiB/image"
    )
