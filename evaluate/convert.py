"""Import the original's released checkpoints (HuggingFace ``ViTForMaskedImageModeling`` and
``SwinForMaskedImageModeling`` state dicts, bare or under ``model_state_dict``) into our MIMModel, with
an explicit key map and no silent skips.

Both HF layouts are read: transformers 4.x (``...attention.attention.query``/``attention.self.query``;
what the original saved with 4.38.1) and 5.x (``...attention.q_proj``). Separate q/k/v become timm's
fused ``qkv`` (rows in q, k, v order). Anything missing, unexpected or mis-shaped is a UserError.
"""

from __future__ import annotations

import json
import math
import os
import re
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from kamim.errors import UserError
from kamim.paths import usual_mode
from kamim.validation import check_out, check_value

# (HF key pattern, our key). A key is a format string over the match groups, a callable of them, "QKV:<prefix>"
# for a q/k/v piece (the last two groups are the part and weight|bias) fused below, or None: a buffer
# our model derives itself (transformers 4.x saved Swin's relative_position_index).
_V4, _V5 = r"vit\.encoder\.layer\.(\d+)\.", r"vit\.layers\.(\d+)\."
_S = r"swin\.encoder\.layers\.(\d+)\.blocks\.(\d+)\."
_WB = r"(weight|bias)"
VIT_RULES: list[tuple[str, Any]] = [
    (r"vit\.embeddings\.cls_token", "encoder.cls_token"),
    (r"vit\.embeddings\.mask_token", "mask_token"),
    (r"vit\.embeddings\.position_embeddings", "encoder.pos_embed"),
    (r"vit\.embeddings\.patch_embeddings\.projection\." + _WB, "encoder.patch_embed.proj.{0}"),
    (_V4 + r"attention\.attention\.(query|key|value)\." + _WB, "QKV:encoder.blocks.{0}"),
    (_V5 + r"attention\.(q|k|v)_proj\." + _WB, "QKV:encoder.blocks.{0}"),
    (_V4 + r"attention\.output\.dense\." + _WB, "encoder.blocks.{0}.attn.proj.{1}"),
    (_V5 + r"attention\.o_proj\." + _WB, "encoder.blocks.{0}.attn.proj.{1}"),
    (_V4 + r"intermediate\.dense\." + _WB, "encoder.blocks.{0}.mlp.fc1.{1}"),
    (_V4 + r"output\.dense\." + _WB, "encoder.blocks.{0}.mlp.fc2.{1}"),
    (_V5 + r"mlp\.(fc1|fc2)\." + _WB, "encoder.blocks.{0}.mlp.{1}.{2}"),
    (_V4 + r"layernorm_before\." + _WB, "encoder.blocks.{0}.norm1.{1}"),
    (_V5 + r"layernorm_before\." + _WB, "encoder.blocks.{0}.norm1.{1}"),
    (_V4 + r"layernorm_after\." + _WB, "encoder.blocks.{0}.norm2.{1}"),
    (_V5 + r"layernorm_after\." + _WB, "encoder.blocks.{0}.norm2.{1}"),
    (r"vit\.layernorm\." + _WB, "encoder.norm.{0}"),
    (r"decoder\.0\." + _WB, "decoder.0.{0}"),
]
_BLOCK = "encoder.layers.{0}.blocks.{1}."
SWIN_RULES: list[tuple[str, Any]] = [
    (r"swin\.embeddings\.mask_token", "mask_token"),
    (r"swin\.embeddings\.patch_embeddings\.projection\." + _WB, "encoder.patch_embed.proj.{0}"),
    (r"swin\.embeddings\.norm\." + _WB, "encoder.patch_embed.norm.{0}"),
    (_S + r"attention\.self\.(query|key|value)\." + _WB, "QKV:" + _BLOCK[:-1]),
    (_S + r"attention\.(q|k|v)_proj\." + _WB, "QKV:" + _BLOCK[:-1]),
    (_S + r"attention\.self\.relative_position_bias_table", _BLOCK + "attn.relative_position_bias_table"),
    (_S + r"attention\.relative_position_bias\.relative_position_bias_table",
     _BLOCK + "attn.relative_position_bias_table"),
    (_S + r"attention\.self\.relative_position_index", None),
    (_S + r"attention\.output\.dense\." + _WB, _BLOCK + "attn.proj.{2}"),
    (_S + r"attention\.o_proj\." + _WB, _BLOCK + "attn.proj.{2}"),
    (_S + r"intermediate\.dense\." + _WB, _BLOCK + "mlp.fc1.{2}"),
    (_S + r"output\.dense\." + _WB, _BLOCK + "mlp.fc2.{2}"),
    (_S + r"mlp\.(fc1|fc2)\." + _WB, _BLOCK + "mlp.{2}.{3}"),
    (_S + r"layernorm_before\." + _WB, _BLOCK + "norm1.{2}"),
    (_S + r"layernorm_after\." + _WB, _BLOCK + "norm2.{2}"),
    # HF merges patches at the end of stage i; timm at the start of stage i + 1 (same concatenation order)
    (r"swin\.encoder\.layers\.(\d+)\.downsample\.(reduction|norm)\." + _WB,
     lambda g: f"encoder.layers.{int(g[0]) + 1}.downsample.{g[1]}.{g[2]}"),
    (r"swin\.layernorm\." + _WB, "encoder.norm.{0}"),
    (r"decoder\.0\." + _WB, "decoder.0.{0}"),
]
_QKV_ORDER = {"query": 0, "key": 1, "value": 2, "q": 0, "k": 1, "v": 2}


def read_state_dict(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """A state dict from a .pth/.pt (torch.load weights_only, bare or under 'model_state_dict') or a
    .safetensors file."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path} does not exist; pass the original's checkpoint_final.pth (or .safetensors)")
    try:
        if path.suffix == ".safetensors":
            state = load_file(str(path))
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # torch/safetensors raise many types for torn or foreign files
        raise UserError(f"{path} is unreadable as a weights-only checkpoint ({type(error).__name__}: "
                        f"{str(error).splitlines()[0][:120]})") from None
    if isinstance(state, dict) and isinstance(state.get("model_state_dict"), dict):
        state = state["model_state_dict"]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise UserError(f"{path}: expected a state dict of tensors (bare or under 'model_state_dict')")
    return state


def rename_hf_keys(state: dict[str, torch.Tensor], rules: list[tuple[str, Any]]
                  ) -> tuple[dict[str, torch.Tensor], list[str]]:
    """(our-key state dict, HF keys that matched no rule). q/k/v are fused into qkv per block."""
    out: dict[str, torch.Tensor] = {}
    pieces: dict[tuple[str, str], dict[int, torch.Tensor]] = {}
    unexpected = []
    for key, tensor in state.items():
        for pattern, target in rules:
            match = re.fullmatch(pattern, key)
            if match is None:
                continue
            groups = match.groups()
            if callable(target):
                out[target(groups)] = tensor
            elif target is not None and target.startswith("QKV:"):
                prefix = target[4:].format(*groups[:-2])
                pieces.setdefault((prefix, groups[-1]), {})[_QKV_ORDER[groups[-2]]] = tensor
            elif target is not None:
                out[target.format(*groups)] = tensor
            break
        else:
            unexpected.append(key)
    for (prefix, kind), parts in pieces.items():
        if len(parts) != 3:
            names = ", ".join(("q", "k", "v")[i] for i in range(3) if i not in parts)
            raise UserError(f"{prefix}: attention {kind} is missing its {names} part(s); the checkpoint is incomplete")
        out[f"{prefix}.attn.qkv.{kind}"] = torch.cat([parts[0], parts[1], parts[2]])
    return out, unexpected


def infer_vit(state: dict[str, torch.Tensor]) -> dict[str, int]:
    """embed_dim, depth and img_size as the weights say (num_heads is not in a ViT's weights)."""
    try:
        embed_dim = int(state["encoder.cls_token"].shape[-1])
        tokens = int(state["encoder.pos_embed"].shape[1]) - 1
    except KeyError as error:
        raise UserError(f"the checkpoint has no {error.args[0]} equivalent; is it a ViTForMaskedImageModeling?") from None
    depth = 1 + max((int(k.split(".")[2]) for k in state if k.startswith("encoder.blocks.")), default=-1)
    return {"embed_dim": embed_dim, "depth": depth, "img_size": 16 * math.isqrt(tokens)}


def infer_swin(state: dict[str, torch.Tensor]) -> dict[str, Any]:
    """embed_dim, depths and num_heads (the width of each stage's relative-position bias table)."""
    if "encoder.patch_embed.proj.weight" not in state:
        raise UserError("the checkpoint has no swin.embeddings.patch_embeddings; is it a SwinForMaskedImageModeling?")
    blocks = sorted({tuple(int(n) for n in k.split(".")[2:5:2]) for k in state
                     if k.startswith("encoder.layers.") and ".blocks." in k})
    stages = 1 + max((s for s, _ in blocks), default=-1)
    depths = [sum(1 for s, _ in blocks if s == i) for i in range(stages)]
    heads = [int(state.get(f"encoder.layers.{i}.blocks.0.attn.relative_position_bias_table",
                           torch.zeros(0, 1)).shape[1]) for i in range(stages)]
    return {"embed_dim": int(state["encoder.patch_embed.proj.weight"].shape[0]), "depths": depths, "num_heads": heads}


def load_strict(model: str, img_size: int, overrides: dict[str, Any], ours: dict[str, torch.Tensor],
                unexpected: list[str]):
    """Build ``model`` and load ``ours`` into it; any missing/unexpected/mis-shaped key is one UserError."""
    from kamim.train.models import build_model

    target = build_model(model, img_size=img_size, **overrides)
    expected = target.state_dict()
    missing = sorted(set(expected) - set(ours))
    unexpected = unexpected + sorted(set(ours) - set(expected))
    wrong = sorted(f"{k} {tuple(ours[k].shape)} vs {tuple(v.shape)}" for k, v in expected.items()
                   if k in ours and ours[k].shape != v.shape)
    problems = [f"{label}: {', '.join(items[:6])}{' ...' if len(items) > 6 else ''}"
                for label, items in (("missing", missing), ("unexpected", unexpected), ("shape mismatch", wrong))
                if items]
    if problems:
        raise UserError(f"cannot convert to {model}: " + "; ".join(problems))
    target.load_state_dict({k: v.float() for k, v in ours.items()}, strict=True)
    return target.eval()


def convert_hf(state: dict[str, torch.Tensor], model: str = "vit_b", num_heads: int | None = None):
    """(MIMModel holding the HF weights, info for the .json). Strict: every key of both sides must match.
    ``num_heads`` is needed only for a ViT of non-standard width (Swin's heads are read from the weights)."""
    from kamim.train.models import MODELS

    if model not in MODELS:
        raise UserError(f"--model {model}: choose one of {', '.join(MODELS)}")
    family, defaults = MODELS[model]
    ours, unexpected = rename_hf_keys(state, VIT_RULES if family == "vit" else SWIN_RULES)
    if family == "swin":
        arch, img_size = infer_swin(ours), 192
    else:
        arch = infer_vit(ours)
        img_size = arch.pop("img_size")
        heads = num_heads or defaults["num_heads"]
        if arch["embed_dim"] % heads:
            raise UserError(f"width {arch['embed_dim']} is not divisible by {heads} heads; pass --num-heads")
        arch["num_heads"] = heads
    overrides = {k: v for k, v in arch.items() if list(np.atleast_1d(v)) != list(np.atleast_1d(defaults[k]))}
    converted = load_strict(model, img_size, overrides, ours, unexpected)
    return converted, {"model": model, "img_size": img_size, "overrides": overrides}


def write_export(model: torch.nn.Module, info: dict[str, Any], out: str | os.PathLike) -> Path:
    """``FILE.safetensors`` + ``FILE.json`` (what load_pretrained reads), each temp + rename."""
    out = Path(out)
    if out.suffix != ".safetensors":
        raise UserError(f"--out {out}: the file name must end in .safetensors")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp, info_tmp = out.with_name(f".{out.name}.tmp{os.getpid()}"), out.with_name(f".{out.stem}.json.tmp{os.getpid()}")
    save_file({k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}, str(tmp),
              metadata={"format": "pt"})
    usual_mode(tmp)  # safetensors writes 0600; every other output is 0644
    info_tmp.write_text(json.dumps(info, indent=2, sort_keys=True) + "\n")
    os.replace(info_tmp, out.with_suffix(".json"))
    os.replace(tmp, out)
    return out


def convert_checkpoint(path: str | os.PathLike, out: str | os.PathLike, model: str = "vit_b",
                       num_heads: int | None = None) -> Path:
    check_value("convert", "num_heads", num_heads)  # before reading a multi-GB checkpoint
    if Path(out).is_dir():
        raise UserError(f"--out {out} is a directory; pass a FILE.safetensors path")
    check_out(Path(out).parent, "--out's folder")
    state = read_state_dict(path)
    converted, info = convert_hf(state, model, num_heads)
    info["converted_from"] = str(path)
    return write_export(converted, info, out)
