"""Frozen-encoder features for linear probing: one block's (ViT) or stage's (Swin) output, before any
final norm, pooled to one vector per image; plus the eval transform and an on-disk feature cache.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import nn
from torchvision.transforms import v2
from tqdm import tqdm

from kamim.datasets import read_or_next
from kamim.errors import UserError
from kamim.paths import usual_mode

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
POOLS = ("avg", "cls")
RESIZES = ("crop", "squash")
FEATURE_FORMAT_VERSION = 1


def is_swin(encoder: nn.Module) -> bool:
    return hasattr(encoder, "layers") and not hasattr(encoder, "blocks")


def num_layers(encoder: nn.Module) -> int:
    """Blocks of a ViT, stages of a Swin: the valid --layer values are 1..num_layers."""
    return len(encoder.layers) if is_swin(encoder) else len(encoder.blocks)


def default_layer(encoder: nn.Module) -> int:
    """The original's probe layer: block 8 for ViT (capped by depth), the last stage for Swin."""
    return num_layers(encoder) if is_swin(encoder) else min(8, num_layers(encoder))


def check_layer(encoder: nn.Module, layer: int, pool: str) -> None:
    depth = num_layers(encoder)
    kind = "stages" if is_swin(encoder) else "blocks"
    if not 1 <= layer <= depth:
        raise UserError(f"--layer {layer}: this encoder has {depth} {kind}; use 1..{depth}")
    if pool not in POOLS:
        raise UserError(f"--pool {pool}: use one of {', '.join(POOLS)}")
    if pool == "cls" and (is_swin(encoder) or getattr(encoder, "num_prefix_tokens", 0) < 1):
        raise UserError("--pool cls: this encoder has no CLS token (Swin); use --pool avg")


@torch.no_grad()
def layer_features(encoder: nn.Module, images: torch.Tensor, layer: int, pool: str = "avg") -> torch.Tensor:
    """[B, D] features of normalised images from block/stage ``layer`` (1-based), before any final norm.

    ViT: ``avg`` is the mean over patch tokens (CLS and other prefix tokens dropped), ``cls`` the CLS
    token. Swin: the mean over the stage's spatial map (HF ``hidden_states[layer]`` of the original).
    """
    if is_swin(encoder):
        (fmap,) = encoder.forward_intermediates(
            images, indices=[layer - 1], norm=False, stop_early=True, intermediates_only=True
        )
        return fmap.mean(dim=(2, 3))
    ((patches, prefix),) = encoder.forward_intermediates(
        images, indices=[layer - 1], return_prefix_tokens=True, norm=False, stop_early=True,
        output_fmt="NLC", intermediates_only=True,
    )
    return prefix[:, 0] if pool == "cls" else patches.mean(dim=1)


def eval_transform(img_size: int = 192, resize: str = "crop") -> v2.Compose:
    """uint8 HxWx3 array -> normalised float [3, S, S].

    ``crop``: shorter side to S, centre crop S (keeps the aspect); ``squash``: Resize((S, S)), the
    original's validation transform.
    """
    if resize not in RESIZES:
        raise UserError(f"--resize {resize}: use one of {', '.join(RESIZES)}")
    geometry = (
        [v2.Resize(img_size, antialias=True), v2.CenterCrop(img_size)]
        if resize == "crop"
        else [v2.Resize((img_size, img_size), antialias=True)]
    )
    return v2.Compose([
        v2.ToImage(), *geometry, v2.ToDtype(torch.float32, scale=True), v2.Normalize(IMAGENET_MEAN, IMAGENET_STD)
    ])


class TransformedDataset(torch.utils.data.Dataset):
    """A kamim ImageDataset with a torchvision transform applied to its uint8 arrays."""

    def __init__(self, dataset, transform) -> None:
        self.dataset, self.transform = dataset, transform

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        # A file that cannot be decoded is replaced by the next readable one, image AND label, as
        # pretraining does (a warning names it); so a probe or finetune never dies on one bad file.
        _, image, label = read_or_next(self.dataset, index)
        return self.transform(image), label


def make_loader(dataset, transform, batch_size: int, workers: int, shuffle: bool = False,
                drop_last: bool = False, seed: int = 0, persistent: bool = True) -> torch.utils.data.DataLoader:
    generator = torch.Generator().manual_seed(seed)
    return torch.utils.data.DataLoader(
        TransformedDataset(dataset, transform), batch_size=batch_size, shuffle=shuffle, drop_last=drop_last,
        num_workers=workers, persistent_workers=persistent and workers > 0, generator=generator,
    )


@torch.no_grad()
def extract_features(encoder: nn.Module, dataset, layer: int, pool: str, img_size: int, resize: str,
                     batch_size: int, workers: int, device: torch.device, desc: str = "features",
                     compile_: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """Features [N, D] float32 and labels [N] int64 of every image of ``dataset``, in index order.
    ``compile_`` (--compile): the encoder's forward through torch.compile (cpu/cuda; a last partial batch
    compiles once more)."""
    from kamim.train.compile import compiled

    encoder.eval()
    features_of = compiled(layer_features, compile_ and torch.device(device).type in ("cpu", "cuda"))
    loader = make_loader(dataset, eval_transform(img_size, resize), batch_size, workers)
    features, labels = [], []
    # The bar's ETA is the estimate a user needs: vit_b or swin_t features of photos take minutes on 2 cores
    for images, targets in tqdm(loader, desc=f"{desc} ({len(dataset)} images)", unit="batch", leave=False):
        features.append(features_of(encoder, images.to(device), layer, pool).float().cpu())
        labels.append(targets)
    return torch.cat(features), torch.cat(labels).long()


def weights_digest(module: nn.Module) -> str:
    """SHA-256 of a module's tensors: a cache key that follows the weights, not the file they came from."""
    digest = hashlib.sha256()
    for name, tensor in sorted(module.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()[:24]


def feature_key(encoder: nn.Module, fields: dict) -> str:
    """The file stem of a feature cache: weights digest + everything that changes the features."""
    payload = json.dumps({"weights": weights_digest(encoder), "version": FEATURE_FORMAT_VERSION, **fields},
                         sort_keys=True)
    return hashlib.sha256(payload.encode()).hexdigest()[:20]


def save_features(path: Path, tensors: dict[str, torch.Tensor], metadata: dict) -> None:
    """Atomic write (temp + rename): a killed extraction never leaves a file that looks complete."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(tmp),
              metadata={k: str(v) for k, v in metadata.items()})
    usual_mode(tmp)  # safetensors writes 0600; every other output is 0644
    os.replace(tmp, path)


def load_features(path: Path) -> dict[str, torch.Tensor] | None:
    if not path.is_file():
        return None
    try:
        return load_file(str(path))
    except Exception:  # a corrupt cache is recomputed, never trusted
        return None
