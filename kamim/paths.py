"""Where data, caches and runs live by default (each overridable by a flag or an environment variable)."""

from __future__ import annotations

import hashlib
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


def data_root_tag(value: str | os.PathLike | None = None) -> str:
    """8 hex digits naming the resolved data root, so caches of two folders never share a path."""
    return hashlib.sha256(os.fspath(data_root(value).resolve()).encode()).hexdigest()[:8]


def default_cache_dir(
    dataset: str,
    split: str,
    detector: str,
    detect_size: int,
    fmt: str = "zarr",
    gray: str = "bgr",
    root: str | os.PathLike | None = None,
    data_root: str | os.PathLike | None = None,
) -> Path:
    """The directory ``kamim cache`` writes to when ``--out`` is not given.

    ``kamim pretrain`` looks here when ``--cache`` is not given, so the two always agree. The name ends
    with a tag of the resolved data root (``--data-root`` / ``$KAMIM_DATA_ROOT`` / ``./data``), so two
    datasets of the same name in different folders get different caches. ``photos`` (generated, the
    same wherever it lives) keeps the short name the demo prints.
    """
    suffix = "" if gray == "bgr" else f"-gray{gray}"
    tag = "" if dataset == "photos" else f"-{data_root_tag(data_root)}"
    return cache_root(root) / f"{dataset}-{split}-{detector}-{detect_size}{suffix}{tag}.{fmt}"


def runs_root() -> Path:
    return Path(os.environ.get("KAMIM_RUNS_ROOT") or "runs")


def usual_mode(path: str | os.PathLike) -> None:
    """Give a file the mode every other output gets (0666 less the umask, usually 0644): safetensors
    creates its files 0600, which left exports unreadable to the group that reads the runs."""
    mask = os.umask(0)
    os.umask(mask)
    os.chmod(path, 0o666 & ~mask)
