"""Hook-based attention equals the module's own computation on a tiny timm ViT."""

import pytest
import torch
from timm.models.vision_transformer import VisionTransformer

from kamim.errors import UserError
from kamim.evaluate.attention import resolve_depth, trace_encoder


def tiny_vit() -> VisionTransformer:
    torch.manual_seed(0)
    return VisionTransformer(img_size=32, patch_size=8, embed_dim=32, depth=2, num_heads=2, num_classes=0).eval()


def test_hooked_attention_reproduces_the_attention_output():
    model = tiny_vit()
    images = torch.randn(3, 3, 32, 32)
    with torch.no_grad(), trace_encoder(model, attention_blocks={0, 1}, token_blocks={1}, hidden=True) as trace:
        features = model.forward_features(images)
    assert trace.attn[1].shape == (3, 2, 17, 17)
    torch.testing.assert_close(trace.attn[0].sum(-1), torch.ones(3, 2, 17))
    # probabilities @ v, heads merged, out-projection == what timm's fused attention produced
    attn = model.blocks[1].attn
    x = trace.pre_attn[1]
    v = attn.qkv(x).reshape(3, 17, 3, 2, 16).permute(2, 0, 3, 1, 4)[2]
    manual = attn.proj((trace.attn[1] @ v).transpose(1, 2).reshape(3, 17, 32))
    torch.testing.assert_close(manual, trace.post_attn[1], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(x, model.blocks[1].norm1(trace.hidden[1]))
    # hidden states: embeddings + one per block, the last one before the final norm
    assert len(trace.hidden) == 3
    torch.testing.assert_close(model.norm(trace.hidden[-1]), features)


def test_hooks_are_removed_after_the_block():
    model = tiny_vit()
    with trace_encoder(model, attention_blocks={0}, hidden=True):
        pass
    assert not model.blocks[0].attn._forward_hooks and not model.blocks[0]._forward_pre_hooks


def test_depth_numbering():
    assert resolve_depth(-1, 12) == 11
    assert resolve_depth(1, 12) == 0
    with pytest.raises(UserError):
        resolve_depth(13, 12)
