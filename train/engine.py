"""The training loop: micro-batches with accumulation, weighting on the device, one optimiser step each."""

from __future__ import annotations

import contextlib
import functools
import math
import time
from collections.abc import Iterator
from dataclasses import dataclass

import torch
from torch import nn
from torchvision.transforms.v2 import functional as TF

from .augment import MEAN, STD
from .device import Device
from .device_decode import decode_batch
from .masking import pixel_mask
from .weighting import keypoint_pixel_weights, reconstruction_loss


@dataclass(frozen=True)
class LossSpec:
    method: str  # kamim | simmim
    weight_ps: int
    temperature: float
    img_size: int
    patch_size: int
    compile: bool = False  # --compile: the cached raster, weighting and loss through torch.compile
    keypoints: str = "cached"  # cached | online | device (FAST detected here, on batch["image"])
    gray: str = "bgr"  # device mode: the gray conversion FAST sees (as --gray)


@dataclass
class StepResult:
    step: int
    loss: torch.Tensor  # mean over the micro-batches, on the device (read it only when logging)
    grad_norm: torch.Tensor
    lr: float
    images: int
    seconds: float
    last: dict[str, torch.Tensor]  # the last micro-batch (inputs, mask, reconstruction, weights)
    skipped: bool = False  # non-finite gradients under skip_non_finite: no update was applied


def batch_weights(batch: dict[str, torch.Tensor], spec: LossSpec) -> torch.Tensor | None:
    """Pixel weights [B,1,H,W] from the batch's ring maps (online), points (cached) or its uint8 crops
    (device: FAST on the device, bit-exact to the online map); None = SimMIM."""
    if spec.method == "simmim" or math.isinf(spec.temperature):
        return None
    if "map" in batch:
        maps = batch["map"]
    elif spec.keypoints == "device":
        from kamim.preprocess.fast_torch import fast_ring_maps_torch

        maps = fast_ring_maps_torch(batch["image"], gray=spec.gray)
    else:
        from kamim.preprocess.raster import ring_maps_torch

        from .crop_codes import batch_points

        maps = ring_maps_torch(*batch_points(batch), spec.img_size, compile_=spec.compile)
    return loss_functions(spec.compile)[0](maps, spec.weight_ps, spec.temperature)


@functools.cache
def _mean_std(device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    return (torch.tensor(MEAN).view(-1, 1, 1).to(device), torch.tensor(STD).view(-1, 1, 1).to(device))


def normalize_on_device(images: torch.Tensor) -> torch.Tensor:
    """augment.normalize with the mean/std made once per device: torchvision builds them from lists on
    every call, a blocking host-to-device copy (a host sync per step on CUDA). Same operations, same bits."""
    mean, std = _mean_std(images.device)
    return TF.to_dtype(images, torch.float32, scale=True).sub(mean).div_(std)


@functools.cache
def loss_functions(compile_: bool) -> tuple:
    """(maps -> pixel weights, reconstruction loss): the eager reference or, with --compile, both compiled."""
    from .compile import compiled

    return compiled(keypoint_pixel_weights, compile_), compiled(reconstruction_loss, compile_)


def micro_batch(model: nn.Module, batch: dict[str, torch.Tensor], spec: LossSpec, device: Device):  # noqa: ANN201
    images = normalize_on_device(batch["image"])
    weights = batch_weights(batch, spec)
    masks = pixel_mask(batch["mask"], spec.patch_size)
    with device.autocast():
        recon = model(images, batch["mask"])
    return loss_functions(spec.compile)[1](images, recon, masks, weights), {"images": images, "pixel_mask": masks,
                                                                  "recon": recon, "weights": weights}


def parameters_finite(model: nn.Module) -> bool:
    """Every parameter free of NaN/Inf (one host sync for the whole model)."""
    flags = [torch.isfinite(p.detach()).all() for p in model.parameters()]
    return bool(torch.stack(flags).all()) if flags else True


def train_steps(model: nn.Module, optimizer: torch.optim.Optimizer, scheduler, scaler: torch.amp.GradScaler,  # noqa: ANN001
                batches: Iterator[dict[str, torch.Tensor]], device: Device, spec: LossSpec, start: int, stop: int,
                accumulation: int, clip_grad: float, skip_non_finite: bool = False) -> Iterator[StepResult]:
    """Run optimiser steps start+1 .. stop, yielding after each. The LR schedule is indexed by optimiser
    step (the original indexed it by micro-batch, so it ran ``accumulation`` times too fast)."""
    params = [p for p in model.parameters() if p.requires_grad]
    model.train()
    for step in range(start + 1, stop + 1):
        began = time.perf_counter()
        total, count = torch.zeros((), device=device.device), 0
        for micro in range(accumulation):
            batch = decode_batch(device.to(next(batches)))  # --decode device: the JPEGs, decoded here
            # DDP: all-reduce gradients only on the last micro-batch of the step.
            sync = micro == accumulation - 1 or not hasattr(model, "no_sync")
            with contextlib.nullcontext() if sync else model.no_sync():
                loss, last = micro_batch(model, batch, spec, device)
                scaler.scale(loss / accumulation).backward()
            total, count = total + loss.detach(), count + batch["image"].shape[0]
            device.mark_step()
        device.reduce_gradients(optimizer)
        scaler.unscale_(optimizer)
        # --clip-grad 0 means no clipping (as in finetune): an inf bound still measures the norm, and
        # scaling by min(inf / norm, 1) = 1 leaves the gradients bit-identical.
        grad_norm = torch.nn.utils.clip_grad_norm_(params, clip_grad if clip_grad > 0 else math.inf)
        lr = optimizer.param_groups[0]["lr"]
        # --nan-policy skip: drop this update if any gradient is NaN/Inf (the grad norm is all-reduced, so
        # every rank agrees). Costs one host sync per step, so only when asked. An enabled fp16 scaler
        # already skips such steps itself.
        skipped = skip_non_finite and not bool(torch.isfinite(grad_norm))
        if not skipped or scaler.is_enabled():
            scaler.step(optimizer)
        scaler.update()
        optimizer.zero_grad(set_to_none=True)
        scheduler.step_update(num_updates=step)
        device.mark_step()
        yield StepResult(step, total / accumulation, grad_norm, lr, count * device.world,
                         time.perf_counter() - began, last, skipped)

