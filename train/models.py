"""SimMIM models: a timm ViT or Swin encoder, a learned mask token and the 1x1-conv + PixelShuffle head.

The encoders reproduce the HuggingFace models the original code trained (reference/original-kamim.md
section 2): ViT with LayerNorm eps 1e-12, qkv bias, exact GELU, CLS token, learned absolute position
embeddings, no drop path and the final norm kept; Swin with patch 4, window 6 and no drop path. The
mask token (zeros at init, like HF) replaces masked patch embeddings *before* position embeddings.
Weights start as HF's do (train/init.py) unless ``init="timm"``.
"""

from __future__ import annotations

from functools import partial
from typing import Any

import torch
from timm.models.swin_transformer import SwinTransformer
from timm.models.vision_transformer import VisionTransformer
from torch import nn

from kamim.errors import UserError
from kamim.validation import check_model_shape

from .init import check_init, hf_init_

# name -> (family, timm kwargs); widths/depths from reference/original-kamim.md section 2.
MODELS: dict[str, tuple[str, dict[str, Any]]] = {
    "vit_t": ("vit", {"embed_dim": 192, "depth": 12, "num_heads": 3}),
    "vit_s": ("vit", {"embed_dim": 384, "depth": 12, "num_heads": 6}),
    "vit_b": ("vit", {"embed_dim": 768, "depth": 12, "num_heads": 12}),
    "swin_t": ("swin", {"embed_dim": 96, "depths": (2, 2, 6, 2), "num_heads": (3, 6, 12, 24)}),
    "swin_b": ("swin", {"embed_dim": 128, "depths": (2, 2, 18, 2), "num_heads": (4, 8, 16, 32)}),
}
OVERRIDES = {"vit": ("depth", "embed_dim", "num_heads"), "swin": ("depths", "embed_dim", "num_heads")}
MASK_PATCH_SIZE = 32


class MIMModel(nn.Module):
    """Encoder + mask token + SimMIM linear head: ``forward(images, mask) -> reconstruction``.

    ``images`` [B,3,H,W] normalised; ``mask`` [B, H/p, W/p] with 1 = masked (p = ``patch_size``).
    """

    def __init__(self, name: str, family: str, encoder: nn.Module, embed_dim: int, patch_size: int,
                 encoder_stride: int, out_dim: int) -> None:
        super().__init__()
        self.name, self.family = name, family
        self.encoder = encoder
        self.patch_size = patch_size
        self.encoder_stride = encoder_stride
        self.mask_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
        self.decoder = nn.Sequential(
            nn.Conv2d(out_dim, encoder_stride**2 * 3, kernel_size=1),
            nn.PixelShuffle(encoder_stride),
        )

    def _masked_embeddings(self, images: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        tokens = self.encoder.patch_embed(images)  # ViT: [B,N,D]; Swin: [B,h,w,D]
        m = mask.to(tokens.dtype).reshape(*tokens.shape[:-1], 1)
        return tokens * (1.0 - m) + self.mask_token.to(tokens.dtype) * m

    def encode(self, images: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """The encoder's final (normalised) feature map [B, D, h, w], CLS dropped."""
        enc = self.encoder
        x = self._masked_embeddings(images, mask)
        if self.family == "vit":
            x = enc.norm_pre(enc._pos_embed(x))
            x = enc.norm(enc.blocks(x))[:, enc.num_prefix_tokens:]
            side = int(x.shape[1] ** 0.5)
            return x.transpose(1, 2).reshape(x.shape[0], x.shape[2], side, side)
        x = enc.norm(enc.layers(x))  # [B,h,w,D]
        return x.permute(0, 3, 1, 2)

    def forward(self, images: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.encode(images, mask))


def build_model(name: str, img_size: int = 192, init: str = "hf", **overrides: Any) -> MIMModel:
    """One of ``vit_t vit_s vit_b swin_t swin_b``; ``overrides`` (depth/depths, embed_dim, num_heads)
    make tiny test models. ``init``: ``hf`` initialises as the original's HuggingFace models
    (train/init.py), ``timm`` keeps timm's own init."""
    check_init(init)
    if name not in MODELS:
        raise UserError(f"unknown model '{name}'; choose one of {', '.join(MODELS)}")
    family, kwargs = MODELS[name]
    bad = sorted(set(overrides) - set(OVERRIDES[family]))
    if bad:
        raise UserError(f"model '{name}' does not take override(s) {bad}; allowed: {list(OVERRIDES[family])}")
    kwargs = {**kwargs, **{k: (tuple(v) if isinstance(v, list) else v) for k, v in overrides.items()}}
    if isinstance(img_size, bool) or not isinstance(img_size, int) or not 32 <= img_size <= 1024:
        raise UserError(f"img_size {img_size!r}: must be an integer in 32..1024 (the model is built for 192)")
    if img_size % MASK_PATCH_SIZE:
        raise UserError(f"--img-size {img_size} must be a multiple of the {MASK_PATCH_SIZE}-px mask patch")
    kwargs = check_model_shape(name, family, kwargs)  # bounded and divisible before anything is allocated
    if family == "vit":
        encoder = VisionTransformer(
            img_size=img_size, patch_size=16, num_classes=0, mlp_ratio=4.0, qkv_bias=True,
            class_token=True, pos_embed="learn", final_norm=True, drop_path_rate=0.0,
            norm_layer=partial(nn.LayerNorm, eps=1e-12), act_layer=nn.GELU, **kwargs,
        )
        model = MIMModel(name, family, encoder, kwargs["embed_dim"], 16, 16, kwargs["embed_dim"])
        return hf_init_(model) if init == "hf" else model
    encoder = SwinTransformer(
        img_size=img_size, patch_size=4, window_size=6, num_classes=0, mlp_ratio=4.0, qkv_bias=True,
        drop_path_rate=0.0, **kwargs,
    )
    merges = len(kwargs["depths"]) - 1  # each later stage halves the grid and doubles the width
    model = MIMModel(name, family, encoder, kwargs["embed_dim"], 4, 4 * 2**merges, kwargs["embed_dim"] * 2**merges)
    return hf_init_(model) if init == "hf" else model


def mask_grid(model: MIMModel, img_size: int = 192) -> int:
    """Side of the token grid the mask is given on (12 for ViT/16 at 192, 48 for Swin/4)."""
    return img_size // model.patch_size
