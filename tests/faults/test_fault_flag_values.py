"""Every value the adversarial review found crashing or silently accepted ends in exit 2 and one line that
names the flag (kamim/validation.py, one table for every numeric flag of every verb), through the real CLI.

Also: ``--clip-grad 0`` means "no clipping" in pretrain as in finetune (it used to zero every gradient).
"""

from __future__ import annotations

import pytest
import torch
from fault_files import assert_one_line_error, invoke_kamim, make_folder
from safetensors.torch import load_file

from kamim.errors import UserError
from kamim.train.checkpoint import load_pretrained, save_checkpoint
from kamim.train.models import build_model

pytestmark = pytest.mark.fault

TINY = ("--override", "depth=1", "--override", "embed_dim=32", "--override", "num_heads=2")


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return make_folder(tmp_path_factory.mktemp("flags") / "data", per_class=4, size=96)


def pretrain_args(data, out, *extra: str) -> list[str]:  # noqa: ANN001
    return ["pretrain", "--dataset", "folder", "--data-root", str(data), "--method", "simmim", "--device", "cpu",
            "--workers", "0", "--batch-size", "2", "--steps", "1", "--grid-every", "0", "--out", str(out),
            *TINY, *extra]


# (extra flags, words the one-line error must contain)
PRETRAIN_CASES = [
    (("--lr", "inf"), ("--lr", "inf")),
    (("--lr", "nan"), ("--lr",)),
    (("--lr", "-1"), ("--lr",)),
    (("--warmup-lr", "inf"), ("--warmup-lr",)),
    (("--min-lr", "nan"), ("--min-lr",)),
    (("--weight-decay", "inf"), ("--weight-decay",)),
    (("--weight-decay", "nan"), ("--weight-decay",)),
    (("--weight-decay", "-1"), ("--weight-decay",)),
    (("--clip-grad", "nan"), ("--clip-grad",)),
    (("--clip-grad", "-1"), ("--clip-grad",)),
    (("--epochs", "inf"), ("--epochs",)),
    (("--epochs", "0"), ("--epochs",)),
    (("--seed", "-1"), ("--seed",)),
    (("--seed", str(2**64)), ("--seed",)),
    (("--stop-after", "-5"), ("--stop-after",)),
    (("--stop-after", "0"), ("--stop-after",)),
    (("--workers", "1000"), ("--workers", "..")),
    (("--workers", "-1"), ("--workers",)),
    (("--accumulation", "0"), ("--accumulation",)),
    (("--batch-size", "0"), ("--batch-size",)),
    (("--save-every", "0"), ("--save-every",)),
    (("--keep-checkpoints", "-1"), ("--keep-checkpoints",)),
    (("--temperature", "nan"), ("--temperature",)),
    (("--temperature", "-inf"), ("--temperature",)),
    (("--override", "embed_dim=-1"), ("embed_dim",)),
    (("--override", "num_heads=0"), ("num_heads",)),
    (("--override", "embed_dim=33"), ("embed_dim 33", "num_heads 2")),
    (("--override", "embed_dim=4000000"), ("embed_dim",)),
]


@pytest.mark.parametrize(("extra", "words"), PRETRAIN_CASES, ids=[" ".join(c[0]) for c in PRETRAIN_CASES])
def test_pretrain_bad_value_is_one_line_naming_the_flag(data, tmp_path, extra, words):
    proc = invoke_kamim(*pretrain_args(data, tmp_path / "run", *extra))
    assert_one_line_error(proc, *words)
    assert not (tmp_path / "run").exists()  # refused before anything was written


def test_min_lr_nan_blames_min_lr_not_lr(data, tmp_path):
    last = assert_one_line_error(invoke_kamim(*pretrain_args(data, tmp_path / "run", "--min-lr", "nan")))
    assert last.startswith("Error: --min-lr nan")


def test_pretrain_out_that_is_a_file_is_refused(data, tmp_path):
    (tmp_path / "file").write_text("not a directory")
    assert_one_line_error(invoke_kamim(*pretrain_args(data, tmp_path / "file")), "--out", "existing file")
    assert_one_line_error(invoke_kamim(*pretrain_args(data, tmp_path / "file" / "run")), "--out", "existing file")


OTHER_CASES = [
    (("linprobe", "--checkpoint", "x", "--epochs", "0"), ("--epochs",)),
    (("linprobe", "--checkpoint", "x", "--lr", "nan"), ("--lr",)),
    (("linprobe", "--checkpoint", "x", "--workers", "1000"), ("--workers",)),
    (("linprobe", "--checkpoint", "x", "--layer", "0"), ("--layer",)),
    (("linprobe", "--checkpoint", "x", "--mixup", "-1"), ("--mixup",)),
    (("finetune", "--checkpoint", "x", "--clip-grad", "-1"), ("--clip-grad",)),
    (("finetune", "--checkpoint", "x", "--lr", "inf"), ("--lr",)),
    (("finetune", "--checkpoint", "x", "--weight-decay", "nan"), ("--weight-decay",)),
    (("finetune", "--checkpoint", "x", "--layer-decay", "0"), ("--layer-decay",)),
    (("finetune", "--checkpoint", "x", "--seed", "-1"), ("--seed",)),
    (("finetune", "--checkpoint", "x", "--epochs", "0"), ("--epochs",)),
    (("cache", "--dataset", "folder", "--detector", "fast", "--workers", "1000"), ("--workers",)),
    (("cache", "--dataset", "folder", "--detector", "fast", "--block-size", "0"), ("--block-size",)),
    (("cache", "--dataset", "folder", "--detector", "fast", "--detect-size", "-5"), ("--detect-size",)),
    (("sweep", "--temperature", "0.25,nan", "--steps", "1"), ("--temperature",)),
    (("sweep", "--lr", "inf", "--steps", "1"), ("--lr",)),
    (("sweep", "--probe-epochs", "0", "--steps", "1"), ("--probe-epochs",)),
]


@pytest.mark.parametrize(("args", "words"), OTHER_CASES, ids=[" ".join(c[0][:1] + c[0][-2:]) for c in OTHER_CASES])
def test_other_verbs_bad_value_is_one_line_naming_the_flag(tmp_path, monkeypatch, args, words):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("KAMIM_RUNS_ROOT", str(tmp_path / "runs"))
    assert_one_line_error(invoke_kamim(*args), *words)
    assert not list(tmp_path.iterdir())  # nothing written


def test_convert_negative_heads_is_refused_before_reading(tmp_path):
    (tmp_path / "in.pth").write_bytes(b"")  # never read: the flag is refused first
    proc = invoke_kamim("convert", str(tmp_path / "in.pth"), "--model", "vit_t", "--num-heads", "-1",
                        "--out", str(tmp_path / "out.safetensors"))
    assert_one_line_error(proc, "--num-heads")
    assert not (tmp_path / "out.safetensors").exists()


@pytest.mark.parametrize(("info", "words"), [
    ("vit_t", ("model description",)),
    ({"model": "vit_t", "img_size": "abc"}, ("img_size",)),
    ({"model": "vit_t", "img_size": 192, "overrides": {"embed_dim": 4_000_000}}, ("embed_dim",)),
    ({"model": "vit_t", "overrides": "depth=1"}, ("overrides",)),
    ({"model": 7}, ("model description",)),
])
def test_checkpoint_metadata_of_the_wrong_type_is_one_line_before_allocating(tmp_path, info, words):
    model = build_model("vit_t", depth=1, embed_dim=32, num_heads=2)
    path = save_checkpoint(tmp_path / "run", 1, {"model": model.state_dict(), "model_info": info})
    with pytest.raises(UserError) as caught:
        load_pretrained(path)
    message = str(caught.value)
    assert "\n" not in message and str(path) in message
    for word in words:
        assert word in message


def _train(data, out, clip: str) -> dict[str, torch.Tensor]:  # noqa: ANN001
    proc = invoke_kamim(*pretrain_args(data, out, "--steps", "2", "--clip-grad", clip, "--lr", "1e-3",
                                       "--warmup-steps", "0"))
    assert proc.returncode == 0, proc.stderr[-2000:]
    return load_file(out / "model.safetensors")


def test_clip_grad_zero_means_no_clipping(data, tmp_path):
    """0 trains exactly like a bound no gradient reaches (it used to zero every gradient)."""
    off, huge = _train(data, tmp_path / "off", "0"), _train(data, tmp_path / "huge", "1e6")
    tiny = _train(data, tmp_path / "tiny", "1e-6")
    assert all(torch.equal(off[k], huge[k]) for k in off)
    assert any(not torch.equal(off[k], tiny[k]) for k in off)  # and clipping does act when it is on
