"""Model families build, mask the right tokens, and round-trip through checkpoints and exports."""

from __future__ import annotations

import pytest
import torch

from kamim.errors import UserError
from kamim.train.checkpoint import export_model, load_pretrained, save_checkpoint
from kamim.train.models import build_model, mask_grid

TINY = {
    "vit_t": {"depth": 1, "embed_dim": 32, "num_heads": 2},
    "vit_s": {"depth": 1, "embed_dim": 32, "num_heads": 2},
    "vit_b": {"depth": 1, "embed_dim": 32, "num_heads": 2},
    "swin_t": {"depths": [1, 1, 1, 1], "embed_dim": 16, "num_heads": [1, 1, 1, 1]},
    "swin_b": {"depths": [1, 1, 1, 1], "embed_dim": 16, "num_heads": [1, 1, 1, 1]},
}


@pytest.mark.parametrize("name", sorted(TINY))
def test_each_family_reconstructs_full_image_and_learns(name):
    torch.manual_seed(0)
    model = build_model(name, **TINY[name])
    grid = mask_grid(model)
    assert grid == (12 if name.startswith("vit") else 48)
    images = torch.randn(2, 3, 192, 192)
    mask = (torch.rand(2, grid, grid) < 0.6).float()
    recon = model(images, mask)
    assert recon.shape == images.shape
    loss = (recon - images).abs().mean()
    loss.backward()
    assert model.mask_token.grad is not None and model.mask_token.grad.abs().sum() > 0
    assert model.decoder[0].out_channels == model.encoder_stride**2 * 3


def test_mask_token_starts_at_zero_and_only_masked_tokens_change():
    torch.manual_seed(0)
    model = build_model("vit_t", **TINY["vit_t"])
    assert torch.count_nonzero(model.mask_token) == 0
    with torch.no_grad():
        model.mask_token.fill_(3.0)
    images = torch.randn(1, 3, 192, 192)
    mask = torch.zeros(1, 12, 12)
    mask[0, 0, 0] = 1
    embedded = model._masked_embeddings(images, mask)
    plain = model.encoder.patch_embed(images)
    assert torch.allclose(embedded[0, 0], torch.full_like(embedded[0, 0], 3.0))
    assert torch.equal(embedded[0, 1:], plain[0, 1:])


def test_hf_like_defaults():
    model = build_model("vit_t")
    assert model.encoder.embed_dim == 192 and len(model.encoder.blocks) == 12
    assert model.encoder.blocks[0].norm1.eps == 1e-12
    assert model.encoder.blocks[0].mlp.fc1.out_features == 768
    assert model.encoder.cls_token is not None


def test_unknown_model_and_bad_override_are_user_errors():
    with pytest.raises(UserError, match="unknown model"):
        build_model("vit_x")
    with pytest.raises(UserError, match="override"):
        build_model("vit_t", depths=[1, 1])


def test_checkpoint_and_export_round_trip(tmp_path):
    torch.manual_seed(1)
    model = build_model("swin_t", **TINY["swin_t"])
    info = {"model": "swin_t", "overrides": TINY["swin_t"], "img_size": 192, "temperature": float("inf")}
    images, mask = torch.randn(1, 3, 192, 192), torch.ones(1, 48, 48)
    expected = model(images, mask)
    save_checkpoint(tmp_path, 5, {"model": model.state_dict(), "model_info": info})
    loaded, got = load_pretrained(tmp_path)  # no export yet -> latest checkpoint
    assert got["source"].endswith("step-0000005.pt")
    assert torch.equal(loaded(images, mask), expected)
    export_model(model, info, tmp_path)
    loaded, got = load_pretrained(tmp_path)
    assert got["source"].endswith("model.safetensors") and got["temperature"] == "inf"
    assert torch.equal(loaded(images, mask), expected)
    loaded, _ = load_pretrained(tmp_path / "model.safetensors")
    assert torch.equal(loaded(images, mask), expected)


def test_load_pretrained_refuses_garbage(tmp_path):
    with pytest.raises(UserError, match="neither"):
        load_pretrained(tmp_path)
    bad = tmp_path / "checkpoints" / "step-0000001.pt"
    bad.parent.mkdir()
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(UserError, match="unreadable"):
        load_pretrained(tmp_path)
