"""The manifest (what a cache is, written last: its presence means the cache is complete) and helpers."""

from __future__ import annotations

import json
import os
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


def rebuild_command(manifest: dict, cache_dir: Path) -> str:
    ds = manifest["dataset"]
    return (
        f"kamim cache --dataset {ds['name']} --split {ds['split']} --detector {manifest['detector']} "
        f"--detect-size {manifest['detect_size']} --format {manifest['format']} --gray {manifest['gray']} "
        f"--out {cache_dir}"
    )


def check_dataset(manifest: dict, cache_dir: Path, dataset: Any) -> None:
    """UserError unless ``dataset`` has exactly the files (names and sizes) the cache was built from."""
    expected = manifest["dataset"]
    actual = dataset.fingerprint()
    if actual == expected["fingerprint"] and len(dataset) == expected["count"]:
        return
    raise UserError(
        f"cache {cache_dir} was built for {expected['name']}/{expected['split']} with fingerprint "
        f"{expected['fingerprint']} ({expected['count']} images), but dataset {dataset.name}/{dataset.split} at "
        f"{dataset.location} has fingerprint {actual} ({len(dataset)} images): its files changed; rebuild with "
        f"`{rebuild_command(manifest, cache_dir)}` (delete the old cache first)"
    )
