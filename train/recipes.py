"""``kamim pretrain --recipe``: named sets of flag values, applied to the flags the user did not give.

``kamim`` is the command's own defaults (a small, fast start: vit_t, micro-batch 64, no accumulation,
cached keypoints). ``original`` is the original's ViT-B pretraining (reference/original-kamim.md
sections 1-3): effective batch 2048 over every process (1024 x 2 accumulation on one device), 110 epochs
(a 10-epoch warmup overlapping a 100-epoch cosine, then lr_min), AdamW 8e-4 with weight decay 0.05 on
every parameter, warmup from 1e-6, lr_min 1e-5, clip 1.0, bf16 autocast, FAST keypoints detected on
every crop (bit-exact, on the device: ``--keypoints device``), w_ps 8, T 0.25, HF init. Flags given explicitly always win, and the run says which did.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from kamim.errors import UserError

ORIGINAL_GLOBAL_BATCH = 2048

PRETRAIN_RECIPES: dict[str, dict[str, Any]] = {
    "kamim": {},  # the defaults of PretrainConfig / the click options
    "original": {
        "model": "vit_b", "method": "kamim", "detector": "fast", "keypoints": "device", "gray": "bgr",
        "weight_ps": 8, "temperature": 0.25, "init": "hf", "precision": "bf16",
        "global_batch": ORIGINAL_GLOBAL_BATCH, "batch_size": 1024, "epochs": 110, "steps": None,
        "warmup_steps": None, "lr": 8e-4, "weight_decay": 0.05, "warmup_lr": 1e-6, "min_lr": 1e-5,
        "clip_grad": 1.0,
    },
}


def flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def apply_recipe(options: dict[str, Any], given: set[str] | None) -> tuple[dict[str, Any], str | None]:
    """(options with ``options['recipe']``'s values for every flag not in ``given``, a one-line note).

    ``given`` holds config field names given on the command line; None means "the keys of ``options``"
    (a programmatic call: a missing key was not given)."""
    name = options.get("recipe") or "kamim"
    if name not in PRETRAIN_RECIPES:
        raise UserError(f"--recipe {name}: use one of {', '.join(PRETRAIN_RECIPES)}")
    given = set(options) - {"recipe"} if given is None else set(given)
    values = PRETRAIN_RECIPES[name]
    kept = sorted(k for k in values if k in given)
    options = {**options, **{k: v for k, v in values.items() if k not in given}, "recipe": name}
    if "accumulation" in given and "global_batch" not in given and options.get("global_batch"):
        options["global_batch"] = None  # an explicit --accumulation fixes the batch itself
        kept.append("accumulation (so not the recipe's global batch)")
    if not values:
        return options, None
    note = f"--recipe {name}: " + " ".join(f"{flag(k)} {v}" for k, v in values.items() if v is not None)
    if kept:
        note += "; given explicitly, so kept: " + ", ".join(flag(k) for k in kept)
    return options, note


def fit_global_batch(cfg: Any, world: int) -> Any:
    """``cfg`` with ``accumulation`` (and, if need be, a smaller ``batch_size``) set so that
    batch_size x accumulation x world == global_batch; unchanged without ``global_batch``."""
    total = cfg.global_batch
    if total is None:
        return cfg
    if cfg.accumulation not in (1, None) and cfg.batch_size * cfg.accumulation * world != total:
        raise UserError(f"--global-batch {total} and --accumulation {cfg.accumulation} disagree for --batch-size "
                        f"{cfg.batch_size} on {world} process(es); give one of them")
    if not isinstance(total, int) or total < 1 or total % world:
        raise UserError(f"--global-batch {total}: must be a positive multiple of the {world} process(es)")
    share = total // world
    micro = min(cfg.batch_size, share)
    if share % micro:
        raise UserError(f"--batch-size {cfg.batch_size} does not divide the {share} images each of {world} "
                        f"process(es) takes per step (--global-batch {total}); pick a divisor of {share}")
    return dataclasses.replace(cfg, batch_size=micro, accumulation=share // micro)
