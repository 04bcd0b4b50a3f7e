"""Tiny real image-folder datasets (crops of scikit-image's photos) for the cache tests."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import skimage.data
from PIL import Image


def _photos() -> list[np.ndarray]:
    return [skimage.data.astronaut(), skimage.data.chelsea(), skimage.data.coffee()]


def make_folder_dataset(root: Path, per_class: int = 8, split: str = "train", seed: int = 0) -> Path:
    """``root/<split>/<class>/<i>.{jpg,png}``: random crops (40..130 px sides) of real photos."""
    rng = np.random.default_rng(seed)
    for label, photo in enumerate(_photos()):
        folder = root / split / f"class{label}"
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            h, w = (int(v) for v in rng.integers(40, 130, size=2))
            top = int(rng.integers(0, photo.shape[0] - h))
            left = int(rng.integers(0, photo.shape[1] - w))
            crop = Image.fromarray(photo[top : top + h, left : left + w])
            suffix = ".png" if i % 4 == 3 else ".jpg"
            crop.save(folder / f"{i:03d}{suffix}", quality=90)
    return root


BAD_FILES = {
    "zero.jpg": "zero-byte",
    "truncated.jpg": "truncated",
    "text.jpg": "not an image",
    "tiny.png": "too small",
    "garbage.jpg": "not an image",
}


def add_bad_files(root: Path, split: str = "train", cls: str = "class1") -> dict[str, str]:
    """Unusable files next to good ones; returns {relative name: expected words in the reason}."""
    folder = root / split / cls
    folder.mkdir(parents=True, exist_ok=True)
    jpeg = io.BytesIO()
    Image.fromarray(skimage.data.astronaut()[:200, :200]).save(jpeg, format="JPEG", quality=90)
    (folder / "zero.jpg").write_bytes(b"")
    (folder / "truncated.jpg").write_bytes(jpeg.getvalue()[: len(jpeg.getvalue()) // 3])
    (folder / "text.jpg").write_text("this is not an image\n")
    Image.new("RGB", (1, 1), (200, 10, 10)).save(folder / "tiny.png")
    (folder / "garbage.jpg").write_bytes(b"\x00\x01garbage" * 50)
    return {f"{cls}/{name}": reason for name, reason in BAD_FILES.items()}


def tree_bytes(directory: Path) -> dict[str, bytes]:
    """Every file under ``directory`` (relative path -> bytes), to compare two builds byte for byte."""
    return {
        str(p.relative_to(directory)): p.read_bytes() for p in sorted(directory.rglob("*")) if p.is_file()
    }
