"""`make bench`: every CPU benchmark in turn (loader, step, peer, build, fidelity, wds vs folder, wds stream
like for like, cache scale over N, this machine's cost of touching idle page-cache pages), each printing its ratio lines as it finishes, then the README Performance
section and the charts.

    python -m bench.run_all                       # full run, ~15-20 min on 2 quiet cores (first run
                                                  # also writes data/bench-large and caches/bench)
    python -m bench.run_all --quick               # ~3-6 min: checks that everything works (noisy)
    python -m bench.run_all --only step --only loader

Full results go to bench/results/NAME.json (commit them) and the README section; quick results to
bench/results/quick/ (scratch). Timings need a quiet machine; fidelity and sizes do not.
"""

from __future__ import annotations

import importlib
import time
import traceback

import click

from .common import ratio_line
from .large_photos import ensure_large_photos

BENCHMARKS = ("loader", "step", "peer", "build", "fidelity", "wds_vs_folder", "wds_stream", "scale", "host_pages")


@click.command()
@click.option("--quick", is_flag=True, help="Small sizes (a few minutes); results go to bench/results/quick/.")
@click.option("--only", multiple=True, type=click.Choice(BENCHMARKS), help="Run only these (repeatable).")
def main(quick: bool, only: tuple[str, ...]) -> None:
    """Run the CPU benchmarks and regenerate the README Performance section."""
    ensure_large_photos()
    lines, failed = [], []
    for name in only or BENCHMARKS:
        began = time.perf_counter()
        print(f"\n=== bench.{name}{' --quick' if quick else ''} ===", flush=True)
        module = importlib.import_module(f"bench.{name}")
        try:
            payload = module.run(module.config(quick))
        except Exception:  # one broken benchmark must not hide the others' figures
            traceback.print_exc()
            failed.append(name)
            continue
        lines += [ratio_line(r) for r in payload.get("ratios", [])] if isinstance(payload, dict) else []
        print(f"=== bench.{name} done in {time.perf_counter() - began:.0f} s ===", flush=True)
    print("\n=== report ===", flush=True)
    from .report import run as report

    report(quick)
    print("\n=== all ratios ===\n" + "\n".join(lines), flush=True)
    if failed:
        raise SystemExit(f"benchmarks failed: {', '.join(failed)}")


if __name__ == "__main__":
    main()
