"""Two recorded runs of bench/scale.py side by side, each cell's keypoint cost also in units of a reference
measured in the same cell: the first release's path (``points(i)`` + ``crop_points``, on pages the batch has
just touched), so a day when this shared VM runs slower does not read as a cost that grew with N. Beside
each run, the host's idle-page stalls of the same day (bench/host_pages.py's share of first reads over
30 us, 240 s after a full read), which is what moves the "as left" column at large N.

    python -m bench.scale_compare                                   # scale.json, then every scale-*.json
    python -m bench.scale_compare bench/results/scale.json bench/results/scale-2026-12-02.json
"""

from __future__ import annotations

import json
from pathlib import Path

import click

from .common import REPO

RESULTS = REPO / "bench" / "results"


def host_stalls(scale_run: Path) -> str:
    """The paired host_pages run: ``host_pages<suffix>.json`` beside ``scale<suffix>.json``."""
    paired = scale_run.with_name(scale_run.name.replace("scale", "host_pages", 1))
    if not paired.is_file():
        return "no paired bench/host_pages run"
    last = json.loads(paired.read_text())["results"][-1]
    return (f"host_pages {last['wait_s']:.0f} s after a full read: {100 * last['file']['slow_share']:.1f}% of file / "
            f"{100 * last['anonymous']['slow_share']:.1f}% of anonymous first reads over 30 us")


def cells(run: dict) -> dict[tuple[str, int, str], tuple[float, float, float]]:
    """(detector, N, workers) -> (cost as left, cost pages resident, the first release's warm path), us medians."""
    return {(detector, int(n), workers): (k["cost_us"]["median"], k["resident_us"]["median"],
                                          k["median_us_of"]["chained"])
            for detector, per_n in run["results"].items() for n, entry in per_n.items()
            for workers, k in entry["keypoints"].items()}


@click.command()
@click.argument("runs", nargs=-1, type=click.Path(exists=True, dir_okay=False, path_type=Path))
def main(runs: tuple[Path, ...]) -> None:
    """Print the runs' cells side by side."""
    if not runs:
        dated = sorted(RESULTS.glob("scale-*.json"))
        if not dated:
            raise click.UsageError("no bench/results/scale-*.json to compare with: pass scale JSON files")
        runs = (RESULTS / "scale.json", *dated)
    loaded = [json.loads(path.read_text()) for path in runs]
    for path, run in zip(runs, loaded, strict=True):
        print(f"{path.name}: {run['machine']['date'][:16]}, {run['wall_s']:.0f} s; {host_stalls(path)}")
    print("cost as left / pages resident / first release's warm path, us (as left / that path)")
    tables = [cells(run) for run in loaded]
    for key in sorted(set.intersection(*(set(t) for t in tables))):
        detector, n, workers = key
        row = [f"{c:5.1f} / {r:5.1f} / {ref:5.1f} ({c / ref:.2f})" for c, r, ref in (t[key] for t in tables)]
        print(f"{detector} {n:>9,} {workers} workers: " + "   |   ".join(row))


if __name__ == "__main__":
    main()
