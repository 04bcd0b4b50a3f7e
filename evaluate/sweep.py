"""``kamim sweep``: the original's w_ps x T parameter sweep and detector comparison as one resumable
command. One keypoint cache per detector (the default cache path, built once, reused by every point),
one pretrain + fast linear probe per (detector, w_ps, T) point and one SimMIM baseline, each in its own
subdirectory of OUT. A point whose linprobe.json exists is skipped; an interrupted pretrain resumes.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kamim.config import format_config, save_config
from kamim.errors import UserError
from kamim.paths import runs_root
from kamim.validation import check_numbers, check_out, check_value

from .linprobe import LinprobeConfig, run_linprobe
from .sweep_report import collect_rows, write_heatmaps, write_tables

DETECTORS = ("fast", "sift", "orb")
PROBE_FILE = Path("linprobe") / "linprobe.json"


@dataclass
class SweepConfig:
    weight_ps: list[int] = field(default_factory=lambda: [8, 16, 32])
    temperature: list[float] = field(default_factory=lambda: [0.1, 0.25, 0.5, 1.0, 2.5])
    detector: list[str] = field(default_factory=lambda: ["fast"])
    baseline: bool = True  # also pretrain + probe SimMIM once
    out: str | None = None  # default: runs/sweep-<dataset>-<model>
    pretrain: dict[str, Any] = field(default_factory=dict)  # PretrainConfig fields shared by every point
    probe: dict[str, Any] = field(default_factory=dict)  # LinprobeConfig fields shared by every point


@dataclass(frozen=True)
class Point:
    name: str
    method: str
    detector: str | None = None
    weight_ps: int | None = None
    temperature: float | None = None


def sweep_points(config: SweepConfig) -> list[Point]:
    points = [Point("simmim", "simmim")] if config.baseline else []
    for detector in config.detector:
        for w in config.weight_ps:
            for t in config.temperature:
                points.append(Point(f"{detector}-wps{w}-T{t:g}", "kamim", detector, w, t))
    return points


def validate(config: SweepConfig) -> None:
    from kamim.train.pretrain import PretrainConfig

    bad = [d for d in config.detector if d not in DETECTORS]
    if bad:
        raise UserError(f"--detector {','.join(bad)}: use a comma list of {', '.join(DETECTORS)}")
    if not config.detector or not config.weight_ps or not config.temperature:
        raise UserError("--detector, --weight-ps and --temperature each need at least one value")
    for name in ("weight_ps", "temperature"):  # every point's value, not only the first
        for value in getattr(config, name):
            check_value("sweep", name, value)
    check_numbers("sweep", config.pretrain)
    check_numbers("sweep", {f"probe_{k}": v for k, v in config.probe.items()})  # named as the flags are
    check_out(config.out)
    known = {f.name for f in dataclasses.fields(PretrainConfig)}
    owned = {"method", "detector", "weight_ps", "temperature", "out", "resume", "cache"}
    extra = sorted(set(config.pretrain) - known) + sorted(set(config.pretrain) & owned)
    if extra:
        raise UserError(f"pretrain options {extra} cannot be set for a sweep (the sweep sets them per point)")
    validate_points(config)


def validate_points(config: SweepConfig) -> None:
    """Every point's pretrain settings pass pretrain's own checks before any work starts: a bad value
    anywhere in a list (e.g. --weight-ps 7,8) ends the sweep at once, not after hours of earlier points."""
    from kamim.train.pretrain import PretrainConfig
    from kamim.train.pretrain import validate as validate_pretrain

    for point in sweep_points(config):
        fields = {**config.pretrain, "method": point.method}
        if point.method == "kamim":
            fields.update(detector=point.detector, weight_ps=point.weight_ps, temperature=point.temperature)
        validate_pretrain(PretrainConfig(**fields))


def pretrain_config(config: SweepConfig, point: Point, run_dir: Path):
    from kamim.train.checkpoint import latest_checkpoint
    from kamim.train.pretrain import PretrainConfig

    fields = {**config.pretrain, "method": point.method, "out": str(run_dir),
              "resume": latest_checkpoint(run_dir) is not None}
    if point.method == "kamim":
        fields.update(detector=point.detector, weight_ps=point.weight_ps, temperature=point.temperature)
    return PretrainConfig(**fields)


def ensure_caches(config: SweepConfig, log) -> None:
    """Build (or check) each detector's cache at its default path before any point starts."""
    from kamim.datasets import open_dataset
    from kamim.train.pretrain import PretrainConfig
    from kamim.train.setup import open_training_cache

    base = PretrainConfig(**config.pretrain)
    # auto: FAST is detected on the device (no cache); SIFT/ORB read a cache (tiny images aside: run_pretrain)
    detectors = [d for d in config.detector if base.keypoints == "cached" or (base.keypoints == "auto" and d != "fast")]
    if not detectors:
        return
    dataset = open_dataset(base.dataset, base.split, base.data_root)
    for detector in detectors:
        open_training_cache(dataclasses.replace(base, detector=detector), dataset, lambda m, **_: log(m))


def run_point(config: SweepConfig, point: Point, run_dir: Path, log) -> None:
    from kamim.train.pretrain import run_pretrain

    if (run_dir / PROBE_FILE).is_file():
        log(f"sweep: skip {point.name} (finished: {run_dir / PROBE_FILE} exists)")
        return
    if not (run_dir / "model.safetensors").is_file():
        cfg = pretrain_config(config, point, run_dir)
        log(f"sweep: {'resume' if cfg.resume else 'start'} pretrain {point.name} -> {run_dir}")
        run_pretrain(cfg)
    else:
        log(f"sweep: pretrain {point.name} already finished; probing it")
    probe = {"dataset": config.pretrain.get("dataset", "photos"), "data_root": config.pretrain.get("data_root"),
             "device": config.pretrain.get("device", "auto"), **config.probe}
    run_linprobe(LinprobeConfig(checkpoint=str(run_dir), **probe))


def run_sweep(config: SweepConfig, log=print) -> Path:
    """Run every point not yet finished, then (re)write results.csv, results.md and the heatmaps."""
    validate(config)
    dataset, model = config.pretrain.get("dataset", "photos"), config.pretrain.get("model", "vit_t")
    out = Path(config.out) if config.out else runs_root() / f"sweep-{dataset}-{model}"
    config = dataclasses.replace(config, out=str(out))
    log(format_config(config))
    save_config(config, out / "sweep_config.json")
    points = sweep_points(config)
    ensure_caches(config, log)
    for index, point in enumerate(points, start=1):
        log(f"sweep: point {index}/{len(points)}: {point.name}")
        run_point(config, point, out / point.name, log)
    rows = collect_rows(out, points, PROBE_FILE)
    write_tables(out, rows)
    write_heatmaps(out, rows, config.detector, config.weight_ps, config.temperature)
    log(f"sweep: {len(rows)} points -> {out / 'results.csv'}, {out / 'results.md'}, {out}/heatmap-*.png")
    return out
