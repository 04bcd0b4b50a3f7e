"""runs/demo/report.md: the demo's results table, stage timings and links to every picture it made."""

from __future__ import annotations

import json
import os
import platform
import time
from pathlib import Path
from typing import Any

METHODS = (("SimMIM", "simmim"), ("KAMIM", "kamim"))


def read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None


def final_loss(run: Path) -> float | None:
    try:
        lines = (run / "metrics.jsonl").read_text().strip().splitlines()
        return float(json.loads(lines[-1])["loss"])
    except (OSError, IndexError, KeyError, ValueError, json.JSONDecodeError):
        return None


def fmt(value: Any, digits: int = 2, suffix: str = "") -> str:
    if isinstance(value, (int, float)):
        return f"{value:.{digits}f}{suffix}"
    return "—"


def results_table(out: Path) -> list[str]:
    recon = (read_json(out / "analysis" / "reconstruction.json") or {}).get("results", {})
    rows = ["| method | final pretrain loss | linprobe top-1 | linprobe top-5 | PSNR (full) | SSIM (full) "
            "| PSNR (masked only) |", "|---|---|---|---|---|---|---|"]
    for label, method in METHODS:
        probe = read_json(out / method / "linprobe" / "linprobe.json") or {}
        r = recon.get(label, {})
        rows.append(f"| {label} | {fmt(final_loss(out / method), 4)} | {fmt(probe.get('top1'), 2, '%')} | "
                    f"{fmt(probe.get('top5'), 2, '%')} | {fmt(r.get('psnr'), 3)} | {fmt(r.get('ssim'), 4)} | "
                    f"{fmt(r.get('psnr_masked'), 3)} |")
    return rows


def pictures(out: Path) -> list[str]:
    lines = []
    figures = [("Reconstructions (masked cells filled by each model)", out / "analysis" / "reconstruction.png"),
               ("Attention distance per depth", out / "analysis" / "attention-distance.png")]
    for label, method in METHODS:
        grids = sorted((out / method / "grids").glob("*.png"))
        if grids:
            figures.append((f"{label}: training reconstruction grid ({grids[-1].stem})", grids[-1]))
    figures += [(f"Keypoint weights: {p.parent.name}", p) for p in sorted((out / "weights").glob("*/weights.png"))]
    for title, path in figures:
        if path.is_file():
            lines += [f"### {title}", "", f"![{title}]({path.relative_to(out).as_posix()})", ""]
    return lines


def write_report(out: Path, config: Any, stages: list, total_s: float) -> Path:
    """Write ``out/report.md`` (atomically) from whatever the stages left behind."""
    c = config
    lines = [
        "# kamim demo: SimMIM vs KAMIM on `photos`", "",
        f"Generated {time.strftime('%Y-%m-%d %H:%M:%S %Z')} on {platform.node()} ({os.cpu_count()} CPUs, "
        f"{platform.python_implementation()} {platform.python_version()}); total wall time **{total_s:.0f} s**.", "",
        f"Model `{c.model}` with overrides `{' '.join(c.overrides)}`, {c.steps} pretraining steps x batch "
        f"{c.batch_size} per method on CPU; KAMIM uses {c.detector.upper()} keypoints from the cache, "
        f"w_ps {c.weight_ps}, T {c.temperature}. Linear probe: block {c.probe_layer}, patch tokens "
        f"average-pooled, {c.probe_epochs} epochs on cached features; top-1/top-5 on `photos/val`.", "",
        "These are seconds of training, not the paper's 110 epochs: the numbers show the pipeline works, "
        "not which method wins. PSNR/SSIM follow the original notebook (full images against the normalised "
        "input, mask ratio 0.4); the masked-only PSNR is the part the model was trained on.", "",
        "## Results", "", *results_table(out), "",
        "## Stages", "", "| stage | status | seconds |", "|---|---|---|",
        *[f"| {s.name} | {s.status}{' — ' + '; '.join(s.notes) if s.notes else ''} | {s.seconds:.1f} |"
          for s in stages], "",
        "Logs of every command: `logs/`. Rerun with `make demo` (reuses the cache and finished runs) or "
        "`python -m kamim.demo --fresh`.", "",
        "## Pictures", "", *pictures(out),
    ]
    path = out / "report.md"
    out.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    tmp.write_text("\n".join(lines) + "\n")
    os.replace(tmp, path)
    return path
