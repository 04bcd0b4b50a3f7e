"""What this machine charges for touching memory that has sat idle: a control for bench/scale.py.

A loader worker reads each sample's codes from the flat file with one ``pread`` (kamim.cache.flat). On a
machine whose memory stays in RAM that read costs a few microseconds whatever the file's size. On a
virtual machine whose host takes back guest memory that has not been touched for a while, the first
touch of such a page stalls the vCPU while the host brings it back, and a random read of a large file
pays that on most of its pages. This script measures it on the largest flat file that bench/scale.py
left (or ``--flat``), with nothing else of kamim in the way, and beside it the same reads of a copy of
the file held in this process's own anonymous memory: what any reader that keeps the points in RAM
(the first release held them decoded per worker) would pay here.

1. read the whole file once into an anonymous buffer (so every page of both is resident and touched,
   as bench/scale.py leaves the file before each N);
2. after each wait in ``--waits`` seconds, ``pread`` 5.6 KB (one FAST sample) at fresh random offsets,
   then the same offsets again, and copy 5.6 KB out of the buffer at other fresh offsets, then again,
   timing each read in thread CPU time (a host stall counts there; a wait for the disk does not);
3. report per wait and per memory kind the median and p90 of the first and second reads and the
   share of first reads slower than 30 us.

Wall time is a separate matter on this VM: its guest kernel also runs a DAMON ``pageout`` scheme
(``/sys/kernel/mm/damon/admin``) that drops page-cache pages no process maps once their region has
sat idle for a minute, and a read of a dropped page waits for the disk. That wait is not CPU time, so
it is outside these figures and bench/scale.py's per-sample costs; ``damon`` in the JSON records the
scheme when one is running.

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
    anon_limit: int = 8 << 30  # bytes of the file copied into anonymous memory (it must fit in RAM twice)


def largest_flat() -> Path:
    from .scale_data import scale_root

    flats = sorted(scale_root().glob("*.flat"), key=lambda p: p.stat().st_size)
    if not flats:
        raise click.UsageError("no flat file under the scale caches: run `python -m bench.scale` first, or pass --flat")
    return flats[-1]


def timed_reads(read, offsets: np.ndarray, size: int) -> np.ndarray:
    """Thread CPU time of each ``read(offset, size)``, us."""
    out = np.empty(len(offsets))
    for k, at in enumerate(offsets.tolist()):
        began = time.thread_time_ns()
        read(at, size)
        out[k] = (time.thread_time_ns() - began) / 1e3
    return out


def first_and_again(read, extent: int, size: int, reads: int, rng: np.random.Generator, slow_us: float) -> dict:  # noqa: ANN001
    """``summary`` of ``reads`` reads of ``size`` bytes at fresh random offsets below ``extent``, then the same
    offsets again."""
    offsets = rng.integers(0, extent - size, reads)
    return summary(timed_reads(read, offsets, size), timed_reads(read, offsets, size), slow_us)


def read_into_anonymous(path: Path, limit: int) -> np.ndarray:
    """The file's first ``limit`` bytes read into a fresh anonymous buffer (every page touched)."""
    buffer = np.empty(min(limit, path.stat().st_size), dtype=np.uint8)
    with open(path, "rb", buffering=0) as handle:
        view, at = memoryview(buffer), 0
        while at < len(buffer):
            got = handle.readinto(view[at : at + (64 << 20)])
            if not got:
                break
            at += got
    with open(path, "rb", buffering=0) as handle:  # the rest of the file too: all of it resident
        handle.seek(len(buffer))
        while handle.read(64 << 20):
            pass
    return buffer


def damon_schemes() -> list[str]:
    """'action (min age x aggregation interval)' for each DAMON scheme of a running kdamond, if any."""
    found = []
    for kdamond in Path("/sys/kernel/mm/damon/admin/kdamonds").glob("[0-9]*"):
        try:
            if (kdamond / "state").read_text().strip() != "on":
                continue
            for context in (kdamond / "contexts").glob("[0-9]*"):
                aggregate_us = int((context / "monitoring_attrs/intervals/aggr_us").read_text())
                for scheme in (context / "schemes").glob("[0-9]*"):
                    action = (scheme / "action").read_text().strip()
                    age = int((scheme / "access_pattern/age/min").read_text())
                    found.append(f"{action} after {age * aggregate_us / 1e6:.0f} s idle")
        except (OSError, ValueError):
            continue
    return found


def summary(first: np.ndarray, again: np.ndarray, slow_us: float) -> dict:
    slow = first > slow_us
    return {"first_us": {"median": float(np.median(first)), "p90": float(np.percentile(first, 90))},
            "again_us": {"median": float(np.median(again)), "p90": float(np.percentile(again, 90))},
            "slow_share": float(np.mean(slow)),
            "slow_median_us": float(np.median(first[slow])) if slow.any() else None}


def run(cfg: HostPagesConfig) -> dict:
    began = start(cfg)
    path = Path(cfg.flat) if cfg.flat else largest_flat()
    size = path.stat().st_size
    warm = time.perf_counter()
    anonymous = read_into_anonymous(path, cfg.anon_limit)
    warm_s = time.perf_counter() - warm
    rng = np.random.default_rng(0)
    fd = os.open(path, os.O_RDONLY)
    readers = {"file": (lambda at, n: os.pread(fd, n, at), size),
               "anonymous": (lambda at, n: bytes(anonymous[at : at + n]), len(anonymous))}
    results, waited = [], 0.0
    try:
        for wait in cfg.waits:
            time.sleep(max(0.0, wait - waited))
            waited = max(waited, wait)
            row = {"wait_s": wait}
            for kind, (read, extent) in readers.items():
                row[kind] = first_and_again(read, extent, cfg.read_bytes, cfg.reads, rng, cfg.slow_us)
                log(f"host pages: {wait:.0f} s after reading {path.name} ({extent / 2**30:.1f} GiB), {kind:9s}: "
                    f"first reads {row[kind]['first_us']['median']:.1f} / {row[kind]['first_us']['p90']:.1f} us "
                    f"(median / p90), {100 * row[kind]['slow_share']:.1f}% over {cfg.slow_us:.0f} us; the same "
                    f"reads again {row[kind]['again_us']['median']:.1f} / {row[kind]['again_us']['p90']:.1f} us")
            results.append(row)
    finally:
        os.close(fd)
    ratios = [ratio_entry(f"first-touch {kind} reads slower than {cfg.slow_us:.0f} us, {row['wait_s']:.0f} s "
                          f"after a full read", row[kind]["slow_share"], None, higher_is_better=False,
                          note=note)
              for row in results
              for kind, note in (("file", "share of random 5.6 KB preads of the flat file, from the page cache"),
                                 ("anonymous", "the same reads of a copy in process memory"))]
    payload = {"flat": str(path), "flat_bytes": size, "anonymous_bytes": len(anonymous), "warm_s": round(warm_s, 2),
               "damon": damon_schemes(), "results": results, "ratios": ratios}
    write_result("host_pages", cfg, payload, began)
    return payload


def config(quick: bool = False) -> HostPagesConfig:
    cfg = HostPagesConfig(quick=quick)
    if quick:
        cfg.waits, cfg.reads, cfg.anon_limit = (0.0, 5.0), 500, 256 << 20
    return cfg


@click.command()
@click.option("--quick", is_flag=True, help="Waits 0 and 5 s, fewer reads: checks it works.")
@click.option("--flat", type=click.Path(exists=True, dir_okay=False), help="The file to read (default: the largest scale flat file).")
@click.option("--waits", help="Comma-separated seconds after the full read (default 0,60,240).")
def main(quick: bool, flat: str | None, waits: str | None) -> None:
    """Cost of first and repeated random reads of a flat file and of a copy in RAM, after idle waits."""
    cfg = config(quick)
    cfg.flat = flat or ""
    if waits:
        cfg.waits = tuple(float(w) for w in waits.split(","))
    run(cfg)


if __name__ == "__main__":
    main()
