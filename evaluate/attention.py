"""Attention probabilities and per-layer tokens out of a timm VisionTransformer, through forward hooks.

timm runs fused attention (scaled_dot_product_attention), which never materialises the probabilities,
so a hook on ``blocks[i].attn`` recomputes softmax(q k^T * scale) from the module's own input and qkv
projection. The same hooks record what the original's patched HF model returned per layer:
``pre_attn`` (the LayerNorm output entering attention) and ``post_attn`` (the attention output after
the out-projection, before the residual), plus the hidden state after every block.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch
from torch import nn

from kamim.errors import UserError


@dataclass
class EncoderTrace:
    """What one forward pass left behind. Index ``i`` of the per-block lists is block ``i`` (0-based);
    ``hidden[0]`` is the embeddings entering block 0 and ``hidden[i + 1]`` the output of block ``i``
    (before any final norm), like HF's ``hidden_states``."""

    hidden: list[torch.Tensor] = field(default_factory=list)
    attn: dict[int, torch.Tensor] = field(default_factory=dict)
    pre_attn: dict[int, torch.Tensor] = field(default_factory=dict)
    post_attn: dict[int, torch.Tensor] = field(default_factory=dict)


def attention_probs(attn_module: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """softmax(q k^T * scale) of a timm ``Attention`` for its input ``x`` [B, N, C] -> [B, heads, N, N]."""
    batch, tokens, _ = x.shape
    heads, head_dim = attn_module.num_heads, attn_module.head_dim
    qkv = attn_module.qkv(x).reshape(batch, tokens, 3, heads, head_dim).permute(2, 0, 3, 1, 4)
    q, k, _ = qkv.unbind(0)
    q, k = attn_module.q_norm(q), attn_module.k_norm(k)
    return torch.softmax((q.float() * attn_module.scale) @ k.float().transpose(-2, -1), dim=-1)


def vit_blocks(encoder: nn.Module) -> nn.Sequential:
    """The transformer blocks of a timm ViT; a clear error for encoders without global attention."""
    blocks = getattr(encoder, "blocks", None)
    if blocks is None or not all(hasattr(getattr(b, "attn", None), "qkv") for b in blocks):
        raise UserError(
            f"this analysis needs a ViT encoder with global self-attention, got {type(encoder).__name__}; "
            "use a vit_t/vit_s/vit_b checkpoint (Swin's windowed attention has no global attention map)"
        )
    return blocks


@contextmanager
def trace_encoder(
    encoder: nn.Module,
    attention_blocks: set[int] | None = None,
    token_blocks: set[int] | None = None,
    hidden: bool = False,
) -> Iterator[EncoderTrace]:
    """Record attention probabilities of ``attention_blocks``, pre/post-attention tokens of
    ``token_blocks`` and (if ``hidden``) every hidden state, for forwards run inside the ``with``."""
    blocks = vit_blocks(encoder)
    attention_blocks = attention_blocks or set()
    token_blocks = token_blocks or set()
    trace = EncoderTrace()
    handles = []

    def attn_hook(index: int) -> Callable:
        def hook(module: nn.Module, inputs: tuple, output: torch.Tensor) -> None:
            x = inputs[0].detach()
            if index in attention_blocks:
                trace.attn[index] = attention_probs(module, x).cpu()
            if index in token_blocks:
                trace.pre_attn[index] = x.float().cpu()
                trace.post_attn[index] = output.detach().float().cpu()

        return hook

    def record_embeddings(module: nn.Module, inputs: tuple) -> None:
        trace.hidden.append(inputs[0].detach().float().cpu())

    def record_block(module: nn.Module, inputs: tuple, output: torch.Tensor) -> None:
        trace.hidden.append(output.detach().float().cpu())

    try:
        for index, block in enumerate(blocks):
            if index in attention_blocks or index in token_blocks:
                handles.append(block.attn.register_forward_hook(attn_hook(index)))
            if hidden:
                if index == 0:
                    handles.append(block.register_forward_pre_hook(record_embeddings))
                handles.append(block.register_forward_hook(record_block))
        yield trace
    finally:
        for handle in handles:
            handle.remove()


def resolve_depth(depth: int, num_blocks: int) -> int:
    """1-based depth as the paper numbers blocks (``-1`` = last) -> 0-based block index."""
    index = num_blocks - 1 if depth == -1 else depth - 1
    if not 0 <= index < num_blocks:
        raise UserError(f"--depth {depth}: the encoder has blocks 1..{num_blocks} (or -1 for the last)")
    return index
