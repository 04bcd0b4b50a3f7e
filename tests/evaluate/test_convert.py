"""kamim convert: a random HF ViTForMaskedImageModeling converts to equal reconstructions; bad input fails."""

from __future__ import annotations

import re

import pytest
import torch
from click.testing import CliRunner

from kamim.cli import main
from kamim.errors import UserError
from kamim.evaluate.convert import convert_checkpoint, convert_hf, read_state_dict
from kamim.train.checkpoint import load_pretrained

transformers = pytest.importorskip("transformers")

# transformers 5.x renamed the keys; the original saved with 4.38.1. This maps 5.x back to 4.x so both
# layouts are exercised with the one installed library.
TO_4X = [
    (r"vit\.layers\.(\d+)\.attention\.(q|k|v)_proj\.", lambda m: f"vit.encoder.layer.{m[1]}.attention.attention."
     + {"q": "query", "k": "key", "v": "value"}[m[2]] + "."),
    (r"vit\.layers\.(\d+)\.attention\.o_proj\.", r"vit.encoder.layer.\1.attention.output.dense."),
    (r"vit\.layers\.(\d+)\.mlp\.fc1\.", r"vit.encoder.layer.\1.intermediate.dense."),
    (r"vit\.layers\.(\d+)\.mlp\.fc2\.", r"vit.encoder.layer.\1.output.dense."),
    (r"vit\.layers\.(\d+)\.layernorm_", r"vit.encoder.layer.\1.layernorm_"),
]


def as_4x(state: dict) -> dict:
    out = {}
    for key, value in state.items():
        for pattern, repl in TO_4X:
            key = re.sub(pattern, repl, key)
        out[key] = value
    return out


@pytest.fixture(scope="module")
def hf_model():
    torch.manual_seed(0)
    config = transformers.ViTConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                                    intermediate_size=128, image_size=192, patch_size=16, encoder_stride=16)
    model = transformers.ViTForMaskedImageModeling(config).eval()
    with torch.no_grad():  # HF initialises the mask token to zeros; make it matter
        model.vit.embeddings.mask_token.normal_()
    return model


def reconstructions_match(hf_model, exported) -> float:
    ours, info = load_pretrained(exported)
    assert info["model"] == "vit_b" and info["overrides"] == {"depth": 2, "embed_dim": 32, "num_heads": 2}
    torch.manual_seed(1)
    images = torch.randn(2, 3, 192, 192)
    mask = (torch.rand(2, 12, 12) < 0.6).long()
    with torch.no_grad():
        expected = hf_model(pixel_values=images, bool_masked_pos=mask.flatten(1)).reconstruction
        got = ours(images, mask)
    return float((expected - got).abs().max())


@pytest.mark.parametrize("layout", ["bare-5x", "wrapped-4x", "bare-4x-safetensors"])
def test_converted_model_reconstructs_like_hf(hf_model, tmp_path, layout):
    state = hf_model.state_dict()
    if "4x" in layout:
        state = as_4x(state)
        assert "vit.encoder.layer.1.attention.attention.query.weight" in state
    if layout.startswith("wrapped"):
        source = tmp_path / "checkpoint_final.pth"
        torch.save({"epoch": 99, "model_state_dict": state, "temperature": 0.25}, source)
    elif layout.endswith("safetensors"):
        from safetensors.torch import save_file

        source = tmp_path / "weights.safetensors"
        save_file({k: v.contiguous() for k, v in state.items()}, str(source))
    else:
        source = tmp_path / "checkpoint_final.pth"
        torch.save(state, source)
    exported = convert_checkpoint(source, tmp_path / "out.safetensors", "vit_b", num_heads=2)
    assert reconstructions_match(hf_model, exported) < 1e-4


def test_cli_convert_writes_export(hf_model, tmp_path):
    source = tmp_path / "ckpt.pth"
    torch.save(hf_model.state_dict(), source)
    out = tmp_path / "x" / "converted.safetensors"
    result = CliRunner().invoke(main, ["convert", str(source), "--model", "vit_b", "--num-heads", "2", "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert out.is_file() and out.with_suffix(".json").is_file()


def run_cli(tmp_path, state) -> tuple[int, str, bool]:
    source = tmp_path / "bad.pth"
    torch.save(state, source)
    out = tmp_path / "bad.safetensors"
    result = CliRunner().invoke(main, ["convert", str(source), "--num-heads", "2", "--out", str(out)])
    return result.exit_code, result.output, out.exists()


def test_missing_key_is_an_error_naming_it(hf_model, tmp_path):
    state = dict(hf_model.state_dict())
    del state["vit.layernorm.weight"]
    code, output, written = run_cli(tmp_path, state)
    assert code == 2 and "missing: encoder.norm.weight" in output and not written


def test_wrong_shape_and_unexpected_keys_are_errors(hf_model, tmp_path):
    state = dict(hf_model.state_dict())
    state["decoder.0.weight"] = torch.zeros(3, 32, 1, 1)
    state["vit.pooler.dense.weight"] = torch.zeros(32, 32)
    with pytest.raises(UserError) as error:
        convert_hf(state, "vit_b", num_heads=2)
    assert "decoder.0.weight (3, 32, 1, 1) vs (768, 32, 1, 1)" in str(error.value)
    assert "unexpected: vit.pooler.dense.weight" in str(error.value)


def test_half_qkv_and_unreadable_files_are_errors(hf_model, tmp_path):
    state = dict(hf_model.state_dict())
    del state["vit.layers.0.attention.k_proj.bias"]
    code, output, _ = run_cli(tmp_path, state)
    assert code == 2 and "encoder.blocks.0" in output and "k part" in output
    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(b"\x00not a zip")
    with pytest.raises(UserError, match="unreadable"):
        read_state_dict(garbage)
    torch.save({"weights": [1, 2]}, tmp_path / "odd.pth")
    with pytest.raises(UserError, match="state dict of tensors"):
        read_state_dict(tmp_path / "odd.pth")


SWIN_TO_4X = [
    (r"attention\.(q|k|v)_proj\.", lambda m: "attention.self." + {"q": "query", "k": "key", "v": "value"}[m[1]] + "."),
    (r"attention\.relative_position_bias\.", "attention.self."),
    (r"attention\.o_proj\.", "attention.output.dense."),
    (r"mlp\.fc1\.", "intermediate.dense."),
    (r"mlp\.fc2\.", "output.dense."),
]


@pytest.fixture(scope="module")
def hf_swin():
    torch.manual_seed(0)
    config = transformers.SwinConfig(image_size=192, embed_dim=8, depths=[2, 2, 2, 2], num_heads=[1, 2, 2, 4],
                                     window_size=6, drop_path_rate=0.0)
    model = transformers.SwinForMaskedImageModeling(config).eval()
    with torch.no_grad():
        model.swin.embeddings.mask_token.normal_()
        for name, param in model.named_parameters():  # HF zero-initialises the bias tables; make them matter
            if name.endswith("relative_position_bias_table"):
                param.normal_(std=0.5)
    return model


@pytest.mark.parametrize("layout", ["bare-5x", "wrapped-4x"])
def test_swin_converts_to_equal_reconstructions(hf_swin, tmp_path, layout):
    state = dict(hf_swin.state_dict())
    if layout.endswith("4x"):
        old = {}
        for key, value in state.items():
            for pattern, repl in SWIN_TO_4X:
                key = re.sub(pattern, repl, key)
            old[key] = value
        # 4.x also saved each block's relative_position_index buffer; the converter derives its own
        old["swin.encoder.layers.0.blocks.0.attention.self.relative_position_index"] = torch.zeros(36, 36).long()
        state = {"model_state_dict": old}
    source = tmp_path / "swin.pth"
    torch.save(state, source)
    ours, info = load_pretrained(convert_checkpoint(source, tmp_path / "swin.safetensors", "swin_t"))
    assert info["overrides"] == {"embed_dim": 8, "depths": [2, 2, 2, 2], "num_heads": [1, 2, 2, 4]}
    torch.manual_seed(1)
    images = torch.randn(1, 3, 192, 192)
    mask = (torch.rand(1, 48, 48) < 0.6).long()
    with torch.no_grad():
        expected = hf_swin(pixel_values=images, bool_masked_pos=mask.flatten(1)).reconstruction
        got = ours(images, mask)
    assert float((expected - got).abs().max()) < 1e-4
