"""Do this VM's idle-page stalls follow the memory a loader's reads spread over? A control for bench/scale.py.

In bench/scale.py the SIFT-like 1.28 M flat file (2.0 GB, 1.6 KB a sample) reads close to its resident
cost as left, while the FAST-like one (6.9 GB, 5.6 KB a sample) stalls. Two things differ: the file's
size (the memory the host must back) and the pages a sample touches. This script separates them: the
same 1.6 KB random ``pread``s from each file, and 5.6 KB ones from the FAST file, each file warmed
alone as bench/scale.py warms it before an N (``warm_page_cache``: the other scale files dropped from
the page cache, this one read whole), then left ``--wait`` seconds, in thread CPU time (a host stall
counts; a wait for the disk does not). Rounds alternate the files' order.

    python -m bench.host_footprint                 # 2 rounds, 60 s wait (about 5 minutes)
    python -m bench.host_footprint --rounds 3 --wait 120
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass

import click
import numpy as np

from .common import log, start, write_result
from .host_pages import first_and_again


@dataclass
class HostFootprintConfig:
    quick: bool = False
    n: int = 1_280_000  # the scale caches' N whose FAST- and SIFT-like flat files are compared
    rounds: int = 2
    wait: float = 60.0  # seconds between the full read and the random reads
    reads: int = 3_000  # per (file, size)
    sizes: tuple[int, ...] = (1_600, 5_600)  # a SIFT-like and a FAST-like sample's codes
    slow_us: float = 30.0


def file_reads(path, size: int, reads: int, rng: np.random.Generator, slow_us: float) -> dict:  # noqa: ANN001
    fd = os.open(path, os.O_RDONLY)
    try:
        return first_and_again(lambda at, n: os.pread(fd, n, at), os.fstat(fd).st_size, size, reads, rng, slow_us)
    finally:
        os.close(fd)


def run(cfg: HostFootprintConfig) -> dict:
    from .scale import warm_page_cache
    from .scale_data import scale_root

    began = start(cfg)
    files = {d: scale_root() / f"{d}-{cfg.n}.zarr.flat" for d in ("fast", "sift")}
    missing = [str(p) for p in files.values() if not p.is_file()]
    if missing:
        raise click.UsageError(f"missing {', '.join(missing)}: run `python -m bench.scale --sizes {cfg.n}` first")
    rng, rows = np.random.default_rng(0), []
    for round_ in range(cfg.rounds):
        for detector in (("fast", "sift") if round_ % 2 == 0 else ("sift", "fast")):
            path = files[detector]
            warm_s = warm_page_cache(path)
            time.sleep(cfg.wait)
            sizes = cfg.sizes if detector == "fast" else cfg.sizes[:1]  # a SIFT sample is 1.6 KB
            row = {"round": round_, "detector": detector, "file_bytes": path.stat().st_size, "warm_s": warm_s,
                   "reads": {str(size): file_reads(path, size, cfg.reads, rng, cfg.slow_us) for size in sizes}}
            for size, r in row["reads"].items():
                log(f"host footprint: round {round_}, {detector} ({row['file_bytes'] / 2**30:.1f} GiB), {size} B reads "
                    f"{cfg.wait:.0f} s after its full read: first {r['first_us']['median']:.1f} / "
                    f"{r['first_us']['p90']:.1f} us (median / p90), {100 * r['slow_share']:.1f}% over "
                    f"{cfg.slow_us:.0f} us; again {r['again_us']['median']:.1f} us")
            rows.append(row)
    payload = {"results": rows, "ratios": []}
    write_result("host_footprint", cfg, payload, began)
    return payload


@click.command()
@click.option("--quick", is_flag=True, help="One round, 2 s wait, 300 reads: checks it works (N = 2000).")
@click.option("--rounds", type=int, help="Rounds, the files' order alternating (default 2).")
@click.option("--wait", type=float, help="Seconds between a file's full read and its random reads (default 60).")
def main(quick: bool, rounds: int | None, wait: float | None) -> None:
    """First-touch random reads of the FAST- and SIFT-like flat files, each warmed alone, side by side."""
    cfg = HostFootprintConfig(quick=quick)
    if quick:
        cfg.n, cfg.rounds, cfg.wait, cfg.reads = 2_000, 1, 2.0, 300
    cfg.rounds = rounds or cfg.rounds
    cfg.wait = cfg.wait if wait is None else wait
    run(cfg)


if __name__ == "__main__":
    main()
