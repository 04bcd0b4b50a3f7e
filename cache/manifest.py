"""The manifest (what a cache is, written last: its presence means the cache is complete) and helpers."""

from __future__ import annotations

import json
import os
import shlex
from pathlib import Path
from typing import Any

import numpy as np

from kamim.errors import UserError

FORMAT_VERSION = 1
FORMATS = ("zarr", "wds")
MANIFEST = "manifest.json"
ERRORS = "errors.jsonl"
PARTS = "parts"
BUILD = "build.json"  # parts/build.json: the build's identity, shared by every partition
STATUS_OK, STATUS_BAD = 0, 1
STATUS_NAMES = {STATUS_OK: "ok", STATUS_BAD: "bad"}


def atomic_write(path: Path, data: bytes) -> None:
    """Write via a temp file + rename, so a reader (or a resumed build) never sees half a file."""
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
    except BaseException as error:  # disk full or interrupted: leave no partial temp behind
        tmp.unlink(missing_ok=True)
        if isinstance(error, OSError) and error.filename is None:
            error.filename = os.fspath(path)  # name the file in the one-line message
        raise
    os.replace(tmp, path)


def json_bytes(obj: Any) -> bytes:
    return (json.dumps(obj, indent=2, sort_keys=True) + "\n").encode()


def read_json(path: Path) -> dict:
    try:
        return json.loads(Path(path).read_text())
    except (OSError, ValueError) as error:
        raise UserError(f"{path}: unreadable ({error}); rebuild the cache with `kamim cache`") from None


def read_manifest(cache_dir: str | os.PathLike) -> dict:
    """The manifest of a complete cache, or a UserError saying how to finish or rebuild it."""
    cache_dir = Path(cache_dir)
    path = cache_dir / MANIFEST
    if not path.is_file():
        if (cache_dir / PARTS / BUILD).is_file():
            raise UserError(
                f"{cache_dir}: cache is not complete (no {MANIFEST}); rerun the same `kamim cache` command to "
                f"resume it, or `kamim cache finalize {cache_dir}` once all partitions have finished"
            )
        raise UserError(f"{cache_dir}: not a kamim cache (no {MANIFEST}); build one with `kamim cache`")
    manifest = read_json(path)
    if not isinstance(manifest, dict):
        raise UserError(f"{path}: not a kamim manifest (a JSON object expected); rebuild it with `kamim cache`")
    if manifest.get("format_version") != FORMAT_VERSION or manifest.get("format") not in FORMATS:
        raise UserError(
            f"{path}: cache format {manifest.get('format')!r} version {manifest.get('format_version')} is not "
            f"supported (expected version {FORMAT_VERSION}); rebuild it with `kamim cache`"
        )
    bad = [f"{where}.{key}" for where, fields, obj in _required(manifest) for key, kind in fields.items()
           if not isinstance(obj.get(key), kind) or isinstance(obj.get(key), bool)]
    if bad:
        raise UserError(f"{path}: missing or malformed {', '.join(bad)}; rebuild the cache with `kamim cache`")
    return manifest


_FIELDS = {"detector": str, "detect_size": int, "gray": str, "subpixel_steps": int, "dataset": dict,
           "status_counts": dict}
_DATASET_FIELDS = {"name": str, "split": str, "count": int, "fingerprint": str}
_WDS_FIELDS = {"shards": list, "samples": int}


def _required(manifest: dict) -> list[tuple[str, dict, dict]]:
    """(where, {field: type}, the object holding them) for the fields readers rely on."""
    checks = [("manifest", _FIELDS, manifest)]
    if isinstance(manifest.get("dataset"), dict):
        checks.append(("dataset", _DATASET_FIELDS, manifest["dataset"]))
    if manifest.get("format") == "wds":
        checks.append(("manifest", _WDS_FIELDS, manifest))
    return checks


def keypoint_stats(counts: np.ndarray) -> dict:
    """Keypoints-per-image summary over the good images."""
    counts = np.asarray(counts)
    if len(counts) == 0:
        return {"images": 0, "total": 0, "min": 0, "median": 0.0, "p90": 0.0, "max": 0, "mean": 0.0}
    return {
        "images": int(len(counts)),
        "total": int(counts.sum()),
        "min": int(counts.min()),
        "median": float(np.median(counts)),
        "p90": float(np.percentile(counts, 90)),
        "max": int(counts.max()),
        "mean": round(float(counts.mean()), 3),
    }


def rebuild_command(manifest: dict, cache_dir: Path, data_root: str | os.PathLike | None = None,
                    dataset: tuple[str, str] | None = None) -> str:
    """The ``kamim cache`` command that builds this cache again (for ``dataset`` = (name, split) if given),
    with --data-root: ``data_root`` if given, else the root the manifest recorded (absolute), if any."""
    name, split = dataset or (manifest["dataset"]["name"], manifest["dataset"]["split"])
    root = data_root if data_root is not None else manifest.get("data_root")
    root_flag = f" --data-root {shlex.quote(os.fspath(root))}" if root else ""
    return (
        f"kamim cache --dataset {name} --split {split} --detector {manifest['detector']} "
        f"--detect-size {manifest['detect_size']} --format {manifest['format']} --gray {manifest['gray']}"
        f"{root_flag} --out {shlex.quote(os.fspath(cache_dir))}"
    )


def check_dataset(manifest: dict, cache_dir: Path, dataset: Any, data_root: str | os.PathLike | None = None) -> None:
    """UserError unless ``dataset`` has exactly the files (names and sizes) the cache was built from.

    The message tells a *different dataset* (another name, split or data root than the cache records)
    from *files changed* (same dataset, other files), and its command runs as printed: it builds this
    dataset's own cache at its default path (deleting the stale one first only when that is the path).
    """
    expected = manifest["dataset"]
    actual = dataset.fingerprint()
    if actual == expected["fingerprint"] and len(dataset) == expected["count"]:
        return
    from kamim.paths import data_root as resolve_data_root
    from kamim.paths import default_cache_dir

    root_now = os.fspath(resolve_data_root(data_root).resolve())
    root_then = manifest.get("data_root")  # absent in caches built before it was recorded
    other = (expected["name"], expected["split"]) != (dataset.name, dataset.split) or (root_then and root_then != root_now)
    target = default_cache_dir(dataset.name, dataset.split, manifest["detector"], manifest["detect_size"],
                               manifest["format"], manifest["gray"], data_root=data_root)
    command = rebuild_command(manifest, target, data_root, (dataset.name, dataset.split))
    built_there = (target / MANIFEST).is_file() and Path(target).resolve() != Path(cache_dir).resolve()
    if built_there and _fingerprint(target) == actual:
        fix = f"use its own cache: --cache {shlex.quote(os.fspath(target))} (or leave --cache out)"
    elif Path(target).resolve() == Path(cache_dir).resolve() or built_there:
        fix = f"rebuild it: `rm -r {shlex.quote(os.fspath(target))} && {command}`"
    else:
        fix = f"build its own cache: `{command}` (then leave --cache out, or pass --cache {shlex.quote(os.fspath(target))})"
    then = f"{expected['name']}/{expected['split']}" + (f" under data root {root_then}" if root_then else "")
    now = f"{dataset.name}/{dataset.split} at {dataset.location} ({len(dataset)} images, fingerprint {actual})"
    if other:
        raise UserError(f"cache {cache_dir} holds a different dataset: {then} ({expected['count']} images, "
                        f"fingerprint {expected['fingerprint']}), not {now}; {fix}")
    what = "its files changed since the cache was built" if root_then else \
        "its files changed since the cache was built, or the cache was built from another folder"
    raise UserError(f"cache {cache_dir} was built from {then} ({expected['count']} images, fingerprint "
                    f"{expected['fingerprint']}), but the dataset is now {now}: {what}; {fix}")


def _fingerprint(cache_dir: Path) -> str | None:
    try:
        return json.loads((Path(cache_dir) / MANIFEST).read_text())["dataset"]["fingerprint"]
    except (OSError, ValueError, KeyError, TypeError):
        return None
