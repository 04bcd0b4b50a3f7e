"""What every analysis starts from: labelled pretrained models and a fixed, class-balanced image set."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD

from kamim.datasets import BadSampleError, open_dataset
from kamim.errors import UserError
from kamim.train.checkpoint import load_pretrained
from kamim.train.models import MIMModel

EVAL_CROP_PCT = 0.875  # timm's eval transform: resize to size / 0.875, centre crop (192 -> 219 -> 192)


@dataclass
class LabelledModel:
    label: str
    model: MIMModel
    info: dict
    img_size: int


@dataclass
class ImageSet:
    indices: list[int]
    labels: list[int]
    classes: list[str]
    sources: list[np.ndarray]  # the decoded uint8 RGB images, transformed per model size on demand


def default_label(path: Path) -> str:
    """Run dir name for a run dir or its export/checkpoint; file stem otherwise."""
    if path.is_dir():
        return path.resolve().name
    if path.name == "model.safetensors":
        return path.resolve().parent.name
    if path.parent.name == "checkpoints":
        return f"{path.resolve().parent.parent.name}:{path.stem}"
    return path.stem


def load_models(checkpoints: list[str], labels: list[str], device: torch.device) -> list[LabelledModel]:
    if not checkpoints:
        raise UserError("give at least one --checkpoint RUN_DIR|FILE")
    if labels and len(labels) != len(checkpoints):
        raise UserError(f"{len(labels)} --label for {len(checkpoints)} --checkpoint; give one label each or none")
    names = labels or [default_label(Path(c)) for c in checkpoints]
    if len(set(names)) != len(names):
        names = [f"{i + 1}:{n}" for i, n in enumerate(names)]
    loaded = []
    for name, path in zip(names, checkpoints, strict=True):
        model, info = load_pretrained(path)
        loaded.append(LabelledModel(name, model.to(device).eval(), info, int(info.get("img_size", 192))))
    return loaded


def require_vit(models: list[LabelledModel], analysis: str) -> None:
    for m in models:
        if m.model.family != "vit":
            raise UserError(f"{analysis} needs a ViT checkpoint; '{m.label}' is {m.info.get('model')} "
                            "(Swin has windowed attention and no CLS token)")


def spread_indices(count: int, total: int) -> list[int]:
    """``count`` indices evenly spread over the dataset (folders are sorted by class, so this samples
    every class rather than the first one)."""
    if count <= 0:
        raise UserError(f"--num-images must be positive, got {count}")
    count = min(count, total)
    return sorted({int(round(i)) for i in np.linspace(0, total - 1, count)})


def load_images(dataset: str, split: str, data_root: str | None, count: int) -> ImageSet:
    ds = open_dataset(dataset, split, data_root)
    indices, sources, labels = [], [], []
    for index in spread_indices(count, len(ds)):
        try:
            image, label = ds[index]
        except BadSampleError as error:
            print(f"skipping bad sample {error}")
            continue
        indices.append(index)
        sources.append(image)
        labels.append(label)
    if not sources:
        raise UserError(f"no readable images in {dataset}/{split}")
    return ImageSet(indices, labels, list(ds.classes), sources)


def transform(image: np.ndarray, size: int, mode: str) -> torch.Tensor:
    """uint8 RGB -> normalised [3,size,size]. ``resize``: squash to size x size (the reconstruction
    notebook); ``center``: shorter side to size/0.875 then centre crop (the representation notebooks)."""
    pil = Image.fromarray(image)
    if mode == "resize":
        pil = pil.resize((size, size), Image.Resampling.BILINEAR)
    else:
        short = int(size / EVAL_CROP_PCT)
        scale = short / min(pil.size)
        pil = pil.resize((max(short, round(pil.width * scale)), max(short, round(pil.height * scale))),
                         Image.Resampling.BILINEAR)
        left, top = (pil.width - size) // 2, (pil.height - size) // 2
        pil = pil.crop((left, top, left + size, top + size))
    array = torch.from_numpy(np.asarray(pil, dtype=np.float32) / 255.0).permute(2, 0, 1)
    mean = torch.tensor(IMAGENET_DEFAULT_MEAN).view(3, 1, 1)
    std = torch.tensor(IMAGENET_DEFAULT_STD).view(3, 1, 1)
    return (array - mean) / std


def image_batches(images: ImageSet, size: int, mode: str, batch_size: int):
    """Yield ``[B,3,size,size]`` normalised batches in a fixed order."""
    for start in range(0, len(images.sources), batch_size):
        chunk = images.sources[start : start + batch_size]
        yield torch.stack([transform(image, size, mode) for image in chunk])


def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise UserError("--device cuda: no CUDA device is visible; use --device cpu")
    return torch.device(name)
