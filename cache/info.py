"""``kamim cache info``: a human summary of a complete cache."""

from __future__ import annotations

import json
from pathlib import Path

from kamim.cache.manifest import ERRORS, read_manifest


def disk_bytes(path: Path) -> int:
    if path.is_file():
        return path.stat().st_size
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def describe(cache_dir: Path, max_errors: int = 10) -> str:
    manifest = read_manifest(cache_dir)
    ds, counts, kp = manifest["dataset"], manifest["status_counts"], manifest["keypoints_per_image"]
    ok = max(counts["ok"], 1)
    total = disk_bytes(cache_dir)
    lines = [
        f"cache       {cache_dir} ({manifest['format']}, format version {manifest['format_version']})",
        f"dataset     {ds['name']}/{ds['split']}: {ds['count']} images, fingerprint {ds['fingerprint']}",
        f"detector    {manifest['detector']} {json.dumps(manifest['detector_params'], sort_keys=True)}, "
        f"gray {manifest['gray']}, detect size {manifest['detect_size']}, OpenCV {manifest['opencv']}",
        "status      " + ", ".join(f"{k} {v}" for k, v in counts.items()),
        f"keypoints   per image: min {kp['min']}, median {kp['median']:g}, p90 {kp['p90']:g}, "
        f"max {kp['max']}, mean {kp['mean']:g}; total {kp['total']}",
        f"size        {total / 2**20:.2f} MiB on disk, {total / ok:.0f} bytes/image",
    ]
    if manifest["format"] == "zarr":
        points = disk_bytes(cache_dir / "points")
        lines.append(
            f"points      {points / ok:.0f} bytes/image ({points / max(kp['total'], 1):.2f} bytes/keypoint)"
        )
    else:
        lines.append(f"shards      {len(manifest['shards'])} ({manifest['samples']} samples, store size "
                     f"{manifest['store_size'] or 'original'})")  # fmt: skip
    errors_path = cache_dir / ERRORS
    errors = (
        [json.loads(line) for line in errors_path.read_text().splitlines()] if errors_path.is_file() else []
    )
    lines.append(f"errors      {len(errors)}" + (f" (in {errors_path})" if errors else ""))
    lines += [f"  [{e['index']}] {e['name']}: {e['reason']}" for e in errors[:max_errors]]
    if len(errors) > max_errors:
        lines.append(f"  ... and {len(errors) - max_errors} more")
    return "\n".join(lines)
