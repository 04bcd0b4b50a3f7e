"""What this machine charges for touching page-cache pages that have sat idle: a control for bench/scale.py.

A loader worker reads each sample's codes from the flat file with one ``pread`` (kamim.cache.flat). On a
machine whose page cache stays in RAM that read costs a few microseconds whatever the file's size. On
a virtual machine whose host takes back guest memory that has not been touched for a while, the first
touch of such a page stalls the vCPU while the host brings it back, and a random read of a large file
pays that on most of its pages. This script measures it on the largest flat file that bench/scale.py
left (or ``--flat``), with nothing else of kamim in the way:

1. read the whole file once (as bench/scale.py does before each N: every page resident and touched);
2. after each wait in ``--waits`` seconds, ``pread`` 5.6 KB (one FAST sample) at fresh random offsets,
   then the same offsets again, timing each read in thread CPU time (a host stall counts there);
3. report per wait the median and p90 of the first and second reads and the share of first reads
   slower than 30 us.

    python -m bench.host_pages                  # waits 0, 60, 240 s (about 5 minutes)
    python -m bench.host_pages --waits 0,30     # quicker
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path

import click
import numpy as np

from .common import log, ratio_entry, start, write_result


@dataclass
class HostPagesConfig:
    quick: bool = False
    flat: str = ""  # default: the largest *.flat under the scale caches
    waits: tuple[float, ...] = (0.0, 60.0, 240.0)
    reads: int = 4_000  # per wait
    read_bytes: int = 5_600  # one FAST sample's codes (1,400 points x 4 B)
    slow_us: float = 30.0


def largest_flat() -> Path:
    from .scale_data import scale_root

    flats = sorted(scale_root().glob("*.flat"), key=lambda p: p.stat().st_size)
    if not flats:
        raise click.UsageError("no flat file under the scale caches: run `python -m bench.scale` first, or pass --flat")
    return flats[-1]


def timed_reads(fd: int, offsets: np.ndarray, size: int) -> np.ndarray:
    """Thread CPU time of each pread, us."""
    out = np.empty(len(offsets))
    for k, at in enumerate(offsets.tolist()):
        began = time.thread_time_ns()
        os.pread(fd, size, at)
        out[k] = (time.thread_time_ns() - began) / 1e3
    return out


def run(cfg: HostPagesConfig) -> dict:
    began = start(cfg)
    path = Path(cfg.flat) if cfg.flat else largest_flat()
    size = path.stat().st_size
    warm = time.perf_counter()
    with open(path, "rb", buffering=0) as handle:
        while handle.read(64 << 20):
            pass
    warm_s = time.perf_counter() - warm
    rng = np.random.default_rng(0)
    fd = os.open(path, os.O_RDONLY)
    results, waited = [], 0.0
    try:
        for wait in cfg.waits:
            time.sleep(max(0.0, wait - waited))
            waited = max(waited, wait)
            offsets = rng.integers(0, size - cfg.read_bytes, cfg.reads)
            first = timed_reads(fd, offsets, cfg.read_bytes)
            again = timed_reads(fd, offsets, cfg.read_bytes)
            row = {"wait_s": wait,
                   "first_us": {"median": float(np.median(first)), "p90": float(np.percentile(first, 90))},
                   "again_us": {"median": float(np.median(again)), "p90": float(np.percentile(again, 90))},
                   "slow_share": float(np.mean(first > cfg.slow_us)),
                   "slow_median_us": float(np.median(first[first > cfg.slow_us])) if (first > cfg.slow_us).any() else None}
            results.append(row)
            log(f"host pages: {wait:.0f} s after reading {path.name} ({size / 2**30:.1f} GiB): first reads "
                f"{row['first_us']['median']:.1f} / {row['first_us']['p90']:.1f} us (median / p90), "
                f"{100 * row['slow_share']:.1f}% over {cfg.slow_us:.0f} us; the same reads again "
                f"{row['again_us']['median']:.1f} / {row['again_us']['p90']:.1f} us")
    finally:
        os.close(fd)
    ratios = [ratio_entry(f"first-touch reads slower than {cfg.slow_us:.0f} us, {row['wait_s']:.0f} s after a full read",
                          row["slow_share"], None, higher_is_better=False,
                          note="share of random 5.6 KB preads of the flat file; 0 on a machine whose page cache stays in RAM")
              for row in results]
    payload = {"flat": str(path), "flat_bytes": size, "warm_s": round(warm_s, 2), "results": results, "ratios": ratios}
    write_result("host_pages", cfg, payload, began)
    return payload


def config(quick: bool = False) -> HostPagesConfig:
    cfg = HostPagesConfig(quick=quick)
    if quick:
        cfg.waits, cfg.reads = (0.0, 5.0), 500
    return cfg


@click.command()
@click.option("--quick", is_flag=True, help="Waits 0 and 5 s, fewer reads: checks it works.")
@click.option("--flat", type=click.Path(exists=True, dir_okay=False), help="The file to read (default: the largest scale flat file).")
@click.option("--waits", help="Comma-separated seconds after the full read (default 0,60,240).")
def main(quick: bool, flat: str | None, waits: str | None) -> None:
    """Cost of first and repeated random reads of a page-cache-resident file, after idle waits."""
    cfg = config(quick)
    cfg.flat = flat or ""
    if waits:
        cfg.waits = tuple(float(w) for w in waits.split(","))
    run(cfg)


if __name__ == "__main__":
    main()
