"""Finding what to evaluate: the latest run of a dataset, where results go, which device runs it."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from kamim.errors import UserError
from kamim.paths import runs_root

MODEL_FILES = ("model.safetensors", "checkpoints")


def run_dataset(run_dir: Path) -> str | None:
    """The dataset a run was pretrained on, from its config.json (None if unreadable)."""
    try:
        config = json.loads((run_dir / "config.json").read_text())
    except (OSError, json.JSONDecodeError):
        return None
    return config.get("dataset") if isinstance(config, dict) else None


def has_model(run_dir: Path) -> bool:
    return (run_dir / "model.safetensors").is_file() or any((run_dir / "checkpoints").glob("step-*.pt"))


def latest_run(dataset: str, root: Path | None = None) -> Path:
    """The newest run dir under ``root`` (default runs/) pretrained on ``dataset`` that holds a model.

    "Newest" is by the modification time of its newest model file, so a resumed old run counts as new.
    Run dirs may be nested (runs/sweep-x/point/), so the search is recursive on config.json.
    """
    root = Path(root) if root is not None else runs_root()
    candidates = []
    for config in root.rglob("config.json") if root.is_dir() else []:
        run = config.parent
        if run_dataset(run) == dataset and has_model(run):
            files = [run / "model.safetensors", *(run / "checkpoints").glob("step-*.pt")]
            candidates.append((max(f.stat().st_mtime for f in files if f.is_file()), run))
    if not candidates:
        raise UserError(
            f"no pretrain run on dataset '{dataset}' under {root}/; run `make pretrain DATASET={dataset}` "
            "first or pass --checkpoint RUN_DIR"
        )
    return max(candidates)[1]


def default_out_dir(checkpoint: Path, verb: str) -> Path:
    """``RUN_DIR/<verb>`` for a run dir, ``<parent>/<stem>-<verb>`` for a checkpoint or export file."""
    return checkpoint / verb if checkpoint.is_dir() else checkpoint.parent / f"{checkpoint.stem}-{verb}"


def pick_device(name: str = "auto") -> torch.device:
    """``auto`` = the first CUDA GPU if any, else the CPU; ``cpu``; ``cuda`` / ``cuda:N``."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise UserError(f"--device {name}: use auto, cpu, cuda or cuda:N") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UserError(f"--device {name}: no CUDA GPU is visible; use --device cpu")
    return device
