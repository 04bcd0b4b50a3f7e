"""Datasets behind one small interface: ``ds[i] -> (uint8 RGB HxWx3 array, label)`` with a stable index.

Every adapter also exposes ``identity()`` (the per-sample names and byte sizes) from which the cache
fingerprint is computed, so a cache can refuse a dataset whose files changed.
"""

from __future__ import annotations

import hashlib
import io
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from kamim.errors import UserError
from kamim.paths import data_root as resolve_data_root

DATASETS = ("photos", "cifar10", "cifar100", "imagenet", "folder")
SPLITS = ("train", "val")
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")
# A file is checked against these before it is read whole (a stray 1 GiB file never fills the RAM):
# larger files are refused; smaller ones must start with an image header. 512 MiB holds any photo
# PIL would decode below its own decompression-bomb limit (~179 Mpx).
MAX_FILE_BYTES = 512 * 2**20
IMAGE_MAGICS = (b"\xff\xd8\xff", b"\x89PNG\r\n\x1a\n", b"GIF87a", b"GIF89a", b"BM", b"II*\x00", b"MM\x00*",
                b"P1", b"P2", b"P3", b"P4", b"P5", b"P6", b"P7")
MIN_IMAGE_SIDE = 8  # smaller images cannot hold a 3-px keypoint ring; treated as bad samples


class BadSampleError(Exception):
    """A sample that cannot be used (unreadable, truncated, not an image, too small, too large)."""

    def __init__(self, name: str, reason: str) -> None:
        super().__init__(f"{name}: {reason}")
        self.name = name
        self.reason = reason


def to_rgb_array(image: Image.Image) -> np.ndarray:
    """Any PIL image (L, LA, P, RGBA, CMYK, I;16, F, ...) as a uint8 RGB HxWx3 array."""
    if image.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        # 16-bit/int/float gray: scale by the actual range rather than clipping to 255 (white).
        values = np.asarray(image, dtype=np.float64)
        if not np.isfinite(values).all():  # NaN/Inf would cast to black (and warn): not a usable picture
            raise BadSampleError("", f"non-finite pixel values ({int((~np.isfinite(values)).sum())} NaN/Inf "
                                     f"in a {image.mode} image)")
        peak = 65535.0 if image.mode.startswith("I;16") else max(float(values.max()), 1.0)
        gray = np.clip(values / peak * 255.0 + 0.5, 0, 255).astype(np.uint8)
        return np.repeat(gray[:, :, None], 3, axis=2)
    if image.mode == "P" and "transparency" in image.info:
        image = image.convert("RGBA")
    if image.mode != "RGB":
        image = image.convert("RGB")
    return np.asarray(image, dtype=np.uint8).copy()


def decode_image(data: bytes | Path | str, name: str | None = None) -> np.ndarray:
    """Decode image bytes (or a file) to uint8 RGB, raising BadSampleError with a reason if unusable."""
    name = name or (str(data) if isinstance(data, (str, Path)) else "<bytes>")
    try:
        if isinstance(data, (str, Path)):
            data = read_image_file(Path(data), name)
        if len(data) == 0:
            raise BadSampleError(name, "zero-byte file")
        if not has_image_magic(data[:16]):
            raise BadSampleError(name, "not an image (no known image header)")
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as image:
                image.load()
                array = to_rgb_array(image)
    except BadSampleError as error:
        if error.name:
            raise
        raise BadSampleError(name, error.reason) from None
    except (Image.DecompressionBombWarning, Image.DecompressionBombError) as error:
        raise BadSampleError(name, f"image too large ({error})") from None
    except UnidentifiedImageError:
        raise BadSampleError(name, "not an image") from None
    except (OSError, SyntaxError, ValueError) as error:
        raise BadSampleError(name, f"unreadable or truncated ({error})") from None
    if min(array.shape[:2]) < MIN_IMAGE_SIDE:
        raise BadSampleError(name, f"too small ({array.shape[1]}x{array.shape[0]})")
    return array


def has_image_magic(head: bytes) -> bool:
    """Whether ``head`` (a file's first bytes) starts like an image format PIL reads for us."""
    return head.startswith(IMAGE_MAGICS) or (head[:4] == b"RIFF" and head[8:12] == b"WEBP")


def read_image_file(path: Path, name: str) -> bytes:
    """A file's bytes, after checking its size and header, so a huge or non-image file is never read whole."""
    try:
        size = path.stat().st_size
    except OSError as error:
        raise BadSampleError(name, f"unreadable ({error.strerror})") from None
    if size > MAX_FILE_BYTES:
        raise BadSampleError(name, f"file too large ({size / 2**20:.0f} MiB > {MAX_FILE_BYTES // 2**20} MiB): "
                                   f"not read")
    with open(path, "rb") as handle:
        head = handle.read(16)
        if head and not has_image_magic(head):
            raise BadSampleError(name, "not an image (no known image header)")
        return head + handle.read()


def read_or_next(dataset: ImageDataset, index: int, usable: Callable[[int], bool] | None = None
                 ) -> tuple[int, np.ndarray, int]:
    """``(used index, image, label)``: sample ``index``, or, if it cannot be decoded, the next readable
    one (in index order, wrapping; ``usable`` may rule indices out). Deterministic, so a resumed run and
    any worker count substitute alike; the label and anything else looked up by the returned index
    belong to the image actually returned. Warns once per bad file, naming it."""
    count = len(dataset)
    for step in range(count):
        candidate = (index + step) % count
        if step and usable is not None and not usable(candidate):
            continue
        try:
            image, label = dataset[candidate]
            return candidate, image, label
        except BadSampleError as error:
            warnings.warn(f"bad sample {error}; using the next readable image instead", stacklevel=2)
    raise UserError(f"{dataset.describe()}: no readable image (every file failed to decode)")


def fingerprint_of(identity: Sequence[tuple[str, int]]) -> str:
    """SHA-256 over the ordered (name, size) list: changes when any file is added, removed or resized."""
    digest = hashlib.sha256()
    for name, size in identity:
        digest.update(f"{name}\t{size}\n".encode())
    return digest.hexdigest()[:32]


class ImageDataset:
    """Base class: subclasses fill ``name``, ``split``, ``classes``, ``location`` and the three methods."""

    name: str
    split: str
    classes: list[str]
    location: Path

    def __len__(self) -> int:
        raise NotImplementedError

    def __getitem__(self, index: int) -> tuple[np.ndarray, int]:
        raise NotImplementedError

    def label(self, index: int) -> int:
        raise NotImplementedError

    def identity(self) -> list[tuple[str, int]]:
        raise NotImplementedError

    def fingerprint(self) -> str:
        return fingerprint_of(self.identity())

    def sample_name(self, index: int) -> str:
        return self.identity()[index][0]

    def describe(self) -> str:
        return f"{self.name}/{self.split} ({len(self)} images, {len(self.classes)} classes) at {self.location}"


class ImageFolderDataset(ImageDataset):
    """``ROOT/<class>/<image>`` with classes and files sorted by name (torchvision's ImageFolder order)."""

    def __init__(self, root: str | Path, name: str = "folder", split: str = "train") -> None:
        self.location = Path(root)
        self.name, self.split = name, split
        if not self.location.is_dir():
            raise UserError(
                f"dataset '{name}' split '{split}': no directory {self.location}; expected "
                f"{self.location}/<class>/<image files> (set --data-root or KAMIM_DATA_ROOT)"
            )
        self.classes = sorted(p.name for p in self.location.iterdir() if p.is_dir() and not p.name.startswith("."))
        self.files: list[Path] = []
        self.labels: list[int] = []
        for label, cls in enumerate(self.classes):
            for path in sorted((self.location / cls).iterdir()):
                if path.is_file() and path.suffix.lower() in IMAGE_EXTENSIONS:
                    self.files.append(path)
                    self.labels.append(label)
        if not self.files:
            raise UserError(
                f"dataset '{name}' split '{split}': no images under {self.location}/<class>/ "
                f"(extensions {', '.join(IMAGE_EXTENSIONS)})"
            )
        self._identity: list[tuple[str, int]] | None = None

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, index: int) -> tuple[np.ndarray, int]:
        path = self.files[index]
        return decode_image(path, name=str(path.relative_to(self.location))), self.labels[index]

    def label(self, index: int) -> int:
        return self.labels[index]

    def read_bytes(self, index: int) -> bytes:
        return self.files[index].read_bytes()

    def identity(self) -> list[tuple[str, int]]:
        if self._identity is None:
            self._identity = [
                (str(p.relative_to(self.location)), p.stat().st_size) for p in self.files
            ]
        return self._identity

    def sample_name(self, index: int) -> str:
        return str(self.files[index].relative_to(self.location))


_CIFAR_LAYOUT = {
    # name: (folder, train files, val files, label key)
    "cifar10": ("cifar-10-batches-py", [f"data_batch_{i}" for i in range(1, 6)], ["test_batch"], b"labels"),
    "cifar100": ("cifar-100-python", ["train"], ["test"], b"fine_labels"),
}


class CifarDataset(ImageDataset):
    """torchvision's on-disk CIFAR-10/100 python batches, read as plain data (kamim.safe_pickle: no pickle module)."""

    def __init__(self, data_root: str | Path, name: str = "cifar10", split: str = "train") -> None:
        from kamim.safe_pickle import load_plain_pickle

        folder, train_files, val_files, label_key = _CIFAR_LAYOUT[name]
        self.name, self.split = name, split
        self.location = Path(data_root) / folder
        files = train_files if split == "train" else val_files
        missing = [f for f in files if not (self.location / f).is_file()]
        if missing:
            raise UserError(
                f"{name}: missing {self.location / missing[0]}; extract torchvision's CIFAR archive so that "
                f"{self.location}/ holds {', '.join(files)} (nothing is downloaded)"
            )
        images, labels, self._identity = [], [], []
        for f in files:
            path = self.location / f
            batch = load_plain_pickle(path)
            try:
                data = np.asarray(batch[b"data"], dtype=np.uint8).reshape(-1, 3, 32, 32)
                batch_labels = list(batch[label_key])
            except (KeyError, ValueError, TypeError) as error:
                raise UserError(f"{path}: not a CIFAR batch file ({error}); re-extract the archive") from None
            images.append(data.transpose(0, 2, 3, 1))
            labels.extend(int(x) for x in batch_labels)
            self._identity.append((f, path.stat().st_size))
        self.images = np.ascontiguousarray(np.concatenate(images))
        self.labels = labels
        meta_file, meta_key = ("batches.meta", b"label_names") if name == "cifar10" else ("meta", b"fine_label_names")
        meta_path = self.location / meta_file
        if meta_path.is_file():
            names = load_plain_pickle(meta_path)[meta_key]
            self.classes = [n.decode() if isinstance(n, bytes) else str(n) for n in names]
        else:
            self.classes = [str(i) for i in range(max(labels) + 1)]

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> tuple[np.ndarray, int]:
        return self.images[index].copy(), self.labels[index]

    def label(self, index: int) -> int:
        return self.labels[index]

    def identity(self) -> list[tuple[str, int]]:
        # The batch files identify the dataset; per-sample names are their index.
        return list(self._identity)

    def sample_name(self, index: int) -> str:
        return f"{self.name}[{self.split}][{index}]"


def canonical_split(split: str) -> str:
    split = {"test": "val", "validation": "val"}.get(split, split)
    if split not in SPLITS:
        raise UserError(f"unknown split '{split}'; use one of: {', '.join(SPLITS)}")
    return split


def open_dataset(name: str, split: str = "train", data_root: str | Path | None = None) -> ImageDataset:
    """Open a dataset by name. ``photos`` is materialised under the data root on first use."""
    root = resolve_data_root(data_root)
    split = canonical_split(split)
    if name == "photos":
        from kamim.photos import ensure_photos

        return ImageFolderDataset(ensure_photos(root) / split, name="photos", split=split)
    if name in _CIFAR_LAYOUT:
        return CifarDataset(root, name=name, split=split)
    if name == "imagenet":
        return ImageFolderDataset(root / "imagenet" / split, name="imagenet", split=split)
    if name == "folder":
        return ImageFolderDataset(root / split, name="folder", split=split)
    raise UserError(f"unknown dataset '{name}'; use one of: {', '.join(DATASETS)}")
