"""Shared helpers for the trainer tests: a tiny real image folder and tiny model settings."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image
from skimage import data as skdata

TINY_VIT = ("depth=1", "embed_dim=32", "num_heads=2")
TINY_VIT_OVERRIDES = {"depth": 1, "embed_dim": 32, "num_heads": 2}


def photo(index: int, height: int = 120, width: int = 160) -> np.ndarray:
    """A real, textured RGB crop (scikit-image's bundled photos), deterministic per index."""
    sources = (skdata.astronaut(), skdata.coffee(), skdata.chelsea(), skdata.rocket())
    source = sources[index % len(sources)]
    top = (index * 37) % (source.shape[0] - height)
    left = (index * 53) % (source.shape[1] - width)
    return np.ascontiguousarray(source[top:top + height, left:left + width, :3])


def make_folder(root: Path, count: int = 8, split: str = "train", size: tuple[int, int] = (120, 160)) -> Path:
    """``root/<split>/<class>/*.png`` with ``count`` photos over two classes; returns ``root``."""
    for i in range(count):
        folder = root / split / f"class{i % 2}"
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(photo(i, *size)).save(folder / f"img{i:03d}.png")
    return root
