"""Where data, caches and runs live by default (each overridable by a flag or an environment variable)."""

from __future__ import annotations

import os
from pathlib import Path


def data_root(value: str | os.PathLike | None = None) -> Path:
    """``--data-root`` if given, else ``$KAMIM_DATA_ROOT``, else ``./data``."""
    if value:
        return Path(value)
    return Path(os.environ.get("KAMIM_DATA_ROOT") or "data")


def cache_root(value: str | os.PathLike | None = None) -> Path:
    """Root under which ``kamim cache`` writes by default: ``$KAMIM_CACHE_ROOT`` or ``./caches``."""
    if value:
        return Path(value)
    return Path(os.environ.get("KAMIM_CACHE_ROOT") or "caches")


def default_cache_dir(
    dataset: str,
    split: str,
    detector: str,
    detect_size: int,
    fmt: str = "zarr",
    gray: str = "bgr",
    root: str | os.PathLike | None = None,
) -> Path:
    """The directory ``kamim cache`` writes to when ``--out`` is not given.

    ``kamim pretrain`` looks here when ``--cache`` is not given, so the two always agree.
    """
    suffix = "" if gray == "bgr" else f"-gray{gray}"
    return cache_root(root) / f"{dataset}-{split}-{detector}-{detect_size}{suffix}.{fmt}"


def runs_root() -> Path:
    return Path(os.environ.get("KAMIM_RUNS_ROOT") or "runs")
