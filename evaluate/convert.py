"""Import the original's released checkpoints (HuggingFace ``ViTForMaskedImageModeling`` state dicts,
bare or under ``model_state_dict``) into our MIMModel, with an explicit key map and no silent skips.

Both HF layouts are read: transformers 4.x (``vit.encoder.layer.N.attention.attention.query``; what the
original saved with 4.38.1) and 5.x (``vit.layers.N.attention.q_proj``). Separate q/k/v become timm's
fused ``qkv`` (rows in q, k, v order). Anything missing, unexpected or mis-shaped is a UserError.
"""

from __future__ import annotations

import json
import math
import os
import re
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from kamim.errors import UserError

# (HF key pattern, our key template); "{qkv}" marks a q/k/v piece fused below.
_LAYER_4X = r"vit\.encoder\.layer\.(\d+)\."
_LAYER_5X = r"vit\.layers\.(\d+)\."
KEY_MAP: list[tuple[str, str]] = [
    (r"vit\.embeddings\.cls_token", "encoder.cls_token"),
    (r"vit\.embeddings\.mask_token", "mask_token"),
    (r"vit\.embeddings\.position_embeddings", "encoder.pos_embed"),
    (r"vit\.embeddings\.patch_embeddings\.projection\.(weight|bias)", "encoder.patch_embed.proj.{0}"),
    (_LAYER_4X + r"attention\.attention\.(query|key|value)\.(weight|bias)", "{qkv}"),
    (_LAYER_5X + r"attention\.(q|k|v)_proj\.(weight|bias)", "{qkv}"),
    (_LAYER_4X + r"attention\.output\.dense\.(weight|bias)", "encoder.blocks.{0}.attn.proj.{1}"),
    (_LAYER_5X + r"attention\.o_proj\.(weight|bias)", "encoder.blocks.{0}.attn.proj.{1}"),
    (_LAYER_4X + r"intermediate\.dense\.(weight|bias)", "encoder.blocks.{0}.mlp.fc1.{1}"),
    (_LAYER_4X + r"output\.dense\.(weight|bias)", "encoder.blocks.{0}.mlp.fc2.{1}"),
    (_LAYER_5X + r"mlp\.(fc1|fc2)\.(weight|bias)", "encoder.blocks.{0}.mlp.{1}.{2}"),
    (r"(?:" + _LAYER_4X[:-2] + r"|" + _LAYER_5X[:-2] + r")\.layernorm_before\.(weight|bias)", "norm1"),
    (r"(?:" + _LAYER_4X[:-2] + r"|" + _LAYER_5X[:-2] + r")\.layernorm_after\.(weight|bias)", "norm2"),
    (r"vit\.layernorm\.(weight|bias)", "encoder.norm.{0}"),
    (r"decoder\.0\.(weight|bias)", "decoder.0.{0}"),
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


def rename_hf_keys(state: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], list[str]]:
    """(our-key state dict, HF keys that matched no rule). q/k/v are fused into qkv per block."""
    out: dict[str, torch.Tensor] = {}
    pieces: dict[tuple[str, str], dict[int, torch.Tensor]] = {}
    unexpected = []
    for key, tensor in state.items():
        for pattern, template in KEY_MAP:
            match = re.fullmatch(pattern, key)
            if match is None:
                continue
            groups = [g for g in match.groups() if g is not None]
            if template == "{qkv}":
                block, part, kind = groups
                pieces.setdefault((block, kind), {})[_QKV_ORDER[part]] = tensor
            elif template in ("norm1", "norm2"):
                out[f"encoder.blocks.{groups[0]}.{template}.{groups[1]}"] = tensor
            else:
                out[template.format(*groups)] = tensor
            break
        else:
            unexpected.append(key)
    for (block, kind), parts in pieces.items():
        if len(parts) != 3:
            names = ", ".join(("q", "k", "v")[i] for i in range(3) if i not in parts)
            raise UserError(f"block {block}: attention {kind} is missing its {names} part(s); the checkpoint is incomplete")
        out[f"encoder.blocks.{block}.attn.qkv.{kind}"] = torch.cat([parts[0], parts[1], parts[2]])
    return out, unexpected


def infer_architecture(state: dict[str, torch.Tensor]) -> dict[str, int]:
    """embed_dim, depth and img_size as the weights say (num_heads is not in the weights)."""
    try:
        embed_dim = int(state["encoder.cls_token"].shape[-1])
        tokens = int(state["encoder.pos_embed"].shape[1]) - 1
    except KeyError as error:
        raise UserError(f"the checkpoint has no {error.args[0]} equivalent; is it a ViTForMaskedImageModeling?") from None
    depth = 1 + max((int(k.split(".")[2]) for k in state if k.startswith("encoder.blocks.")), default=-1)
    return {"embed_dim": embed_dim, "depth": depth, "img_size": 16 * math.isqrt(tokens)}


def convert_hf_vit(state: dict[str, torch.Tensor], model: str = "vit_b", num_heads: int | None = None):
    """(MIMModel with the HF weights, info for model.json). Strict: every key of both sides must match."""
    from kamim.train.models import MODELS, build_model

    if MODELS.get(model, ("",))[0] != "vit":
        raise UserError(f"--model {model}: only ViT conversion exists (vit_t, vit_s, vit_b); Swin is not supported yet")
    ours, unexpected = rename_hf_keys(state)
    arch = infer_architecture(ours)
    overrides = {k: arch[k] for k in ("depth", "embed_dim") if arch[k] != MODELS[model][1][k]}
    if num_heads is not None and num_heads != MODELS[model][1]["num_heads"]:
        overrides["num_heads"] = num_heads
    if arch["embed_dim"] % (num_heads or MODELS[model][1]["num_heads"]):
        raise UserError(f"width {arch['embed_dim']} is not divisible by {num_heads or MODELS[model][1]['num_heads']} "
                        "heads; pass --num-heads")
    target = build_model(model, img_size=arch["img_size"], **overrides)
    expected = target.state_dict()
    missing = sorted(set(expected) - set(ours))
    unexpected += sorted(set(ours) - set(expected))
    wrong = sorted(f"{k} {tuple(ours[k].shape)} vs {tuple(v.shape)}" for k, v in expected.items()
                   if k in ours and ours[k].shape != v.shape)
    problems = [f"{label}: {', '.join(items[:6])}{' ...' if len(items) > 6 else ''}"
                for label, items in (("missing", missing), ("unexpected", unexpected), ("shape mismatch", wrong))
                if items]
    if problems:
        raise UserError(f"cannot convert to {model}: " + "; ".join(problems))
    target.load_state_dict({k: v.float() for k, v in ours.items()}, strict=True)
    info = {"model": model, "img_size": arch["img_size"], "overrides": overrides}
    return target.eval(), info


def write_export(model: torch.nn.Module, info: dict[str, Any], out: str | os.PathLike) -> Path:
    """``FILE.safetensors`` + ``FILE.json`` (what load_pretrained reads), each temp + rename."""
    out = Path(out)
    if out.suffix != ".safetensors":
        raise UserError(f"--out {out}: the file name must end in .safetensors")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp, info_tmp = out.with_name(f".{out.name}.tmp{os.getpid()}"), out.with_name(f".{out.stem}.json.tmp{os.getpid()}")
    save_file({k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}, str(tmp),
              metadata={"format": "pt"})
    info_tmp.write_text(json.dumps(info, indent=2, sort_keys=True) + "\n")
    os.replace(info_tmp, out.with_suffix(".json"))
    os.replace(tmp, out)
    return out


def convert_checkpoint(path: str | os.PathLike, out: str | os.PathLike, model: str = "vit_b",
                       num_heads: int | None = None) -> Path:
    state = read_state_dict(path)
    converted, info = convert_hf_vit(state, model, num_heads)
    info["converted_from"] = str(path)
    return write_export(converted, info, out)
