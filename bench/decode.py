"""JPEG decode on the device (what `kamim pretrain --decode device` does in the step): would it feed the GPU?

- pixels: torchvision.io.decode_jpeg on the device (nvJPEG on CUDA, libjpeg on the CPU) against PIL (what
  the loader uses), on the ImageNet-sized bench photos; then the same crop (train.augment.crop_image: the
  original's bilinear resize without antialias) on both;
- device rate: one batch of JPEG bytes decoded (batched) and cropped on the device, img/s;
- feed rate: loader workers that only read the bytes and draw the crop (what a device-decode loader
  would leave to the CPU), img/s at the trainer's worker count.

    python -m bench.decode --quick     # CPU here: decode_jpeg's pixels equal PIL's (libjpeg both)
"""

from __future__ import annotations

import io
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import click
import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset

from .caches import Source, source
from .common import cores, log, median, start, write_result
from .pipelines import loader_rate


def jpeg_bytes(path: Any) -> torch.Tensor:
    return torch.frombuffer(bytearray(Path(path).read_bytes()), dtype=torch.uint8)


def decode_on(datas: list[torch.Tensor], device: torch.device) -> list[torch.Tensor]:
    """uint8 [3,H,W] RGB per JPEG, decoded on ``device`` (one batched call on CUDA)."""
    from torchvision.io import ImageReadMode, decode_jpeg

    out = decode_jpeg(datas, mode=ImageReadMode.RGB, device=device)
    return list(out) if isinstance(out, (list, tuple)) else [out]


def pil_decode(data: torch.Tensor) -> torch.Tensor:
    from kamim.datasets import decode_image

    return torch.from_numpy(decode_image(data.numpy().tobytes())).permute(2, 0, 1)


def crops_for(images: list[torch.Tensor], seed: int = 0) -> list:
    from kamim.train.augment import sample_crop, seeded

    with seeded(seed):
        return [sample_crop(img.shape[-2], img.shape[-1], 192) for img in images]


def crop_all(images: list[torch.Tensor], crops: list, size: int = 192) -> torch.Tensor:
    from kamim.train.augment import crop_image

    return torch.stack([crop_image(img, crop, size) for img, crop in zip(images, crops, strict=True)])


def pixel_difference(datas: list[torch.Tensor], device: torch.device) -> dict[str, float]:
    """Device decode vs PIL: |difference| of the full images and of the 192-px training crops."""
    ours = [img.cpu() for img in decode_on(datas, device)]
    theirs = [pil_decode(d) for d in datas]
    full = torch.cat([(a.int() - b.int()).abs().flatten() for a, b in zip(ours, theirs, strict=True)])
    crops = crops_for(theirs)
    cropped = (crop_all(ours, crops).int() - crop_all(theirs, crops).int()).abs()
    return {"full_max": int(full.max()), "full_mean": float(full.float().mean()),
            "full_share_differing": float((full > 0).float().mean()),
            "crop_max": int(cropped.max()), "crop_mean": float(cropped.float().mean())}


def device_rate(datas: list[torch.Tensor], batch: int, device, repetitions: int = 3) -> float:  # noqa: ANN001
    """Images/s of batched decode + crop + flips on the device (bytes already in host memory)."""
    tiled = [datas[i % len(datas)] for i in range(batch)]
    times = []
    for _ in range(repetitions + 1):
        began = time.perf_counter()
        images = decode_on(tiled, device.device)
        crop_all(images, crops_for(images))
        device.synchronize()
        times.append(time.perf_counter() - began)
    return batch / median(times[1:])


class ByteSamples(Dataset):
    """What a device-decode loader leaves to a worker: the file's bytes, its size from the header, one
    crop box and flips drawn, the mask."""

    def __init__(self, files: list) -> None:
        self.files = files

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, index: int) -> dict[str, Any]:
        from kamim.train.augment import sample_crop, sample_seed, seeded
        from kamim.train.masking import random_mask

        data = Path(self.files[index]).read_bytes()
        width, height = Image.open(io.BytesIO(data)).size  # header only, no decode
        with seeded(sample_seed(0, 0, index)):
            crop = sample_crop(height, width, 192)
            mask = random_mask(None, 16, 192)
        return {"jpeg": torch.frombuffer(bytearray(data), dtype=torch.uint8), "mask": mask,
                "crop": torch.tensor([crop.top, crop.left, crop.height, crop.width, crop.vflip, crop.hflip])}


def byte_collate(samples: list[dict[str, Any]]) -> dict[str, Any]:
    return {"image": torch.stack([s["crop"] for s in samples]),  # "image": loader_rate counts its rows
            "jpeg": [s["jpeg"] for s in samples], "mask": torch.stack([s["mask"] for s in samples])}


def feed_rate(src: Source, batch: int, workers: int) -> float:
    files = list(src.open().files)
    sampler = np.random.default_rng(0).permutation(np.resize(np.arange(len(files)), 64 * batch)).tolist()
    loader = DataLoader(ByteSamples(files), batch_size=batch, sampler=sampler, num_workers=workers,
                        collate_fn=byte_collate)
    return loader_rate(loader, max(4, 2 * workers), workers + 1 if workers else 1)


def measure(src: Source, device, images: int, batch: int, workers: int,  # noqa: ANN001
            say: Callable[[str], None] = log) -> dict:
    files = list(src.open().files)[:images]
    datas = [jpeg_bytes(f) for f in files]
    diff = pixel_difference(datas, device.device)
    say(f"decode pixels ({device.kind} decode_jpeg vs PIL, {len(datas)} photos): " +
        ", ".join(f"{k} {v:.4g}" for k, v in diff.items()))
    rate = device_rate(datas, batch, device)
    feed = feed_rate(src, min(batch, 64), workers)
    say(f"decode: device decode+crop {rate:.0f} img/s (batch {batch}); byte-reading workers {feed:.0f} img/s "
        f"({workers} workers)")
    return {"decode": {"device": device.kind, "pixels": diff, "device_images_per_s": rate,
                       "feed_images_per_s": feed, "workers": workers, "batch_size": batch}}


def run(cfg: DecodeBenchConfig) -> dict:
    from kamim.train.device import resolve_device

    began = start(cfg)
    device = resolve_device(cfg.device)
    payload = measure(source("large"), device, cfg.images, cfg.batch_size, cfg.workers or cores())
    write_result("decode", cfg, payload, began)
    return payload


@dataclass
class DecodeBenchConfig:
    quick: bool = False
    device: str = "auto"
    images: int = 64  # photos compared pixel by pixel
    batch_size: int = 64  # JPEGs per batched device decode
    workers: int = 0  # 0: all cores


def config(quick: bool = False) -> DecodeBenchConfig:
    cfg = DecodeBenchConfig(quick=quick)
    if quick:
        cfg.images, cfg.batch_size = 16, 16
    return cfg


@click.command()
@click.option("--quick", is_flag=True, help="Few photos.")
def main(quick: bool) -> None:
    """decode_jpeg on the device vs PIL: pixels and img/s; the rate of byte-reading workers."""
    run(config(quick))


if __name__ == "__main__":
    main()
