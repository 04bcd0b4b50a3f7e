"""The embedded ``photos`` dataset: random crops of the colour photographs bundled with scikit-image and
scikit-learn, labelled by source photo. Built deterministically once under the data root, then read
through the ordinary image-folder code path.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
from PIL import Image

from kamim.errors import UserError

PHOTOS_VERSION = 1
SEED = 20240718
COUNTS = {"train": 2000, "val": 500}
OUTPUT_SHORT_SIDE = 224
JPEG_QUALITY = 90

# (class name, package, file inside the package's data folder). Only files shipped inside the wheels:
# scikit-image fetches some of its sample images from the network, and those are never used.
SOURCES = (
    ("astronaut", "skimage", "astronaut.png"),
    ("chelsea", "skimage", "chelsea.png"),
    ("coffee", "skimage", "coffee.png"),
    ("rocket", "skimage", "rocket.jpg"),
    ("hubble", "skimage", "hubble_deep_field.jpg"),
    ("ihc", "skimage", "ihc.png"),
    ("motorcycle", "skimage", "motorcycle_left.png"),
    ("retina", "skimage", "retina.jpg"),
    ("china", "sklearn", "china.jpg"),
    ("flower", "sklearn", "flower.jpg"),
)


def _source_path(package: str, filename: str) -> Path:
    if package == "skimage":
        import skimage.data

        return Path(skimage.data.__file__).parent / filename
    import sklearn.datasets

    return Path(sklearn.datasets.__file__).parent / "images" / filename


def load_sources() -> list[tuple[str, np.ndarray]]:
    """The source photographs as (class name, uint8 RGB array), in a fixed order."""
    sources = []
    for cls, package, filename in SOURCES:
        path = _source_path(package, filename)
        if not path.is_file():
            raise UserError(f"photos: bundled image {path} is missing; reinstall with `make install`")
        with Image.open(path) as image:
            sources.append((cls, np.asarray(image.convert("RGB"))))
    return sources


def random_crop_box(height: int, width: int, rng: np.random.Generator,
                    area: tuple[float, float]) -> tuple[int, int, int, int]:
    """(top, left, crop height, crop width): a fraction ``area`` of the photo, aspect 3/4 to 4/3."""
    target = height * width * rng.uniform(*area)
    aspect = np.exp(rng.uniform(np.log(3 / 4), np.log(4 / 3)))
    crop_w = int(min(width, round(np.sqrt(target * aspect))))
    crop_h = int(min(height, round(np.sqrt(target / aspect))))
    top = int(rng.integers(0, height - crop_h + 1))
    left = int(rng.integers(0, width - crop_w + 1))
    return top, left, crop_h, crop_w


def crop_resized(photo: np.ndarray, box: tuple[int, int, int, int], short_side: int) -> Image.Image:
    """The crop ``box`` of ``photo``, resized (bicubic) so its shorter side is ``short_side``."""
    top, left, crop_h, crop_w = box
    scale = short_side / min(crop_w, crop_h)
    size = (max(1, round(crop_w * scale)), max(1, round(crop_h * scale)))
    return Image.fromarray(photo[top : top + crop_h, left : left + crop_w]).resize(size, Image.Resampling.BICUBIC)


def _random_crop(photo: np.ndarray, rng: np.random.Generator) -> Image.Image:
    box = random_crop_box(*photo.shape[:2], rng, area=(0.08, 0.4))
    return crop_resized(photo, box, OUTPUT_SHORT_SIDE)


def build_photos(out_dir: Path, counts: dict[str, int] | None = None) -> None:
    """Write ``out_dir/{train,val}/<class>/<index>.jpg`` and ``out_dir/MANIFEST.json``."""
    counts = counts or COUNTS
    sources = load_sources()
    for split_index, (split, count) in enumerate(counts.items()):
        rng = np.random.default_rng([SEED, split_index])
        for cls, _ in sources:
            (out_dir / split / cls).mkdir(parents=True, exist_ok=True)
        for index in range(count):
            cls, photo = sources[index % len(sources)]
            _random_crop(photo, rng).save(out_dir / split / cls / f"{index:05d}.jpg", quality=JPEG_QUALITY)
    manifest = {"version": PHOTOS_VERSION, "seed": SEED, "counts": counts, "classes": [s[0] for s in SOURCES]}
    (out_dir / "MANIFEST.json").write_text(json.dumps(manifest, indent=2) + "\n")


def _is_complete(path: Path) -> bool:
    manifest = path / "MANIFEST.json"
    if not manifest.is_file():
        return False
    try:
        return json.loads(manifest.read_text()).get("version") == PHOTOS_VERSION
    except json.JSONDecodeError:
        return False


def ensure_photos(data_root: Path) -> Path:
    """Return ``data_root/photos``, building it first (atomically: temp dir + rename) if absent."""
    target = Path(data_root) / "photos"
    if _is_complete(target):
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.parent / f".photos.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    print(f"kamim: building the embedded 'photos' dataset in {target} (once, about 10 s)", flush=True)
    build_photos(tmp)
    if target.exists() and not _is_complete(target):
        shutil.rmtree(target)  # a stale or foreign version
    try:
        os.rename(tmp, target)
    except OSError:
        # Another process finished first; its copy is identical by construction.
        shutil.rmtree(tmp, ignore_errors=True)
        if not _is_complete(target):
            raise
    return target
