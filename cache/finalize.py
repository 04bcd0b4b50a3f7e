"""Join finished block files into the final cache and write the manifest last (its presence = complete)."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np

from kamim.cache.manifest import (
    BUILD,
    ERRORS,
    MANIFEST,
    PARTS,
    STATUS_NAMES,
    STATUS_OK,
    atomic_write,
    json_bytes,
    keypoint_stats,
    read_json,
)
from kamim.cache.parts import block_path, describe_ranges, finished_blocks, read_block, remove_stale_temps
from kamim.cache.wds_store import SHARD_NAME
from kamim.cache.zarr_store import write_zarr
from kamim.errors import UserError


def missing_blocks(out: Path, num_blocks: int) -> list[int]:
    return sorted(set(range(num_blocks)) - finished_blocks(out / PARTS))


def finalize(out: str | os.PathLike) -> Path:
    """Assemble ``out/parts/`` into the cache at ``out``; UserError (listing them) if blocks are missing."""
    out = Path(out)
    parts = out / PARTS
    if (out / MANIFEST).is_file():  # already finalized (the manifest lands last); a killed cleanup may remain
        shutil.rmtree(parts, ignore_errors=True)
        return out
    if not (parts / BUILD).is_file():
        raise UserError(
            f"{out}: no {PARTS}/{BUILD}, so no cache build to finalize; start one with `kamim cache`"
        )
    build = read_json(parts / BUILD)
    num_blocks = int(build["num_blocks"])
    missing = missing_blocks(out, num_blocks)
    if missing:
        raise UserError(
            f"{out}: {len(missing)} of {num_blocks} blocks are not built yet (blocks {describe_ranges(missing)}); "
            f"run the partitions that own them (same `kamim cache` options), then `kamim cache finalize {out}`"
        )
    counts, statuses, errors = [], [], []
    for index in range(num_blocks):
        with np.load(block_path(parts, index), allow_pickle=False) as data:
            counts.append(data["counts"])
            statuses.append(data["status"])
            errors.extend(json.loads(data["errors"].tobytes().decode()))
    counts_all, status_all = np.concatenate(counts), np.concatenate(statuses)
    num_images = int(build["dataset"]["count"])
    if len(counts_all) != num_images:
        raise UserError(
            f"{out}: blocks hold {len(counts_all)} images, expected {num_images}; delete {out} and rebuild"
        )
    remove_stale_temps(out, {ERRORS, MANIFEST})  # left by a finalize that was killed before its renames
    errors_text = "".join(json.dumps(e, sort_keys=True) + "\n" for e in errors)
    atomic_write(out / ERRORS, errors_text.encode())
    ok = status_all == STATUS_OK
    if not ok.any():
        raise UserError(
            f"every one of the {num_images} samples failed (reasons in {out / ERRORS}, first: "
            f"{errors[0]['name']}: {errors[0]['reason']}); check the dataset at its data root"
        )

    manifest = dict(build)
    manifest["status_counts"] = {name: int((status_all == code).sum()) for code, name in STATUS_NAMES.items()}
    manifest["keypoints_per_image"] = keypoint_stats(counts_all[ok])
    if build["format"] == "zarr":
        write_zarr(out, (read_block(parts, i) for i in range(num_blocks)), num_images, int(counts_all.sum()))
        manifest["arrays"] = {
            "offsets": "int64 [N+1]: image i's points are points[offsets[i]:offsets[i+1]]",
            "points": "uint16 [M,2] delta codes of (x, y) at detect size (see kamim.cache.points)",
            "scale": "float64 [N,2] (sx, sy) = detect-size pixels per source pixel",
            "status": "uint8 [N] " + ", ".join(f"{k}={v}" for k, v in STATUS_NAMES.items()),
        }
        if build.get("point_attrs"):  # a selection cache (kamim.cache.select): attributes beside the points
            from kamim.cache.attrs_store import ATTRS_FILE, write_attrs

            count, crc32c = write_attrs(out, (read_block(parts, i) for i in range(num_blocks)),
                                        int(counts_all.sum()))
            manifest["point_attrs"] = {**build["point_attrs"], "count": count, "crc32c": crc32c}
            manifest["arrays"][ATTRS_FILE] = "uint16 [M] per-point attributes in points order (kamim.cache.select)"
    else:
        block_ok = [int((s == STATUS_OK).sum()) for s in statuses]
        shards = [(SHARD_NAME.format(i), n) for i, n in enumerate(block_ok) if n]
        absent = [name for name, _ in shards if not (out / name).is_file()]
        if absent:
            raise UserError(f"{out}: shard files missing ({', '.join(absent[:5])}); delete {out} and rebuild")
        manifest["shards"] = [name for name, _ in shards]
        manifest["shard_samples"] = [n for _, n in shards]
        manifest["samples"] = int(ok.sum())
    atomic_write(out / MANIFEST, json_bytes(manifest))
    shutil.rmtree(parts, ignore_errors=True)
    return out
