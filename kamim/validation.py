"""One validation table for every numeric flag of every verb: type, finiteness and range.

Each verb calls ``check_numbers(verb, config)`` before any work. A bad value ends the command with one
line naming the flag, the value and the allowed range (``UserError``, exit 2), instead of a traceback
later (``--seed -1`` in numpy) or a silently wrong run (``--clip-grad -1``, ``--lr inf``).
Choices (``--model``, ``--detector``, ...) and cross-flag rules stay with each verb's own checks.
"""

from __future__ import annotations

import dataclasses
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kamim.errors import UserError

BIG = 10**9  # counts (steps, batches) above this are typos, not plans


def usable_cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def max_workers() -> int:
    """Loader/builder processes: more than 4 per core (or 64) only thrash; 1000 hung a 2-core box."""
    return min(64, 4 * usable_cores()) if usable_cores() < 16 else 4 * usable_cores()


@dataclass(frozen=True)
class Rule:
    kind: type  # int or float
    low: float
    high: float | str  # a number, or "workers": max_workers() on this machine
    low_open: bool = False  # the low end itself is not allowed (lr > 0)
    inf_ok: bool = False  # +inf is a meaningful value (--temperature inf: SimMIM's loss)
    note: str = ""

    def upper(self) -> float:
        return max_workers() if self.high == "workers" else float(self.high)

    def describe(self) -> str:
        word = "an integer" if self.kind is int else "a finite number"
        low = f"> {self.low:g}" if self.low_open else f">= {self.low:g}"
        high = "inf" if self.inf_ok else f"{self.upper():g}"
        text = f"{word} {low} and <= {high}" if self.kind is float else f"{word} in {self.low:g}..{self.upper():g}"
        if self.inf_ok:
            text = text.replace("a finite number", "a number")
        return text + (f" ({self.note})" if self.note else "")

    def ok(self, value: Any) -> bool:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return False
        if self.kind is int and not isinstance(value, int):
            return False
        if isinstance(value, float) and math.isnan(value):
            return False
        if math.isinf(value):
            return self.inf_ok and value > 0
        above = value > self.low if self.low_open else value >= self.low
        return above and value <= self.upper()


_lr = Rule(float, 0, 10, low_open=True)
_rate = Rule(float, 0, 10)
_count = Rule(int, 1, BIG)
SHARED: dict[str, Rule] = {
    "lr": _lr, "probe_lr": _lr, "min_lr": _rate, "lr_min": _rate, "warmup_lr": _rate,
    "weight_decay": _rate, "clip_grad": Rule(float, 0, 1e6, note="0 = no clipping"),
    "temperature": Rule(float, 0, 1e6, low_open=True, inf_ok=True, note="inf = SimMIM's loss"),
    "steps": _count, "stop_after": _count, "warmup_steps": Rule(int, 0, BIG),
    "epochs": Rule(int, 1, 10**5), "probe_epochs": Rule(int, 1, 10**5), "warmup_epochs": Rule(int, 0, 10**5),
    "batch_size": Rule(int, 1, 10**6), "probe_batch_size": Rule(int, 1, 10**6),
    "eval_batch_size": Rule(int, 1, 10**6), "feature_batch_size": Rule(int, 1, 10**6),
    "accumulation": Rule(int, 1, 4096), "global_batch": Rule(int, 1, 10**7),
    "workers": Rule(int, 0, "workers", note="at most 4 per usable core, 64 below 16 cores"),
    "probe_workers": Rule(int, 0, "workers", note="at most 4 per usable core, 64 below 16 cores"),
    "seed": Rule(int, 0, 2**32 - 1), "log_every": _count, "save_every": _count,
    "grid_every": Rule(int, 0, BIG, note="0 = off"), "keep_checkpoints": Rule(int, 0, BIG, note="0 = keep all"),
    "weight_ps": Rule(int, 1, 192), "detect_size": Rule(int, 16, 4096), "store_size": Rule(int, 16, 8192),
    "block_size": Rule(int, 1, 10**6), "num_partitions": Rule(int, 1, 10**5), "partition": Rule(int, 0, 10**5),
    "layer": Rule(int, 1, 1000), "probe_layer": Rule(int, 1, 1000), "mixup": Rule(float, 0, 100, note="0 = off"),
    "layer_decay": Rule(float, 0, 1, low_open=True, note="1 = none"), "num_heads": Rule(int, 1, 4096),
}
# Where a verb reads a flag differently from the shared rule.
PER_VERB: dict[str, dict[str, Rule]] = {
    "pretrain": {"epochs": Rule(float, 0, 10**5, low_open=True)},
    "sweep": {"epochs": Rule(float, 0, 10**5, low_open=True)},
    "cache": {"workers": Rule(int, 1, "workers", note="at most 4 per usable core, 64 below 16 cores")},
}


def rule_for(verb: str, name: str) -> Rule | None:
    return PER_VERB.get(verb, {}).get(name) or SHARED.get(name)


def check_value(verb: str, name: str, value: Any) -> None:
    """UserError naming ``--name`` unless ``value`` is None (the verb's default) or within its rule."""
    rule = rule_for(verb, name)
    if rule is None or value is None or rule.ok(value):
        return
    raise UserError(f"--{name.replace('_', '-')} {value!r}: must be {rule.describe()}")


def check_numbers(verb: str, config: Any) -> None:
    """Check every field of ``config`` (a dataclass or a dict) that the table knows, in field order."""
    values = dataclasses.asdict(config) if dataclasses.is_dataclass(config) else dict(config)
    for name, value in values.items():
        check_value(verb, name, value)


def check_out(path: str | os.PathLike | None, flag: str = "--out") -> None:
    """An output directory must not be an existing file (mkdir would raise FileExistsError)."""
    if path is None:
        return
    path = Path(path)
    for part in (path, *path.parents):
        if part.exists() and not part.is_dir():
            raise UserError(f"{flag} {path}: {part} is an existing file, not a directory; pass another {flag}")


# Model shape overrides (``--override``) and checkpoint metadata: bounded before anything is allocated.
# vit_b is 768 wide and 12 deep; a crafted embed_dim of 4e6 once took 12.9 GB before failing.
SHAPE_LIMITS = {"depth": 128, "embed_dim": 8192, "num_heads": 1024, "depths": 128}
MAX_PARAMETERS = 3e9


def _ints(name: str, value: Any) -> list[int]:
    values = list(value) if isinstance(value, (list, tuple)) else [value]
    if not values or not all(isinstance(v, int) and not isinstance(v, bool) for v in values):
        raise UserError(f"--override {name}={value!r}: use positive integers (e.g. {name}=2)")
    top = SHAPE_LIMITS.get(name, 10**6)
    if not all(1 <= v <= top for v in values):
        raise UserError(f"--override {name}={value!r}: each value must be in 1..{top}")
    return values


def check_model_shape(name: str, family: str, kwargs: dict[str, Any]) -> dict[str, Any]:
    """``kwargs`` with Swin's per-stage lists as tuples; UserError unless depth/depths, embed_dim and
    num_heads make a buildable model of sane size."""
    width = _ints("embed_dim", kwargs["embed_dim"])
    if len(width) != 1:
        raise UserError(f"--override embed_dim={kwargs['embed_dim']!r}: use one integer")
    width = width[0]
    heads = _ints("num_heads", kwargs["num_heads"])
    if family == "vit":
        depth = _ints("depth", kwargs["depth"])
        if len(depth) != 1 or len(heads) != 1:
            raise UserError(f"model '{name}': depth and num_heads take one integer each")
        if width % heads[0]:
            raise UserError(f"model '{name}': embed_dim {width} is not divisible by num_heads {heads[0]}; "
                            f"pick a width that the heads divide (e.g. embed_dim={heads[0] * max(1, width // heads[0])})")
        parameters = 12 * depth[0] * width**2
    else:
        depths = _ints("depths", kwargs["depths"])
        if not 1 <= len(depths) <= 4:
            raise UserError(f"model '{name}': depths {depths} must list 1..4 stages (192 px, patch 4, window 6)")
        if len(heads) == 1:
            heads = heads * len(depths)
        if len(heads) != len(depths):
            raise UserError(f"model '{name}': num_heads {heads} needs one value per stage ({len(depths)})")
        for stage, (count, dim) in enumerate(zip(heads, (width * 2**i for i in range(len(depths))), strict=True)):
            if dim % count:
                raise UserError(f"model '{name}': stage {stage + 1} width {dim} is not divisible by its {count} heads")
        parameters = sum(12 * d * (width * 2**i) ** 2 for i, d in enumerate(depths))
        kwargs = {**kwargs, "depths": tuple(depths), "num_heads": tuple(heads)}
    if parameters > MAX_PARAMETERS:
        raise UserError(f"model '{name}' with {kwargs} would have about {parameters:.2g} parameters "
                        f"(limit {MAX_PARAMETERS:.0g}); check --override or the checkpoint's metadata")
    return kwargs
