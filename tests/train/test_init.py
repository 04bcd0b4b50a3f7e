"""From-scratch init matches the original's HuggingFace MIM models, parameter class by class.

Each model is built at its real layer widths (one block per stage to stay fast) beside a freshly built
``transformers`` ViT/SwinForMaskedImageModeling of the same shape; the values of each parameter class
(CLS token, position embeddings, patch embed, qkv, attention out, MLP, patch merging, norms, mask token,
Swin bias tables, decoder) are pooled and compared: exact zeros/ones where HF has them, otherwise std
within 10% (looser only for classes of a few hundred values), mean, range and kurtosis (normal, not uniform).
"""

from __future__ import annotations

import math
import re

import pytest
import torch

from kamim.errors import UserError
from kamim.train.models import build_model

transformers = pytest.importorskip("transformers")

# One block per stage, real widths and heads: every layer type at its real size (Swin: the first three
# stages, so the merging layers are real too; the fourth would only add time).
SHAPES = {
    "vit_t": {"depth": 1, "embed_dim": 192, "num_heads": 3},
    "vit_s": {"depth": 1, "embed_dim": 384, "num_heads": 6},
    "vit_b": {"depth": 1, "embed_dim": 768, "num_heads": 12},
    "swin_t": {"depths": [1, 1, 1], "embed_dim": 96, "num_heads": [3, 6, 12]},
    "swin_b": {"depths": [1, 1, 1], "embed_dim": 128, "num_heads": [4, 8, 16]},
}


def hf_model(name: str) -> torch.nn.Module:
    shape = SHAPES[name]
    if name.startswith("vit"):
        config = transformers.ViTConfig(hidden_size=shape["embed_dim"], num_hidden_layers=shape["depth"],
                                        num_attention_heads=shape["num_heads"], intermediate_size=4 * shape["embed_dim"],
                                        image_size=192, patch_size=16, encoder_stride=16)
        return transformers.ViTForMaskedImageModeling(config)
    config = transformers.SwinConfig(image_size=192, patch_size=4, embed_dim=shape["embed_dim"], depths=shape["depths"],
                                     num_heads=shape["num_heads"], window_size=6, drop_path_rate=0.0,
                                     encoder_stride=4 * 2 ** (len(shape["depths"]) - 1))
    return transformers.SwinForMaskedImageModeling(config)


def param_class(name: str) -> str:
    """Our (timm) and HF (4.x and 5.x) parameter names -> one shared class name."""
    for token, label in (("mask_token", "mask_token"), ("cls_token", "cls_token"), ("pos_embed", "pos_embed"),
                         ("position_embeddings", "pos_embed"), ("relative_position_bias_table", "rel_pos_bias")):
        if token in name:
            return label
    parent, kind = name.rsplit(".", 2)[-2:]
    if name.startswith("decoder."):
        return f"decoder.{kind}"
    if "norm" in parent:  # norm1/norm2/norm (timm), layernorm*/norm (HF)
        return f"norm.{kind}"
    patterns = (("patch_embed", "patch_embed"), ("reduction", "merge"),
                (r"qkv|q_proj|k_proj|v_proj|\.query\.|\.key\.|\.value\.", "qkv"),
                (r"attn\.proj|o_proj|attention\.output\.dense", "attn_out"),
                (r"fc1|fc2|intermediate\.dense|output\.dense", "mlp"))
    for pattern, label in patterns:
        if re.search(pattern, name):
            return f"{label}.{kind}"
    return f"unclassified:{name}"


def class_stats(model: torch.nn.Module) -> dict[str, dict[str, float]]:
    pooled: dict[str, list[torch.Tensor]] = {}
    for name, p in model.named_parameters():
        pooled.setdefault(param_class(name), []).append(p.detach().flatten())
    stats = {}
    for label, parts in pooled.items():
        x = torch.cat(parts)
        std = float(x.std()) if x.numel() > 1 else 0.0
        centred = x - x.mean()
        kurtosis = float((centred**4).mean() / (centred**2).mean() ** 2) if std > 0 else 0.0
        stats[label] = {"n": x.numel(), "mean": float(x.mean()), "std": std, "absmax": float(x.abs().max()),
                        "kurtosis": kurtosis, "zeros": bool((x == 0).all()), "ones": bool((x == 1).all())}
    return stats


def mismatches(ours: dict, hf: dict) -> dict[str, str]:
    """{class: why} where our init's statistics are not those of HF's."""
    bad = {label: "missing on one side" for label in set(ours) ^ set(hf)}
    for label in set(ours) & set(hf):
        o, h = ours[label], hf[label]
        if h["zeros"] or h["ones"]:
            if (o["zeros"], o["ones"]) != (h["zeros"], h["ones"]):
                bad[label] = f"HF is exactly {'0' if h['zeros'] else '1'}, ours mean {o['mean']:.3g} std {o['std']:.3g}"
            continue
        n = min(o["n"], h["n"])
        tolerance = max(0.10, 4 / math.sqrt(2 * n))  # 4 standard errors of a sample std; 10% for big classes
        if abs(o["std"] / h["std"] - 1) > tolerance:
            bad[label] = f"std {o['std']:.3g} vs HF {h['std']:.3g}"
        elif abs(o["mean"] - h["mean"]) > 5 * h["std"] * math.sqrt(2 / n):
            bad[label] = f"mean {o['mean']:.3g} vs HF {h['mean']:.3g}"
        elif n >= 1000 and not (0.7 < o["absmax"] / h["absmax"] < 1.4 and abs(o["kurtosis"] - h["kurtosis"]) < 0.6):
            bad[label] = (f"range +-{o['absmax']:.3g} kurtosis {o['kurtosis']:.2f} vs HF +-{h['absmax']:.3g} "
                          f"kurtosis {h['kurtosis']:.2f} (uniform vs normal?)")
    return bad


@pytest.mark.parametrize("name", sorted(SHAPES))
def test_hf_init_has_the_statistics_of_a_fresh_hf_model(name):
    torch.manual_seed(0)
    hf = class_stats(hf_model(name))
    ours = class_stats(build_model(name, **SHAPES[name]))
    assert not [label for label in hf if label.startswith("unclassified")], sorted(hf)
    assert mismatches(ours, hf) == {}
    # the parts the issue named, explicitly: CLS 0.02 (not 1e-6), convs normal 0.02 with zero biases
    for label in ("patch_embed.weight", "decoder.weight") + (("cls_token",) if name.startswith("vit") else ()):
        assert abs(ours[label]["std"] / 0.02 - 1) < 0.2, (label, ours[label])
    for label in ("patch_embed.bias", "decoder.bias", "qkv.bias", "mlp.bias", "norm.bias", "mask_token"):
        assert ours[label]["zeros"], label
    assert ours["norm.weight"]["ones"]
    if name.startswith("swin"):
        assert ours["rel_pos_bias"]["zeros"]


@pytest.mark.parametrize("name", ["vit_t", "swin_t"])
def test_the_comparison_catches_timms_init(name):
    """timm's own init (kept as --init timm) differs where the issue said it does. (timm's inverse-CDF
    trunc_normal_ may also leave a weight at exactly -2.0, 100 std, in the larger Swin layers.)"""
    torch.manual_seed(0)
    hf = class_stats(hf_model(name))
    bad = mismatches(class_stats(build_model(name, init="timm", **SHAPES[name])), hf)
    expected = {"patch_embed.weight", "patch_embed.bias", "decoder.weight", "decoder.bias"}
    expected |= {"cls_token"} if name.startswith("vit") else {"rel_pos_bias"}
    assert expected <= set(bad), bad


def test_init_is_seeded_and_checked():
    torch.manual_seed(3)
    a = build_model("vit_t", depth=1, embed_dim=32, num_heads=2)
    torch.manual_seed(3)
    b = build_model("vit_t", depth=1, embed_dim=32, num_heads=2)
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values(), strict=True))
    with pytest.raises(UserError, match="--init"):
        build_model("vit_t", init="xavier")
