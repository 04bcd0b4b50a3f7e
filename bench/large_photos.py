"""ImageNet-sized photos for the benchmarks: random crops of the bundled photographs, resized so the
shorter side is 500-800 px, written once (deterministically) as an image folder under data/bench-large/.

Read it as ``open_dataset("folder", split, data_root="data/bench-large")``.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
from PIL import Image

from kamim.datasets import ImageFolderDataset, open_dataset
from kamim.photos import crop_resized, load_sources, random_crop_box

VERSION = 1
SEED = 7_500_800
COUNTS = {"train": 300, "val": 80}
SHORT_SIDE = (500, 800)
JPEG_QUALITY = 90
DEFAULT_ROOT = Path("data/bench-large")


def _crop(photo: np.ndarray, rng: np.random.Generator) -> Image.Image:
    box = random_crop_box(*photo.shape[:2], rng, area=(0.35, 1.0))
    return crop_resized(photo, box, int(rng.integers(SHORT_SIDE[0], SHORT_SIDE[1] + 1)))


def _write(out: Path) -> None:
    sources = load_sources()
    for split_index, (split, count) in enumerate(COUNTS.items()):
        rng = np.random.default_rng([SEED, split_index])
        for index in range(count):
            cls, photo = sources[index % len(sources)]
            (out / split / cls).mkdir(parents=True, exist_ok=True)
            _crop(photo, rng).save(out / split / cls / f"{index:05d}.jpg", quality=JPEG_QUALITY)
    manifest = {"version": VERSION, "seed": SEED, "counts": COUNTS, "short_side": list(SHORT_SIDE)}
    (out / "MANIFEST.json").write_text(json.dumps(manifest, indent=2) + "\n")


def _complete(root: Path) -> bool:
    try:
        return json.loads((root / "MANIFEST.json").read_text()).get("version") == VERSION
    except (OSError, json.JSONDecodeError):
        return False


def ensure_large_photos(root: Path = DEFAULT_ROOT) -> Path:
    """Return ``root`` (an image folder with train/ and val/), writing it first if absent (temp + rename)."""
    root = Path(root)
    if _complete(root):
        return root
    print(f"bench: writing {sum(COUNTS.values())} ImageNet-sized photos to {root} (once)", flush=True)
    tmp = root.parent / f".{root.name}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    _write(tmp)
    shutil.rmtree(root, ignore_errors=True)
    os.rename(tmp, root)
    return root


def open_large(split: str = "train", root: Path = DEFAULT_ROOT) -> ImageFolderDataset:
    return open_dataset("folder", split, data_root=ensure_large_photos(root))


if __name__ == "__main__":
    ds = open_large("train")
    sides = [Image.open(p).size for p in ds.files[:20]]
    print(ds.describe(), "e.g.", sides[:5])
