"""The original KAMIM trainer, rebuilt from the ``transformers`` package for side-by-side timing
(reference/original-kamim.md sections 1.3-1.5, 2, 3; described behaviour, not its code):

- model: ``ViTForMaskedImageModeling(ViTConfig(hidden, layers, heads, image_size=192, patch_size=16,
  intermediate=4*hidden))`` (HF's own head; HF also computes its own loss, which the original ignored);
- step: under autocast (bf16 on a GPU, none on the CPU), weights from the float ring maps by a
  ones/(w_ps^2) conv2d with stride w_ps, exp(clip(d/T)) / per-image min, repeat_interleave to pixels;
  mask repeat_interleave(16) to pixels; loss sum(M*|W*I - W*I_hat|) / (sum(M) + 1e-5) / 3; a
  GradScaler on the GPU (the original kept one under bf16: its inf check reads the device every step);
  clip 1.0; AdamW 8e-4, wd 0.05 on all parameters; timm cosine scheduler stepped per batch;
- loader: detection on every augmented crop in the workers (the project's online mode reproduces it:
  same crop, flips, OpenCV detector and ring drawing), handing over float normalised images and float
  maps [1,H,W] as the original's Dataset did.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset, default_collate

EXP_CLIP = 20.0


def hf_model(embed_dim: int, depth: int, num_heads: int) -> torch.nn.Module:
    """The original's model: HF ViT MIM at 192 px, patch 16, MLP 4x, HF defaults otherwise."""
    from transformers import ViTConfig, ViTForMaskedImageModeling

    config = ViTConfig(hidden_size=embed_dim, num_hidden_layers=depth, num_attention_heads=num_heads,
                       image_size=192, patch_size=16, intermediate_size=4 * embed_dim, num_channels=3)
    return ViTForMaskedImageModeling(config)


def model_sizes(name: str, overrides: dict[str, Any]) -> tuple[int, int, int]:
    """(embed_dim, depth, heads) of a project ViT name plus overrides: the same size for both trainers."""
    from kamim.train.models import MODELS

    family, kwargs = MODELS[name]
    if family != "vit":
        raise ValueError("the peer benchmark compares ViTs (the original's TPU runs were ViT)")
    sizes = {**kwargs, **overrides}
    return sizes["embed_dim"], sizes["depth"], sizes["num_heads"]


def per_patch_importance(maps: torch.Tensor, w_ps: int, temperature: float) -> torch.Tensor:
    """The original's weights: mean ring coverage per w_ps patch (a ones conv), exp, divided by the
    image's smallest; [B,1,H,W] float maps -> [B, H/w_ps, W/w_ps]."""
    kernel = torch.ones(1, 1, w_ps, w_ps, device=maps.device, dtype=maps.dtype) / (w_ps * w_ps)
    density = F.conv2d(maps, kernel, stride=w_ps).squeeze(1)
    weights = torch.exp(torch.clamp(density / temperature, -EXP_CLIP, EXP_CLIP))
    return weights / weights.flatten(1).amin(dim=1)[:, None, None]


class OriginalStep:
    """One optimiser step of the original trainer per call (accumulation 1), on a CPU batch dict with
    ``pixel_values`` float [B,3,H,W], ``map`` float [B,1,H,W] (absent: SimMIM) and ``mask`` [B,12,12]."""

    def __init__(self, model: torch.nn.Module, device: Any, weight_ps: int = 8, temperature: float = 0.25) -> None:
        from timm.scheduler import CosineLRScheduler

        self.model, self.device = model.to(device.device).train(), device
        self.weight_ps, self.temperature = weight_ps, temperature
        self.optimizer = torch.optim.AdamW(model.parameters(), lr=8e-4, weight_decay=0.05, betas=(0.9, 0.999))
        self.scheduler = CosineLRScheduler(self.optimizer, t_initial=10**6, lr_min=1e-5, warmup_t=10,
                                           warmup_lr_init=1e-6, t_in_epochs=False)
        self.scaler = torch.amp.GradScaler("cuda", enabled=device.kind == "cuda")
        self.updates = 0

    def __call__(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        batch = self.device.to(batch)
        with self.device.autocast():
            loss = original_loss(self.model, batch, self.weight_ps, self.temperature)
        self.scaler.scale(loss).backward()
        self.scaler.unscale_(self.optimizer)
        torch.nn.utils.clip_grad_norm_(self.model.parameters(), 1.0)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.optimizer.zero_grad()
        self.updates += 1
        self.scheduler.step_update(self.updates)
        return loss.detach()


def original_loss(model: torch.nn.Module, batch: dict[str, torch.Tensor], weight_ps: int,
                  temperature: float) -> torch.Tensor:
    """sum(M * |W*I - W*I_hat|) / (sum(M) + 1e-5) / 3 over the batch, the original's operations in order."""
    images, mask = batch["pixel_values"], batch["mask"]
    w_img = None
    if "map" in batch:
        with torch.no_grad():
            w = per_patch_importance(batch["map"], weight_ps, temperature)
            w_img = w.repeat_interleave(weight_ps, 1).repeat_interleave(weight_ps, 2).unsqueeze(1)
    recon = model(pixel_values=images, bool_masked_pos=mask.flatten(1)).reconstruction
    mask_img = mask.repeat_interleave(16, 1).repeat_interleave(16, 2).unsqueeze(1).contiguous()
    target, output = (images, recon) if w_img is None else (images * w_img, recon * w_img)
    loss = F.l1_loss(target, output, reduction="none")
    return (loss * mask_img).sum() / (mask_img.sum() + 1e-5) / 3


def original_batch(batch: dict[str, torch.Tensor], with_maps: bool = True) -> dict[str, torch.Tensor]:
    """A project batch (uint8 images, points or maps) in the original's form: the same crops, masks and
    ring maps, as normalised floats (maps rastered from the points when the batch has points)."""
    from kamim.preprocess.raster import ring_maps_torch
    from kamim.train.augment import normalize
    from kamim.train.crop_codes import batch_points

    out = {"pixel_values": normalize(batch["image"]), "mask": batch["mask"]}
    if with_maps:
        maps = batch["map"] if "map" in batch else ring_maps_torch(*batch_points(batch), 192)
        out["map"] = maps.float().reshape(maps.shape[0], 1, *maps.shape[-2:])
    return out


class OriginalSamples(Dataset):
    """The project's online samples (detection on each augmented crop) handed over as the original's
    Dataset returned them: normalised float image, float map [1,H,W], mask."""

    def __init__(self, samples: Dataset) -> None:
        self.samples = samples

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, key: tuple[int, int]) -> dict[str, torch.Tensor]:
        from kamim.train.augment import normalize

        sample = self.samples[key]
        return {"pixel_values": normalize(sample["image"][None])[0], "map": sample["map"].float()[None],
                "mask": sample["mask"]}


def original_loader(src: Any, detector: str, batch_size: int, workers: int, pin_memory: bool) -> DataLoader:
    """The original pipeline's loader: per-crop detection in ``workers`` processes, float tensors out."""
    from kamim.train.data import EpochBatches, PretrainSamples

    samples = PretrainSamples(src.open(), "online", 16, 0, None, detector)
    return DataLoader(OriginalSamples(samples), batch_sampler=EpochBatches(samples.usable_indices(), batch_size, 0),
                      num_workers=workers, collate_fn=default_collate, pin_memory=pin_memory)
