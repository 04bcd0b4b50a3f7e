"""Cache build throughput (the real `kamim cache` builder) per detector vs decode+resize alone, with 1
and 2 worker processes, and the cache's bytes per image per format.
"""

from __future__ import annotations

import contextlib
import io
import shutil
import time
from dataclasses import dataclass

import click
import cv2
from joblib import Parallel, delayed

from kamim.cache.info import disk_bytes
from kamim.cache.manifest import read_manifest
from kamim.paths import cache_root

from .caches import Source, ensure_cache, source
from .common import cores, interleaved, log, median, paired_ratio, ratio_entry, start, summary, write_result


@dataclass
class BuildBenchConfig:
    quick: bool = False
    sources: tuple[str, ...] = ("large", "photos")
    detectors: tuple[str, ...] = ("fast", "sift", "orb")
    worker_counts: tuple[int, ...] = (1, 2)
    detect_size: int = 256
    blocks: int = 12  # work blocks per build, so 2 workers stay balanced (the default 256 suits ImageNet)
    repetitions: int = 3


def _decode_resize_block(src: Source, indices: range, detect_size: int) -> int:
    from kamim.preprocess.resize import canonical_resize

    cv2.setNumThreads(1)  # as the builder does in every worker (and with --workers 1)
    dataset = src.open()
    for i in indices:
        canonical_resize(dataset[i][0], detect_size)
    return len(indices)


def decode_resize_rate(src: Source, count: int, block: int, workers: int, detect_size: int) -> float:
    """Images/s of decode + canonical resize alone, split into the same blocks as the build."""
    blocks = [range(s, min(s + block, count)) for s in range(0, count, block)]
    threads = cv2.getNumThreads()
    warm_pool(workers)
    began = time.perf_counter()
    if workers == 1:
        for b in blocks:
            _decode_resize_block(src, b, detect_size)
    else:
        Parallel(n_jobs=workers, backend="loky")(delayed(_decode_resize_block)(src, b, detect_size) for b in blocks)
    seconds = time.perf_counter() - began
    cv2.setNumThreads(threads)
    return count / seconds


def _burn(n: int) -> int:
    total = 0
    for i in range(n):
        total += i * i
    return total


def burn_rate(workers: int, tasks: int = 8, size: int = 2_000_000) -> float:
    """Control: pure-Python work per second with 1 or N processes, i.e. how much parallel speed-up the
    machine can give right now (on a shared machine, far less than N)."""
    warm_pool(workers)
    began = time.perf_counter()
    if workers == 1:
        for _ in range(tasks):
            _burn(size)
    else:
        Parallel(n_jobs=workers, backend="loky")(delayed(_burn)(size) for _ in range(tasks))
    return tasks / (time.perf_counter() - began)


def _import_builder() -> int:
    import kamim.preprocess.build  # noqa: F401

    return 0


def warm_pool(workers: int) -> None:
    """Start joblib's reusable loky workers (and their imports) outside the timing: a real build runs
    for hours, so the pool's start-up (seconds) is no part of its throughput."""
    if workers > 1:
        Parallel(n_jobs=workers, backend="loky")(delayed(_import_builder)() for _ in range(2 * workers))


def build_rate(src: Source, detector: str, workers: int, block: int, detect_size: int) -> float:
    """Images/s of a complete build (dataset listing to manifest) into a scratch dir."""
    from kamim.preprocess.build import CacheConfig, build_cache

    out = cache_root() / "bench" / "scratch" / f"{src.tag}-{detector}-{workers}"
    shutil.rmtree(out, ignore_errors=True)
    cfg = CacheConfig(dataset=src.dataset, split=src.split, data_root=src.data_root, detector=detector,
                      detect_size=detect_size, out=str(out), workers=workers, block_size=block)
    sink = io.StringIO()
    threads = cv2.getNumThreads()
    warm_pool(workers)
    began = time.perf_counter()
    with contextlib.redirect_stderr(sink), contextlib.redirect_stdout(sink):
        build_cache(cfg)
    seconds = time.perf_counter() - began
    cv2.setNumThreads(threads)  # the in-process build leaves OpenCV single-threaded
    return read_manifest(out)["status_counts"]["ok"] / seconds


def sizes(src: Source, detectors: tuple[str, ...], detect_size: int) -> dict:
    """Bytes per image: zarr (all, points only) per detector; wds (original and pre-resized to 256)."""
    dataset = src.open()
    source_bytes = sum(size for _, size in dataset.identity()) / len(dataset)
    out = {"source_image_bytes": round(source_bytes)}
    for detector in detectors:
        path = ensure_cache(src, detector, "zarr", detect_size=detect_size)
        manifest = read_manifest(path)
        ok = max(manifest["status_counts"]["ok"], 1)
        out[f"zarr-{detector}"] = {"bytes_per_image": round(disk_bytes(path) / ok),
                                   "points_bytes_per_image": round(disk_bytes(path / "points") / ok),
                                   "keypoints_per_image_median": manifest["keypoints_per_image"]["median"]}
    for store in (None, 256):
        path = ensure_cache(src, "fast", "wds", store_size=store, detect_size=detect_size)
        out[f"wds-fast-store{store or 'original'}"] = {
            "bytes_per_image": round(disk_bytes(path) / read_manifest(path)["samples"])}
    return out


def build_variants(src: Source, count: int, block: int, cfg: BuildBenchConfig) -> dict:
    variants = {f"decode+resize-w{w}": (lambda w=w: decode_resize_rate(src, count, block, w, cfg.detect_size))
                for w in cfg.worker_counts}
    variants |= {f"{d}-w{w}": (lambda d=d, w=w: build_rate(src, d, w, block, cfg.detect_size))
                 for d in cfg.detectors for w in cfg.worker_counts}
    variants |= {f"cpu-control-w{w}": (lambda w=w: burn_rate(w)) for w in cfg.worker_counts}
    return variants


def run(cfg: BuildBenchConfig) -> dict:
    began = start(cfg)
    results, ratios = {}, []
    for tag in cfg.sources:
        src = source(tag, "val" if cfg.quick and tag == "photos" else "train")
        count = len(src.open())
        block = max(1, -(-count // cfg.blocks))
        log(f"build: {tag} ({count} images, blocks of {block}), {cores()} cores")
        samples = interleaved(build_variants(src, count, block, cfg), cfg.repetitions, log)
        w1, w2 = cfg.worker_counts[0], cfg.worker_counts[-1]
        per_detector = {}
        for d in cfg.detectors:
            per_detector[d] = {
                "images_per_s_1_worker": median(samples[f"{d}-w{w1}"]),
                "images_per_s_2_workers": median(samples[f"{d}-w{w2}"]),
                "vs_decode_resize_1_worker": paired_ratio(samples[f"{d}-w{w1}"], samples[f"decode+resize-w{w1}"]),
            }
            ratios.append(ratio_entry(f"build {tag} {d} {w2} workers/{w1} worker",
                                      paired_ratio(samples[f"{d}-w{w2}"], samples[f"{d}-w{w1}"]), 1.8))
            ratios.append(ratio_entry(f"build {tag} {d}/decode+resize (1 worker)",
                                      per_detector[d]["vs_decode_resize_1_worker"], None))
        decode = {w: median(samples[f"decode+resize-w{w}"]) for w in cfg.worker_counts}
        ratios.append(ratio_entry(f"build {tag} decode+resize {w2} workers/{w1} worker",
                                  paired_ratio(samples[f"decode+resize-w{w2}"], samples[f"decode+resize-w{w1}"]), None))
        ratios.append(ratio_entry(f"build {tag} control: pure-Python work {w2} processes/{w1}",
                                  paired_ratio(samples[f"cpu-control-w{w2}"], samples[f"cpu-control-w{w1}"]), None,
                                  note="the speed-up this machine could give at the time"))
        size = sizes(src, cfg.detectors, cfg.detect_size)
        if tag == "large":
            ratios.append(ratio_entry("size large FAST zarr KB/image (detect 256)",
                                      size["zarr-fast"]["bytes_per_image"] / 1000, 3.0, False))
        results[tag] = {"images": count, "block_size": block, "images_per_s": summary(samples),
                        "detectors": per_detector, "decode_resize_images_per_s": decode, "bytes": size}
    shutil.rmtree(cache_root() / "bench" / "scratch", ignore_errors=True)
    payload = {"results": results, "ratios": ratios,
               "note": "1 worker builds in-process, N workers in joblib loky processes (started before the "
                       "timing); OpenCV single-threaded in both, as the builder sets it"}
    write_result("build", cfg, payload, began)
    return payload


def config(quick: bool = False) -> BuildBenchConfig:
    cfg = BuildBenchConfig(quick=quick)
    if quick:
        cfg.sources, cfg.repetitions = ("large",), 1
    return cfg


@click.command()
@click.option("--quick", is_flag=True, help="One repetition on the large photos: checks the benchmark works.")
def main(quick: bool) -> None:
    """Cache build images/s per detector vs decode+resize, 1 vs 2 workers; bytes per image."""
    run(config(quick))


if __name__ == "__main__":
    main()
