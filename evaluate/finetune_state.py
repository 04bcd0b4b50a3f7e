"""Finetune checkpoints and ``--resume``: the whole training state at the end of an epoch, so a resumed
run continues exactly (bit-equal on the CPU) where the interrupted one stopped.

An epoch's randomness is a function of (seed, epoch) and of the RNG states saved with the checkpoint:
the shuffling generator is reseeded every epoch and loader workers are started afresh each epoch from it,
and the python/numpy/torch RNG states (MixUp/CutMix draw from numpy, the augmentations from torch) are
restored on resume. Checkpoints go to OUT/checkpoints/step-XXXXXXX.pt (the optimiser step), written and
pruned by the same code as pretraining's (atomic, never non-finite, never unpickled).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from kamim.config import config_dict
from kamim.errors import UserError

# Settings that may differ on --resume without changing the result (or that only say where/how to run).
RESUMABLE_CHANGES = {"resume", "latest", "out", "workers", "device", "eval_batch_size", "save_every",
                     "keep_checkpoints"}


def seed_everything(seed: int) -> None:
    """Seed python's, numpy's and torch's global generators (timm's MixUp/CutMix use numpy's)."""
    import random

    import numpy as np
    import torch

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def resume_state(out_dir: Path, config: Any) -> dict[str, Any] | None:
    """The checkpoint to continue from (``--resume``), or None for a fresh run into an empty OUT."""
    from kamim.train.checkpoint import latest_checkpoint, load_checkpoint, non_finite

    latest = latest_checkpoint(out_dir)
    if not config.resume:
        if latest is not None:
            raise UserError(f"{out_dir} already holds finetune checkpoints; pass --resume to continue that run or "
                            f"another --out")
        return None
    if latest is None:
        raise UserError(f"--resume: {out_dir} has no checkpoints/step-*.pt to continue from")
    state = load_checkpoint(latest)
    saved, now = state.get("config"), config_dict(config)
    if not isinstance(saved, dict) or "epoch" not in state:
        raise UserError(f"--resume: {latest} is not a finetune checkpoint (no config/epoch); pick another --out")
    changed = {k: (saved.get(k), now.get(k)) for k in sorted((set(saved) | set(now)) - RESUMABLE_CHANGES)
               if saved.get(k) != now.get(k)}
    if changed:
        shown = "; ".join(f"--{k.replace('_', '-')}: the run had {was}, now {is_}" for k, (was, is_) in changed.items())
        raise UserError(f"--resume: {latest} was finetuned with other settings ({shown}); give them as the run had them")
    bad = non_finite(state["model"])
    if bad is not None:
        raise UserError(f"--resume: {latest} holds NaN/Inf weights ({bad}); delete it to resume from the one before")
    return state


def training_state(model, optimizer, schedule, config: Any, epoch: int, step: int, best: float,  # noqa: ANN001
                   history: list[dict], metrics: dict, train_loss: float) -> dict[str, Any]:
    """Everything a resume needs, after ``epoch`` epochs (``step`` optimiser steps)."""
    from kamim.train.rng import rng_states

    return {"model": model.state_dict(), "optimizer": optimizer.state_dict(), "schedule": schedule.state_dict(),
            "rng": rng_states(), "epoch": epoch, "step": step, "best": best, "history": history,
            "metrics": metrics, "train_loss": train_loss, "config": config_dict(config)}


def restore(state: dict[str, Any], model, optimizer, schedule) -> tuple[int, int, float, list[dict], dict, float]:  # noqa: ANN001
    """Load ``state`` into the model, optimiser and schedule and restore the RNGs; returns
    (epoch, step, best, history, metrics, train_loss)."""
    from kamim.train.rng import restore_rng_states

    model.load_state_dict(state["model"])
    optimizer.load_state_dict(state["optimizer"])
    schedule.load_state_dict(state["schedule"])
    restore_rng_states(state["rng"])
    return (int(state["epoch"]), int(state["step"]), float(state["best"]), list(state["history"]),
            dict(state["metrics"]), float(state["train_loss"]))
