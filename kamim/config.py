"""One config dataclass per command: printed at start and saved beside the outputs."""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path
from typing import Any


def config_dict(config: Any) -> dict:
    """A JSON-safe dict of a config dataclass (paths become strings, tuples lists)."""

    def clean(value: Any) -> Any:
        if isinstance(value, os.PathLike):
            return os.fspath(value)
        if isinstance(value, (list, tuple)):
            return [clean(v) for v in value]
        if isinstance(value, dict):
            return {k: clean(v) for k, v in value.items()}
        if isinstance(value, float) and value == float("inf"):
            return "inf"
        return value

    return {k: clean(v) for k, v in dataclasses.asdict(config).items()}


def format_config(config: Any) -> str:
    """A compact, aligned listing of every field, for the start of a run's log."""
    items = config_dict(config)
    width = max((len(k) for k in items), default=0)
    title = type(config).__name__
    lines = [f"{title}:"] + [f"  {k:<{width}} = {v}" for k, v in items.items()]
    return "\n".join(lines)


def save_config(config: Any, path: str | os.PathLike) -> Path:
    """Write the config as JSON atomically (temp file + rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(config_dict(config), indent=2, sort_keys=True) + "\n")
    os.replace(tmp, path)
    return path
