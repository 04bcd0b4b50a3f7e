"""The cache at scale: per-sample keypoint cost, reader open time, memory per loader worker and the loader
ratio kamim-cached / simmim, against the number of images N in the cache (2 k .. 1.28 M).

Synthetic caches (bench/scale_data.py: written by kamim.cache.zarr_store.write_zarr, FAST-like Poisson(1,400)
and SIFT-like Poisson(400) points per image) are read through the real reader (kamim.cache.open_cache: the
derived flat file) by real DataLoader workers (forkserver, as `kamim pretrain` starts them):
- keypoint cost: the worker's keypoint work in the loader's order (PretrainSamples.__getitems__: a batch's
  real images decoded and cropped first, then its keypoints back to back, ``train.crop_select.
  cached_batch_points``: ``point_codes(i)``, the crop's rows and map) plus its share of collate's
  ``train.crop_codes.crop_meta`` (the step then maps the batch's codes on the device), per sample (the
  batch's time / 32) in random order, timed inside the worker (thread CPU time, so 8 workers on 2 cores
  measure cost, not waiting; less the timer's own ~1.5 us), median and p90 over the batches. One batch
  in three measures the first release's order instead (each sample's keypoints right after its own
  image: ``one_by_one_us``, per sample), which costs several times as much: the image work evicts the
  CPU's caches before every call. One in three is the loader's order with the batch's pages of the flat
  file touched before its images (``resident_us``): this VM's host reclaims guest memory left untouched
  for a minute or more, and the first touch of such a page costs ~100 us, so at large N ``cost_us``
  here measures the host as much as the reader; ``resident_us`` is what a machine whose page cache
  stays in RAM pays;
- open: the first call in each worker (header, store key, crc32c of the offsets, status and records sections);
- memory: /proc/<pid>/smaps_rollup of each worker before the open and after its samples: anonymous
  (private, unshareable) and PSS (shared pages split between the processes mapping them, so each page
  counts once in total); the flat file itself is page cache, counted once;
- loader ratio: images/s of PretrainSamples cached vs simmim on real photos indexed modulo their count, and the
  same loaders' CPU time per image, batch by batch in one process (work_ratio: robust to this VM's noise)
  (default the ImageNet-sized ones of bench/large_photos.py; --ratio-source photos for the 224 px set).

    python -m bench.scale                       # N = 2k .. 1.28M, FAST- and SIFT-like (the first run writes
                                                # the caches: ~12 min and 11 GB of zarr + 13 GB of flat files)
    python -m bench.scale --sizes 2000,1280000  # any N list
    python -m bench.scale --quick               # N = 2k, 20k, 2 workers: checks it works
"""

from __future__ import annotations

import json
import os
import resource
import shutil
import time
from dataclasses import dataclass

import click
import numpy as np

from kamim.cache import open_cache
from kamim.cache.flat import flat_path

from .caches import source
from .common import cores, log, ratio_entry, results_dir, start, write_result
from .scale_data import synthetic_cache
from .scale_loader import loader_ratio

_MEMORY_FIELDS = ("Rss", "Pss", "Anonymous", "Private_Clean", "Private_Dirty", "Shared_Clean")


def memory_kib(pid: int | str = "self") -> dict[str, int]:
    """Selected /proc/<pid>/smaps_rollup fields in KiB."""
    out = {}
    with open(f"/proc/{pid}/smaps_rollup") as handle:
        for line in handle:
            name, _, rest = line.partition(":")
            if name in _MEMORY_FIELDS:
                out[name] = int(rest.split()[0])
    return out


_OPENED: dict[str, float] = {}  # per worker process: the open time, once


class KeypointProbe:
    """Map-style dataset served a batch at a time (``__getitems__``, as PretrainSamples is): each batch
    loads its real images as the loader does (decode + crop), and times the keypoint path in the worker."""

    def __init__(self, cache, images, size: int = 192) -> None:  # noqa: ANN001
        self.cache, self.images, self.size = cache, images, size
        self.served = self.batches = 0

    def __len__(self) -> int:
        return len(self.cache)

    def __getitems__(self, indices: list[int]) -> list[dict]:
        from kamim.datasets import read_or_next
        from kamim.malloc import keep_freed_memory
        from kamim.train.augment import crop_image, crop_points, sample_crop, sample_seed, seeded
        from kamim.train.crop_codes import crop_codes, crop_meta
        from kamim.train.crop_select import cached_batch_points, cached_sample_points

        keep_freed_memory()  # as PretrainSamples does in every worker: decode buffers stay in the heap
        items: list[dict] = [{"pid": os.getpid()} for _ in indices]
        if "open_s" not in _OPENED:
            items[0]["mem_before"] = memory_kib()
            began = time.perf_counter()
            self.cache.is_ok(0)  # the reader's open in this process
            _OPENED["open_s"] = items[0]["open_s"] = time.perf_counter() - began
        crops = []
        for index in indices:
            height = int(round(256 / float(self.cache.scale(index)[1])))
            with seeded(sample_seed(0, 0, index)):
                crops.append(sample_crop(height, int(height * 1.3), self.size))
        empty = time.thread_time_ns()  # the timer's own cost in this context, subtracted below
        timer = time.thread_time_ns() - empty
        # The loader's order (PretrainSamples.__getitems__): the batch's images (decode + crop: they evict
        # the CPU's caches), then its keypoints back to back (cached_batch_points), timed as one. One batch
        # in three runs the first release's order instead: each sample's keypoints right after its own
        # image. One in three is the loader's order with the batch's pages of the flat file touched just
        # before its images (untimed): this VM's host takes back guest memory left untouched for a minute
        # or so, and the first touch of such a page then costs ~100 us (a second pread of the same bytes
        # ~4 us), which a machine whose page cache stays in its RAM does not pay. Both are reported.
        kind = ("grouped", "one_by_one", "resident")[self.batches % 3]
        grouped = kind != "one_by_one"
        if kind == "resident":
            self.cache.batch_point_codes(indices)
        for item, index, crop in zip(items, indices, crops, strict=True):
            _, image, _ = read_or_next(self.images, index % len(self.images))
            crop_image(image, crop, self.size)
            if not grouped:
                began = time.thread_time_ns()
                cached_sample_points(self.cache, index, crop, self.size)
                item["one_by_one_ns"] = time.thread_time_ns() - began - timer
        if grouped:
            began, wall = time.thread_time_ns(), time.perf_counter_ns()
            fields = cached_batch_points(self.cache, indices, crops, self.size)
            end = time.thread_time_ns()
            cpu, wall = (end - began - timer) / len(indices), (time.perf_counter_ns() - wall) / len(indices)
            began = time.thread_time_ns()
            crop_meta([f["code_crop"] for f in fields], [0] * len(fields))  # collate's share, per batch
            collate_map = (time.thread_time_ns() - began) / len(indices)
            for item in items:
                item.update({"cpu_ns" if kind == "grouped" else "resident_ns": cpu}, wall_ns=wall,
                            collate_map_ns=collate_map, timer_ns=timer)
        # Untimed by the target, on data the batch has just touched: the read alone, the one-step CPU map
        # of selection caches, and the chained reference the first release's loader ran in the worker
        # (points(i), then crop_points).
        for item, index, crop in zip(items, indices, crops, strict=True):
            began = time.thread_time_ns()
            codes, sx, sy = self.cache.point_codes(index)
            item["points_ns"] = time.thread_time_ns() - began
            began = time.thread_time_ns()
            crop_codes(codes, self.cache.steps, sx, sy, crop, self.size)
            item["cpu_map_ns"] = time.thread_time_ns() - began
            began = time.thread_time_ns()
            crop_points(self.cache.points(index), crop, self.size)
            item["chained_ns"] = time.thread_time_ns() - began
            self.served += 1
            if self.served % 128 == 1:
                item["mem"] = memory_kib()
        self.batches += 1
        return items


def as_list(items: list) -> list:
    return items


def keypoint_path(cache_dir, images, workers: int, samples: int, seed: int) -> dict:  # noqa: ANN001
    """Random-order samples through a real DataLoader: cost, open time and memory per worker."""
    from torch.utils.data import DataLoader

    cache = open_cache(cache_dir)
    order = np.random.default_rng(seed).integers(0, len(cache), samples).tolist()
    loader = DataLoader(KeypointProbe(cache, images), batch_size=32, sampler=order, num_workers=workers,
                        collate_fn=as_list, multiprocessing_context="forkserver")
    items = [item for batch in loader for item in batch]
    grouped = [i for i in items if "cpu_ns" in i][::32]  # one entry per batch: its cost per sample
    collate_map = float(np.median([i["collate_map_ns"] for i in grouped])) / 1e3
    timer = float(np.median([i["timer_ns"] for i in grouped])) / 1e3
    cpu = np.array([i["cpu_ns"] for i in grouped]) / 1e3 + collate_map
    resident = np.array([i["resident_ns"] for i in items if "resident_ns" in i][::32]) / 1e3 + collate_map
    wall = np.array([i["wall_ns"] for i in grouped]) / 1e3
    one_by_one = np.array([i["one_by_one_ns"] for i in items if "one_by_one_ns" in i]) / 1e3
    alone = {k: float(np.median([i[f"{k}_ns"] for i in items]) / 1e3) for k in ("points", "cpu_map", "chained")}
    alone["collate_map"], alone["timer"] = collate_map, timer
    per_pid: dict[int, dict] = {}
    for item in items:
        entry = per_pid.setdefault(item["pid"], {})
        for key in ("open_s", "mem_before", "mem"):
            if key in item:
                entry[key] = item[key]
    added = [{f"{k}_mib": (e["mem"][k] - e["mem_before"][k]) / 1024 for k in ("Anonymous", "Pss", "Rss")}
             for e in per_pid.values() if "mem" in e and "mem_before" in e]
    opens = [e["open_s"] for e in per_pid.values() if "open_s" in e]
    return {
        "workers": workers, "samples": len(items),
        # Per sample in the loader's order (a batch's keypoints after its images): each batch's
        # cached_batch_points / 32 + collate's crop_meta share; median and p90 over the batches.
        "cost_us": {"median": float(np.median(cpu)), "p90": float(np.percentile(cpu, 90)), "batches": len(cpu)},
        "wall_us": {"median": float(np.median(wall)), "p90": float(np.percentile(wall, 90))},
        # The same, with the batch's pages of the flat file touched before its images (what a machine whose
        # page cache stays resident pays; this VM's host reclaims pages left untouched for minutes).
        "resident_us": {"median": float(np.median(resident)), "p90": float(np.percentile(resident, 90)),
                        "batches": len(resident)},
        # The first release's order, per sample (cached_sample_points right after the sample's own image).
        "one_by_one_us": {"median": float(np.median(one_by_one)), "p90": float(np.percentile(one_by_one, 90)),
                          "samples": len(one_by_one)},
        # point_codes(i) again; crop_meta per sample; the CPU map of selection caches (crop_codes); the
        # chained reference (points(i) + crop_points); the timer's own cost (thread_time_ns twice, median).
        "median_us_of": alone,
        "open_s": {"median": float(np.median(opens)), "max": float(max(opens))},
        "added_per_worker_mib": {k: float(max(a[k] for a in added)) for k in added[0]} if added else {},
        "points_per_image_median": float(np.median(cache.counts)),
    }


@dataclass
class ScaleBenchConfig:
    quick: bool = False
    sizes: tuple[int, ...] = (2_000, 20_000, 200_000, 300_000, 1_280_000)
    detectors: tuple[str, ...] = ("fast", "sift")  # FAST-like and SIFT-like caches (the first run writes them)
    worker_counts: tuple[int, ...] = (2, 8)
    samples: int = 4_096  # keypoint samples per (N, detector, workers): half in the loader's order
    ratio_detectors: tuple[str, ...] = ("fast",)
    ratio_min_n: int = 200_000  # measure the loader ratio only from this N up (the target's range)
    merge: bool = False  # keep the other N of an earlier scale.json (measure a few N at a time)
    ratio_source: str = "large"  # large: ImageNet-sized JPEGs (bench/large_photos.py); photos: 224 px
    ratio_workers: int = 0  # 0: all cores
    batch_size: int = 32
    ratio_batches: int = 32
    ratio_skip: int = 5  # the workers fill 2 batches each first: time the steady state
    ratio_repetitions: int = 9  # the VM is noisy: single repetitions of the throughput ratio span 0.75-1.18
    work_batches: int = 40  # batches of the CPU-time work ratio (loaded in both modes)


def ensure_flat(cache_dir, record: dict) -> dict:  # noqa: ANN001
    """Build the derived flat file now (timed) unless a valid one is there (a file of an older flat format is
    rebuilt here, not in the first measured worker); its build time is kept with the record."""

    record_path = cache_dir.with_suffix(".json")
    flat = flat_path(cache_dir)
    if "flat_build_s" not in record:
        flat.unlink(missing_ok=True)
    inode = flat.stat().st_ino if flat.is_file() else None
    began, children = time.perf_counter(), resource.getrusage(resource.RUSAGE_CHILDREN)
    open_cache(cache_dir).is_ok(0)  # builds it in a child process when missing or stale, as any first reader would
    if flat.stat().st_ino != inode:
        record["flat_build_s"] = round(time.perf_counter() - began, 2)
        after = resource.getrusage(resource.RUSAGE_CHILDREN)  # CPU time: meaningful on a busy machine too
        record["flat_build_cpu_s"] = round(after.ru_utime + after.ru_stime - children.ru_utime - children.ru_stime, 2)
        record_path.write_text(json.dumps(record, indent=2) + "\n")
    record["flat_bytes"] = flat.stat().st_size
    return record


BYTES_PER_IMAGE = {"fast": 1_460 + 5_640, "sift": 970 + 1_650}  # zarr + flat file, measured


def fits_on_disk(n: int, detector: str) -> bool:
    """False (and a log line) when N's caches are not written yet and would not fit the disk."""
    from .scale_data import scale_root

    if (scale_root() / f"{detector}-{n}.json").is_file():
        return True
    scale_root().mkdir(parents=True, exist_ok=True)
    need, free = 1.1 * n * BYTES_PER_IMAGE[detector], shutil.disk_usage(scale_root()).free
    if need <= free:
        return True
    log(f"scale: {detector} N={n:,} skipped: its cache and flat file need {need / 2**30:.1f} GiB, "
        f"{free / 2**30:.1f} GiB free under {scale_root()}")
    return False


def warm_page_cache(path) -> float:  # noqa: ANN001
    """Read the flat file once (as the first epoch does) so samples measure the steady state: seconds.
    The other benchmark caches are dropped from the page cache first: each N is measured alone, not on
    a machine whose memory other N's files fill (reclaiming it would count in the workers' CPU time)."""
    from .scale_data import scale_root

    for other in scale_root().rglob("*"):
        if other.is_file() and other != path:
            fd = os.open(other, os.O_RDONLY)
            try:
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
            finally:
                os.close(fd)
    began = time.perf_counter()
    with open(path, "rb", buffering=0) as handle:
        while handle.read(64 << 20):
            pass
    return round(time.perf_counter() - began, 2)


def run(cfg: ScaleBenchConfig) -> dict:
    began = start(cfg)
    results: dict = {}
    previous = results_dir(cfg.quick) / "scale.json"
    if cfg.merge and previous.is_file():
        results = json.loads(previous.read_text())["results"]
    ratios = []
    images = source(cfg.ratio_source, "train").open()  # what the keypoint probe's workers decode
    for detector in cfg.detectors:
        for n in cfg.sizes:
            t0 = time.perf_counter()
            if not fits_on_disk(n, detector):
                continue
            cache_dir, record = synthetic_cache(n, detector)
            record = ensure_flat(cache_dir, record)
            log(f"scale: {detector} N={n:,}: zarr {record['bytes_per_image']:.0f} B/image (written in "
                f"{record['write_s']} s), flat file {record['flat_bytes'] / 2**20:.0f} MiB (built in "
                f"{record['flat_build_s']} s); ready in {time.perf_counter() - t0:.0f} s")
            entry = {"cache": record, "keypoints": {}, "page_cache_warm_s": warm_page_cache(flat_path(cache_dir))}
            for workers in cfg.worker_counts:
                k = keypoint_path(cache_dir, images, workers, cfg.samples, seed=n + workers)
                entry["keypoints"][str(workers)] = k
                log(f"  {workers} workers: keypoints {k['cost_us']['median']:.1f} us median, "
                    f"{k['cost_us']['p90']:.1f} us p90 over batches (pages resident {k['resident_us']['median']:.1f} / "
                    f"{k['resident_us']['p90']:.1f}; one by one after each image "
                    f"{k['one_by_one_us']['median']:.1f} / {k['one_by_one_us']['p90']:.1f}; of which collate's crop_meta {k['median_us_of']['collate_map']:.1f}; "
                    f"point_codes again {k['median_us_of']['points']:.1f}; CPU crop_codes {k['median_us_of']['cpu_map']:.1f}; "
                    f"chained points(i)+crop_points "
                    f"{k['median_us_of']['chained']:.1f}); open {k['open_s']['max']:.3f} s; added per worker "
                    + ", ".join(f"{a} {v:.0f} MiB" for a, v in k["added_per_worker_mib"].items()))
            if detector in cfg.ratio_detectors and n >= cfg.ratio_min_n:
                entry["loader"] = loader_ratio(cache_dir, detector, cfg)
                log(f"  loader kamim-cached/simmim {entry['loader']['ratio']:.3f} "
                    f"({entry['loader']['images_per_s']})")
            if "loader" not in entry and "loader" in results.get(detector, {}).get(str(n), {}):
                entry["loader"] = results[detector][str(n)]["loader"]  # --merge: keep the earlier ratio
            results.setdefault(detector, {})[str(n)] = entry
    for detector, per_n in results.items():
        for n, entry in sorted(per_n.items(), key=lambda item: int(item[0])):
            if "loader" in entry:
                target = 0.97 if int(n) >= 200_000 else None
                handover = "handover_us" in entry["loader"].get("work", {})
                if "work" in entry["loader"]:
                    ratios.append(ratio_entry(f"loader work kamim-cached/simmim {detector} N={int(n):,}",
                                              entry["loader"]["work"]["ratio"], target,
                                              note="CPU time per image, batches of both modes interleaved"
                                              + (", fetch + collate + hand-over" if handover else "")))
                ratios.append(ratio_entry(f"loader throughput kamim-cached/simmim {detector} N={int(n):,}",
                                          entry["loader"]["ratio"], target,
                                          note=f"median of {cfg.ratio_repetitions} paired repetitions, 2 workers"))
        worst = max(e["keypoints"][w]["cost_us"]["median"] for e in per_n.values() for w in e["keypoints"])
        ratios.append(ratio_entry(f"keypoint cost {detector} us/sample, worst median over N",
                                  worst, 20.0, higher_is_better=False, note="cached_batch_points / batch + crop_meta share, after the batch's images"))
        worst = max(e["keypoints"][w]["resident_us"]["median"] for e in per_n.values() for w in e["keypoints"])
        ratios.append(ratio_entry(f"keypoint cost {detector} us/sample, pages resident, worst median over N",
                                  worst, 20.0, higher_is_better=False, note="the same with the batch's flat-file pages touched before its images"))
        opens = max(e["keypoints"][w]["open_s"]["max"] for e in per_n.values() for w in e["keypoints"])
        ratios.append(ratio_entry(f"reader open {detector} s, worst worker", opens, 2.0, higher_is_better=False))
    payload = {"results": results, "ratios": ratios, "cores": cores()}
    write_result("scale", cfg, payload, began)
    return payload


def config(quick: bool = False) -> ScaleBenchConfig:
    cfg = ScaleBenchConfig(quick=quick)
    if quick:
        cfg.sizes, cfg.worker_counts, cfg.samples, cfg.ratio_repetitions = (2_000, 20_000), (2,), 512, 2
        cfg.ratio_min_n = 20_000
        cfg.ratio_batches, cfg.ratio_skip = 6, 2
        cfg.work_batches = 6
    return cfg


@click.command()
@click.option("--quick", is_flag=True, help="N = 2k and 20k, 2 workers, fewer samples: checks it works.")
@click.option("--sizes", help="Comma-separated N list (default 2000,20000,200000,300000,1280000).")
@click.option("--detectors", help="Comma-separated: fast,sift (default both).")
@click.option("--workers", help="Comma-separated loader worker counts (default 2,8).")
@click.option("--samples", type=int, help="Keypoint samples per (N, workers) (default 4096).")
@click.option("--ratio-min-n", type=int, help="Measure the loader ratio only for N at or above this.")
@click.option("--ratio-source", type=click.Choice(["large", "photos"]), help="Real images for the loader ratio.")
@click.option("--ratio-detectors", help="Comma-separated detectors to measure the loader ratio for (default fast).")
@click.option("--merge", is_flag=True, help="Keep the other N already in scale.json (measure a few N at a time).")
def main(quick: bool, sizes: str | None, detectors: str | None, workers: str | None, samples: int | None,
         ratio_min_n: int | None, ratio_source: str | None, ratio_detectors: str | None, merge: bool) -> None:
    """Keypoint cost, reader open time, memory per worker and loader ratio against the cache size N."""
    cfg = config(quick)
    if workers:
        cfg.worker_counts = tuple(int(w) for w in workers.split(","))
    if samples:
        cfg.samples = samples
    if ratio_min_n is not None:
        cfg.ratio_min_n = ratio_min_n
    cfg.merge = merge
    if ratio_detectors:
        cfg.ratio_detectors = tuple(ratio_detectors.split(","))
    cfg.ratio_source = ratio_source or cfg.ratio_source
    if sizes:
        cfg.sizes = tuple(int(s) for s in sizes.split(","))
    if detectors:
        cfg.detectors = tuple(detectors.split(","))
    run(cfg)


if __name__ == "__main__":
    main()
