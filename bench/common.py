"""Shared benchmark helpers: machine description, interleaved timing, medians, ratios, JSON results."""

from __future__ import annotations

import datetime as dt
import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from kamim.config import config_dict, format_config

RESULTS = Path(__file__).resolve().parent / "results"
REPO = Path(__file__).resolve().parent.parent


def results_dir(quick: bool) -> Path:
    """Full runs write bench/results/ (committed, read by the README); quick runs a scratch subfolder."""
    return RESULTS / "quick" if quick else RESULTS


def cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine_info() -> dict[str, Any]:
    """Everything needed to read a figure later: cores, CPU, library versions, load, GPU if any."""
    import cv2
    import numpy
    import timm
    import torch
    import zarr

    info: dict[str, Any] = {
        "cores": cores(),
        "cpu_model": cpu_model(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "opencv": cv2.__version__,
        "numpy": numpy.__version__,
        "timm": timm.__version__,
        "zarr": zarr.__version__,
        "load_average": [round(x, 2) for x in os.getloadavg()] if hasattr(os, "getloadavg") else None,
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
    }
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
    return info


def median(values: list[float]) -> float:
    return float(statistics.median(values)) if values else float("nan")


def interleaved(variants: dict[str, Callable[[], float]], repetitions: int,
                log: Callable[[str], None] | None = None) -> dict[str, list[float]]:
    """Run every variant once per repetition, rotating the order each time, so a slow phase of a
    shared machine hits all variants alike. Each callable returns one measurement."""
    names = list(variants)
    out: dict[str, list[float]] = {name: [] for name in names}
    for rep in range(repetitions):
        shift = rep % len(names)
        for name in names[shift:] + names[:shift]:
            value = float(variants[name]())
            out[name].append(value)
            if log:
                log(f"  rep {rep + 1}/{repetitions} {name}: {value:.4g}")
    return out


def paired_ratio(numerator: list[float], denominator: list[float]) -> float:
    """Median over repetitions of numerator/denominator: each pair ran back to back, so drift cancels."""
    return median([a / b for a, b in zip(numerator, denominator, strict=True) if b])


def summary(samples: dict[str, list[float]]) -> dict[str, dict[str, Any]]:
    return {name: {"median": median(v), "min": min(v), "max": max(v), "samples": [round(x, 6) for x in v]}
            for name, v in samples.items()}


def ratio_entry(name: str, value: float, target: float | None, higher_is_better: bool = True,
                note: str = "") -> dict[str, Any]:
    met = None if target is None else (value >= target if higher_is_better else value <= target)
    return {"name": name, "value": round(value, 4), "target": target,
            "op": ">=" if higher_is_better else "<=", "met": met, "note": note}


def ratio_line(entry: dict[str, Any]) -> str:
    if entry["target"] is None:
        verdict = ""
    else:
        verdict = f"  (target {entry['op']} {entry['target']}: {'met' if entry['met'] else 'NOT met'})"
    note = f"  [{entry['note']}]" if entry.get("note") else ""
    return f"RATIO {entry['name']} = {entry['value']:.3f}{verdict}{note}"


def start(cfg: Any) -> float:
    print(format_config(cfg), flush=True)
    return time.perf_counter()


def write_result(name: str, cfg: Any, payload: dict[str, Any], began: float) -> Path:
    """bench/results[/quick]/NAME.json with the machine, the command, the config and the figures."""
    quick = bool(getattr(cfg, "quick", False))
    path = results_dir(quick) / f"{name}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    record = {
        "benchmark": name,
        "command": f"python -m bench.{name}" + (" --quick" if quick else ""),
        "invoked_as": " ".join(sys.argv),
        "quick": quick,
        "machine": machine_info(),
        "config": config_dict(cfg),
        "wall_s": round(time.perf_counter() - began, 1),
        **payload,
    }
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(record, indent=2) + "\n")
    os.replace(tmp, path)
    for entry in payload.get("ratios", []):
        print(ratio_line(entry), flush=True)
    print(f"wrote {path.relative_to(REPO)}", flush=True)
    return path


def log(message: str) -> None:
    print(message, flush=True)
