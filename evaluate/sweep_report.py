"""The sweep's outputs: results.csv, results.md and one heatmap of top-1 over (w_ps, T) per detector."""

from __future__ import annotations

import csv
import json
import math
import os
from pathlib import Path
from typing import Any

import numpy as np

COLUMNS = ("point", "method", "detector", "weight_ps", "temperature", "top1", "top5", "best_top1",
           "delta_vs_simmim", "pretrain_loss", "pretrain_steps", "run_dir")


def last_metrics(run_dir: Path) -> dict[str, Any]:
    """The last record of the run's metrics.jsonl (its final loss and step), or {}."""
    path = run_dir / "metrics.jsonl"
    try:
        lines = [line for line in path.read_text().splitlines() if line.strip()]
        return json.loads(lines[-1]) if lines else {}
    except (OSError, json.JSONDecodeError):
        return {}


def collect_rows(out: Path, points: list, probe_file: Path) -> list[dict[str, Any]]:
    """One row per finished point, with its gap to the SimMIM baseline when that exists."""
    rows = []
    for point in points:
        run_dir = out / point.name
        try:
            probe = json.loads((run_dir / probe_file).read_text())
        except (OSError, json.JSONDecodeError):
            continue
        metrics = last_metrics(run_dir)
        rows.append({"point": point.name, "method": point.method, "detector": point.detector or "",
                     "weight_ps": point.weight_ps or "", "temperature": "" if point.temperature is None
                     else point.temperature, "top1": round(probe["top1"], 3), "top5": None if probe.get("top5") is None else round(probe["top5"], 3),
                     "best_top1": round(probe["best_top1"], 3),
                     "pretrain_loss": round(metrics["loss"], 5) if "loss" in metrics else "",
                     "pretrain_steps": metrics.get("step", ""), "run_dir": str(run_dir)})
    base = baseline_top1(rows)
    for row in rows:
        row["delta_vs_simmim"] = "" if base is None else round(row["top1"] - base, 3)
    return rows


def baseline_top1(rows: list[dict[str, Any]]) -> float | None:
    return next((r["top1"] for r in rows if r["method"] == "simmim"), None)


def _atomic_write(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(text)
    os.replace(tmp, path)


def write_tables(out: Path, rows: list[dict[str, Any]]) -> None:
    tmp = out / f".results.csv.tmp-{os.getpid()}"
    with tmp.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=COLUMNS)
        writer.writeheader()
        writer.writerows(rows)
    os.replace(tmp, out / "results.csv")
    shown = COLUMNS[:-1]
    lines = ["| " + " | ".join(shown) + " |", "|" + "---|" * len(shown)]
    lines += ["| " + " | ".join(str(row[c]) for c in shown) + " |" for row in rows]
    base = baseline_top1(rows)
    kamim = [r for r in rows if r["method"] == "kamim"]
    notes = [f"SimMIM baseline top-1: {base:.2f}%" if base is not None else "SimMIM baseline: not run"]
    if kamim:
        best = max(kamim, key=lambda r: r["top1"])
        notes.append(f"best KAMIM point: {best['point']} top-1 {best['top1']:.2f}%")
    _atomic_write(out / "results.md", "# Sweep results (linear probe, top-1 %)\n\n" + "\n".join(lines)
                  + "\n\n" + "\n".join(f"- {n}" for n in notes) + "\n")


def write_heatmaps(out: Path, rows: list[dict[str, Any]], detectors: list[str], weight_ps: list[int],
                   temperatures: list[float]) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    base = baseline_top1(rows)
    paths = []
    for detector in detectors:
        grid = np.full((len(weight_ps), len(temperatures)), np.nan)
        for row in rows:
            if row["detector"] == detector and row["weight_ps"] in weight_ps and row["temperature"] in temperatures:
                grid[weight_ps.index(row["weight_ps"]), temperatures.index(row["temperature"])] = row["top1"]
        fig, ax = plt.subplots(figsize=(max(5.0, 1.3 * len(temperatures) + 2.5), 0.9 * len(weight_ps) + 2.0))
        image = ax.imshow(grid, cmap="viridis", aspect="auto")
        fig.colorbar(image, ax=ax, label="top-1 (%)")
        for (i, j), value in np.ndenumerate(grid):
            if not math.isnan(value):
                text = f"{value:.1f}" + (f"\n({value - base:+.1f})" if base is not None else "")
                ax.text(j, i, text, ha="center", va="center", color="white", fontsize=9)
        ax.set_xticks(range(len(temperatures)), [f"{t:g}" for t in temperatures])
        ax.set_yticks(range(len(weight_ps)), [str(w) for w in weight_ps])
        ax.set_xlabel("temperature T")
        ax.set_ylabel("weight patch size w_ps")
        baseline = f"SimMIM baseline {base:.1f}%" if base is not None else "no SimMIM baseline"
        ax.set_title(f"KAMIM {detector.upper()}: linear-probe top-1 (%)\n{baseline}", fontsize=10)
        fig.tight_layout()
        path = out / f"heatmap-{detector}.png"
        fig.savefig(path, dpi=110)
        plt.close(fig)
        paths.append(path)
    return paths
