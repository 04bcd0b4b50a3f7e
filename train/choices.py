"""The choices the ``kamim pretrain`` flags offer, without importing torch or timm, so a mistyped flag
is answered at once (kamim/cli.py imports a verb's click command before parsing). Each tuple mirrors
the module that owns it (device.py, models.py, init.py); tests/test_newcomer.py checks they agree."""

from __future__ import annotations

DEVICES = ("auto", "cpu", "cuda", "xla")
PRECISIONS = ("auto", "bf16", "fp16", "fp32")
MODEL_NAMES = ("vit_t", "vit_s", "vit_b", "swin_t", "swin_b")
INITS = ("hf", "timm")
