"""Mismatches and bad flags at every verb: exit code 2, no traceback, the last stderr line ``Error: ...``
naming the flag or file; nothing is written for a refused command."""

from __future__ import annotations

import pytest
import torch
from fault_files import assert_one_line_error, invoke_kamim, make_folder, run_kamim
from PIL import Image

from kamim.errors import UserError
from kamim.preprocess.build import CacheConfig, build_cache
from kamim.train.checkpoint import load_pretrained, save_checkpoint
from kamim.train.models import build_model

pytestmark = pytest.mark.fault
TINY = ["--override", "depth=1", "--override", "embed_dim=32", "--override", "num_heads=2"]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = make_folder(tmp_path_factory.mktemp("mismatch") / "data", per_class=3, size=80)
    cache = build_cache(CacheConfig(dataset="folder", data_root=str(root), detector="fast", workers=1,
                                    out=str(root.parent / "cache.zarr")))
    return root, cache


def pretrain_args(data, out, *extra: str) -> list[str]:
    root, cache = data
    return ["pretrain", "--dataset", "folder", "--data-root", str(root), "--cache", str(cache), "--device", "cpu",
            *TINY, "--batch-size", "2", "--workers", "0", "--steps", "2", "--grid-every", "0", "--out", str(out),
            *extra]


BAD_PRETRAIN_FLAGS = {
    "--weight-ps": (["--weight-ps", "12"], "--weight-ps 12"),
    "--weight-ps too big": (["--weight-ps", "64"], "--weight-ps 64"),
    "--detector": (["--detector", "surf"], "--detector surf"),
    "--detector online": (["--detector", "surf", "--keypoints", "online"], "--detector surf"),
    "--temperature": (["--temperature", "0"], "--temperature"),
    "--model": (["--model", "vit_xxl"], "--model vit_xxl"),
    "--override": (["--override", "depth"], "--override"),
    "--keypoints": (["--keypoints", "sometimes"], "--keypoints"),
    "--batch-size": (["--batch-size", "64"], "--batch-size 64"),  # more than the 6 images hold
}


@pytest.mark.parametrize("case", sorted(BAD_PRETRAIN_FLAGS))
def test_bad_pretrain_flags_exit_2_and_write_nothing(data, tmp_path, case):
    extra, words = BAD_PRETRAIN_FLAGS[case]
    out = tmp_path / "run"
    assert_one_line_error(invoke_kamim(*pretrain_args(data, out, *extra)), words)
    assert not (out / "checkpoints").exists()


def test_cache_of_another_dataset_state_is_refused_by_fingerprint(data, tmp_path):
    root, cache = data
    extra = root / "train" / "c0" / "new.jpg"
    Image.new("RGB", (64, 64), (10, 200, 30)).save(extra)
    try:
        assert_one_line_error(invoke_kamim(*pretrain_args(data, tmp_path / "run")), "fingerprint", str(cache))
    finally:
        extra.unlink()
    victim = sorted((root / "train" / "c1").iterdir())[0]
    original = victim.read_bytes()
    victim.write_bytes(original + b"\0" * 10)  # same names, one size changed
    try:
        assert_one_line_error(invoke_kamim(*pretrain_args(data, tmp_path / "run2")), "fingerprint")
    finally:
        victim.write_bytes(original)


def test_cache_built_with_another_detector_is_refused(data, tmp_path):
    assert_one_line_error(invoke_kamim(*pretrain_args(data, tmp_path / "run", "--detector", "orb")), "detector")


def checkpoint_claiming(tmp_path, real: dict, claimed: dict):
    model = build_model("vit_t", 192, **real)
    info = {"model": "vit_t", "overrides": claimed, "img_size": 192}
    return save_checkpoint(tmp_path / "run", 1, {"model": model.state_dict(), "model_info": info, "step": 1})


def test_checkpoint_of_a_wider_model_loaded_as_a_narrower_one(data, tmp_path):
    """A vit_s-like (embed 64) checkpoint whose description says vit_t-like (embed 32)."""
    path = checkpoint_claiming(tmp_path, {"depth": 1, "embed_dim": 64, "num_heads": 2},
                               {"depth": 1, "embed_dim": 32, "num_heads": 2})
    with pytest.raises(UserError, match="does not match model") as caught:
        load_pretrained(path)
    assert "\n" not in str(caught.value) and path.name in str(caught.value)
    proc = invoke_kamim("linprobe", "--checkpoint", str(path), "--dataset", "folder", "--data-root", str(data[0]),
                        "--device", "cpu", "--workers", "0")
    assert_one_line_error(proc, "does not match")


def test_vit_s_checkpoint_with_a_vit_b_description(tmp_path):
    model = build_model("vit_s", 192, depth=1)
    info = {"model": "vit_b", "overrides": {"depth": 1}, "img_size": 192}
    path = save_checkpoint(tmp_path / "run", 1, {"model": model.state_dict(), "model_info": info, "step": 1})
    with pytest.raises(UserError, match="vit_b"):
        load_pretrained(tmp_path / "run")
    assert torch.load(path, weights_only=True)["step"] == 1  # the file itself is fine, only mismatched


def test_resume_with_a_different_model_is_refused(data, tmp_path):
    out = tmp_path / "run"
    assert invoke_kamim(*pretrain_args(data, out, "--stop-after", "1")).returncode == 0
    wider = [a.replace("embed_dim=32", "embed_dim=64") for a in pretrain_args(data, out, "--resume")]
    assert_one_line_error(invoke_kamim(*wider), "differ", "--override")
    assert_one_line_error(invoke_kamim(*pretrain_args(data, out)), "--resume")  # would overwrite a run


@pytest.mark.parametrize(("args", "words"), [
    (["cache", "--dataset", "folder", "--detector", "surf"], "surf"),
    (["cache", "--dataset", "folder", "--detector", "fast", "--detect-size", "8"], "--detect-size"),
    (["cache", "--dataset", "nope", "--detector", "fast"], "unknown dataset"),
    (["cache", "info", "/nonexistent/cache.zarr"], "not a kamim cache"),
    (["cache", "finalize", "/nonexistent/cache.zarr"], "no parts"),
])
def test_cache_cli_errors_in_a_real_process(args, words, tmp_path):
    assert_one_line_error(run_kamim(*args, cwd=tmp_path), words)
    assert not (tmp_path / "cache").exists()


@pytest.mark.parametrize(("extra", "words"), [
    (["--weight-ps", "12"], "--weight-ps 12"), (["--detector", "surf"], "--detector surf"),
    (["--temperature", "-1"], "--temperature"), (["--crop", "0,0,5000,5000"], "--crop"),
])
def test_bad_weights_flags(data, tmp_path, extra, words):
    image = sorted((data[0] / "train" / "c0").iterdir())[0]
    out = tmp_path / "w"
    assert_one_line_error(invoke_kamim("weights", str(image), "--out", str(out), *extra), words)
    assert not (out / "weights.npy").exists()


@pytest.mark.parametrize("verb", ["linprobe", "finetune", "analyze reconstruction", "analyze attention-distance"])
@pytest.mark.parametrize("damage", ["torn", "empty", "not-a-checkpoint"])
def test_evaluation_verbs_refuse_a_damaged_checkpoint(data, tmp_path, verb, damage):
    good = checkpoint_claiming(tmp_path, {"depth": 1, "embed_dim": 32, "num_heads": 2},
                               {"depth": 1, "embed_dim": 32, "num_heads": 2})
    path = tmp_path / "damaged.pt"
    path.write_bytes({"torn": good.read_bytes()[: good.stat().st_size // 2], "empty": b"",
                      "not-a-checkpoint": b"PK\x03\x04 not a zip"}[damage])
    proc = invoke_kamim(*verb.split(), "--checkpoint", str(path), "--dataset", "folder", "--data-root", str(data[0]),
                        "--device", "cpu", "--out", str(tmp_path / "out"))
    assert_one_line_error(proc, "damaged.pt")
