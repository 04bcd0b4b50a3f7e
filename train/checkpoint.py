"""Checkpoints (resumable training state) and the final export (safetensors + JSON), loaded without pickle.

Run dir layout: ``config.json``, ``metrics.jsonl``, ``checkpoints/step-XXXXXXX.pt``,
``model.safetensors`` + ``model.json``. A checkpoint is a dict of tensors, numbers, strings, lists and
dicts only, so ``torch.load(weights_only=True)`` reads it; every write is temp file + ``os.replace``.
"""

from __future__ import annotations

import json
import math
import os
import re
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file

from kamim.errors import UserError
from kamim.paths import usual_mode

from .integrity import check_zip, export_metadata, sort_metadata, verify_export
from .models import MIMModel, build_model

CHECKPOINT_DIR = "checkpoints"
EXPORT_NAME = "model.safetensors"
STEP_PATTERN = re.compile(r"^step-(\d+)\.pt$")


def jsonable(value: Any) -> Any:
    """Plain JSON (no NaN/Infinity tokens): infinite floats become the string "inf"."""
    if isinstance(value, float) and math.isinf(value):
        return "inf" if value > 0 else "-inf"
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    return value


def non_finite(state: dict[str, Any]) -> str | None:
    """The name of the first floating tensor in ``state`` holding NaN/Inf (None: all finite)."""
    for name, value in state.items():
        if torch.is_tensor(value) and value.is_floating_point() and not bool(torch.isfinite(value).all()):
            return name
    return None


def refuse_non_finite(state: dict[str, Any], path: Path) -> None:
    """Never write a non-finite model: a checkpoint or export must be safe to resume, probe or ship."""
    bad = non_finite(state)
    if bad is not None:
        raise UserError(f"not writing {path}: the model holds non-finite values (NaN/Inf in {bad}); lower --lr, "
                        f"--warmup-lr or --weight-decay, or use --precision fp32")


def checkpoint_path(run_dir: str | os.PathLike, step: int) -> Path:
    return Path(run_dir) / CHECKPOINT_DIR / f"step-{step:07d}.pt"


def list_checkpoints(run_dir: str | os.PathLike) -> list[Path]:
    """The run's checkpoints, oldest first (by step number, not by file time)."""
    folder = Path(run_dir) / CHECKPOINT_DIR
    if not folder.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in folder.iterdir() if (m := STEP_PATTERN.match(p.name))]
    return [p for _, p in sorted(found)]


def latest_checkpoint(run_dir: str | os.PathLike) -> Path | None:
    found = list_checkpoints(run_dir)
    return found[-1] if found else None


def atomic_save(obj: Any, path: str | os.PathLike) -> Path:
    """torch.save to a temp file beside ``path``, then rename: a crash never leaves a torn file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        torch.save(obj, tmp)
    except (OSError, RuntimeError) as error:  # torch reports a failed write (disk full) as RuntimeError
        tmp.unlink(missing_ok=True)
        raise UserError(f"could not write {path} ({str(error).splitlines()[0]}); free disk space and resume "
                        f"(--resume): earlier checkpoints are untouched") from None
    os.replace(tmp, path)
    return path


def remove_stale_temps(folder: Path, name: str) -> None:
    """Delete the temp files (``.NAME.tmpPID``) that a process killed mid-write left beside ``name``."""
    for stale in folder.glob(f".{name}.tmp*"):
        stale.unlink(missing_ok=True)


def save_checkpoint(run_dir: str | os.PathLike, step: int, state: dict[str, Any], keep: int = 2) -> Path:
    """Write ``checkpoints/step-XXXXXXX.pt`` and delete all but the newest ``keep`` checkpoints."""
    refuse_non_finite(state["model"], checkpoint_path(run_dir, step))
    path = atomic_save(state, checkpoint_path(run_dir, step))
    remove_stale_temps(path.parent, "step-*.pt")
    if keep > 0:
        for old in list_checkpoints(run_dir)[:-keep]:
            old.unlink(missing_ok=True)
    return path


def load_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    """A checkpoint dict, read with ``weights_only=True`` (never unpickles code)."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"checkpoint {path} does not exist")
    check_zip(path)  # torch.load never checks the zip's CRC-32s: a flipped byte would load as a weight
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # torch raises several types for torn or foreign files
        raise UserError(f"checkpoint {path} is unreadable ({type(error).__name__}); delete it or pick another") from None
    if not isinstance(state, dict) or "model" not in state:
        raise UserError(f"{path} is not a kamim checkpoint (no 'model' entry)")
    return state


def export_model(model: MIMModel, info: dict[str, Any], run_dir: str | os.PathLike) -> Path:
    """Write ``model.safetensors`` (full MIM model) and ``model.json`` (how to rebuild it) atomically."""
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    path = run_dir / EXPORT_NAME
    state = {k: v.detach().to("cpu").contiguous() for k, v in model.state_dict().items()}
    refuse_non_finite(state, path)
    write_safetensors(state, path, json.dumps(jsonable(info), indent=2, sort_keys=True) + "\n",
                      "the checkpoints are kept: free space and resume (--resume) to export")
    remove_stale_temps(run_dir, "model.*")
    return path


def write_safetensors(state: dict[str, torch.Tensor], path: Path, info_text: str | None = None,
                      hint: str = "free disk space and rerun") -> Path:
    """``path`` (+ ``path.json`` holding ``info_text``) via temp files and renames. A full disk ends in a
    UserError naming the file, with no temp left and no half-written file at ``path``."""
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    info_path = path.with_suffix(".json")
    info_tmp = info_path.with_name(f".{info_path.name}.tmp{os.getpid()}")
    target = path
    try:
        save_file(state, str(tmp), metadata=export_metadata(state, info_text))  # + checksums
        sort_metadata(tmp)  # byte-identical exports for identical weights
        usual_mode(tmp)  # safetensors writes 0600; every other output is 0644
        if info_text is not None:
            target = info_path
            info_tmp.write_text(info_text)
    except (OSError, SafetensorError) as error:  # safetensors reports ENOSPC/EFBIG as SafetensorError
        tmp.unlink(missing_ok=True)
        info_tmp.unlink(missing_ok=True)
        raise UserError(f"could not write {target} ({str(error).splitlines()[0][:160]}); {hint}") from None
    if info_text is not None:
        os.replace(info_tmp, info_path)
    os.replace(tmp, path)
    return path


def model_from_info(info: Any, source: str | os.PathLike = "the checkpoint") -> MIMModel:
    """Rebuild the (untrained) model that ``info`` (model.json / a checkpoint's model_info) describes.
    Every field is type-checked, and build_model bounds the sizes before allocating anything."""
    if not isinstance(info, dict) or not isinstance(info.get("model"), str):
        raise UserError(f"{source}: its model description is not a dict with a 'model' name; is it a kamim export?")
    img_size, overrides = info.get("img_size", 192), info.get("overrides") or {}
    if isinstance(img_size, bool) or not isinstance(img_size, int):
        raise UserError(f"{source}: img_size {img_size!r} in its model description is not an integer")
    if not isinstance(overrides, dict) or not all(isinstance(k, str) for k in overrides):
        raise UserError(f"{source}: overrides {overrides!r} in its model description is not a dict of names")
    try:
        return build_model(info["model"], img_size=img_size, **overrides)
    except UserError as error:
        raise UserError(f"{source}: {error.format_message()}") from None


def _resolve(path: Path) -> Path:
    if path.is_dir():
        if (path / EXPORT_NAME).is_file():
            return path / EXPORT_NAME
        latest = latest_checkpoint(path)
        if latest is None:
            raise UserError(f"{path} holds neither {EXPORT_NAME} nor {CHECKPOINT_DIR}/step-*.pt; is it a run dir?")
        return latest
    if not path.is_file():
        raise UserError(f"{path} does not exist; pass a run dir, a .pt checkpoint or a .safetensors export")
    return path


def load_pretrained(path: str | os.PathLike) -> tuple[MIMModel, dict[str, Any]]:
    """``(model in eval mode on the CPU, info)`` from a run dir, a ``.pt`` checkpoint or a
    ``.safetensors`` export (with its ``.json`` beside it). ``info`` is model.json plus ``source``."""
    source = _resolve(Path(path))
    if source.suffix == ".safetensors":
        info_path = source.with_suffix(".json")
        if not info_path.is_file():
            raise UserError(f"{source} has no {info_path.name} beside it (it says which model to build)")
        try:
            info = json.loads(info_path.read_text())
            state = load_file(str(source))
            with safe_open(str(source), "pt") as handle:
                metadata = handle.metadata()
        except (json.JSONDecodeError, SafetensorError, OSError, UnicodeDecodeError) as error:
            raise UserError(f"{source} or its .json is unreadable ({error})") from None
        verify_export(source, metadata, state, info_path)
    else:
        checkpoint = load_checkpoint(source)
        info, state = checkpoint.get("model_info") or {}, checkpoint["model"]
    model = model_from_info(info, source)
    info = dict(info)
    if not isinstance(state, dict) or not all(torch.is_tensor(v) for v in state.values()):
        raise UserError(f"{source}: its weights are not a dict of tensors; delete it or pick another")
    bad = non_finite(state)
    if bad:
        raise UserError(f"{source} holds non-finite weights (NaN/Inf in {bad}); it cannot be probed or finetuned: "
                        f"use an earlier checkpoint")
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as error:
        first = str(error).splitlines()[0]
        raise UserError(f"{source} does not match model '{info.get('model')}' ({first})") from None
    info["source"] = str(source)
    return model.eval(), info
