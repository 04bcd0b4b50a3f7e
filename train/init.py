"""From-scratch initialisation as the original's HuggingFace MIM models (reference/original-kamim.md 2).

The original built ``transformers`` ``ViTForMaskedImageModeling`` / ``SwinForMaskedImageModeling``
(initializer_range 0.02), whose ``_init_weights`` gives, measured on freshly built models:

- every Linear and Conv2d weight (qkv, attention out, MLP, Swin's patch merging, the patch-embed conv
  and the decoder's 1x1 conv): N(0, 0.02^2), HF ViT through ``trunc_normal_`` with torch's default
  bounds of +-2 *absolute* (100 std, so the truncation never acts), HF Swin through ``normal_``;
- every Linear/Conv2d bias zero, every LayerNorm weight 1 and bias 0;
- ViT: CLS token and position embeddings trunc-normal 0.02 (timm: CLS 1e-6);
- the mask token zeros; Swin's relative position bias tables zeros (timm: trunc-normal 0.02).

timm's own init differs in the CLS token (std 1e-6), the patch-embed and decoder convs (PyTorch's
default uniform +-1/sqrt(fan_in), with non-zero biases) and Swin's bias tables. ``init="timm"`` keeps it.
"""

from __future__ import annotations

import torch
from torch import nn

from kamim.errors import UserError

INITS = ("hf", "timm")
HF_INIT_STD = 0.02  # HF's default initializer_range, which the original never changed


def check_init(init: str) -> None:
    if init not in INITS:
        raise UserError(f"--init {init}: use hf (the original's HuggingFace init) or timm")


@torch.no_grad()
def hf_init_(model: nn.Module, std: float = HF_INIT_STD) -> nn.Module:
    """Re-initialise a ``MIMModel`` (train/models.py) in place as HF's MIM models are; returns it."""
    for module in model.modules():
        if isinstance(module, (nn.Linear, nn.Conv2d)):
            nn.init.trunc_normal_(module.weight, std=std)  # bounds +-2 absolute: effectively N(0, std^2)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.LayerNorm):
            nn.init.ones_(module.weight)
            nn.init.zeros_(module.bias)
        table = getattr(module, "relative_position_bias_table", None)
        if isinstance(table, nn.Parameter):  # Swin: HF starts every window bias at zero
            nn.init.zeros_(table)
    encoder = model.encoder
    for name in ("cls_token", "pos_embed"):  # ViT; HF Swin has no absolute embeddings by default
        token = getattr(encoder, name, None)
        if isinstance(token, nn.Parameter):
            nn.init.trunc_normal_(token, std=std)
    absolute = getattr(encoder, "absolute_pos_embed", None)  # timm Swin's, off unless asked for
    if isinstance(absolute, nn.Parameter):
        nn.init.zeros_(absolute)  # HF Swin's absolute position embeddings start at zero
    nn.init.zeros_(model.mask_token)
    return model
