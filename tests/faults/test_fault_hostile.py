"""Hostile files: pickles that would run code (checkpoints, CIFAR batches, shard members), webdataset shards
with unexpected keys or path-like names, and malformed manifests. Nothing is ever unpickled; every refusal
is one line naming the file.

Each exploit creates a marker file when unpickled; a positive control proves the exploit is live.
"""

from __future__ import annotations

import io
import json
import pickle
import shutil
import tarfile

import numpy as np
import pytest
import torch
from fault_files import _photo, assert_one_line_error, hostile_pickle, invoke_kamim, make_folder, run_kamim

from kamim.cache import open_cache
from kamim.cache.wds_store import encode_sample, iter_wds
from kamim.errors import UserError
from kamim.preprocess.build import CacheConfig, build_cache
from kamim.safe_pickle import load_plain_pickle
from kamim.train.checkpoint import load_checkpoint, load_pretrained

pytestmark = pytest.mark.fault


class Exploit:
    def __init__(self, marker) -> None:
        self.marker = str(marker)

    def __reduce__(self):  # noqa: ANN204
        return (open, (self.marker, "w"))


def test_the_exploit_is_live(tmp_path):
    marker = tmp_path / "marker"
    pickle.loads(hostile_pickle(marker))
    assert marker.exists()  # so a missing marker below really means "not unpickled"


@pytest.mark.parametrize("kind", ["torch-zip", "raw-pickle", "pt-named-safetensors"])
def test_hostile_checkpoints_are_refused_without_running_code(tmp_path, kind):
    marker = tmp_path / "marker"
    run = tmp_path / "run" / "checkpoints"
    run.mkdir(parents=True)
    path = run / "step-0000002.pt"
    if kind == "torch-zip":
        torch.save({"model": {"w": torch.zeros(2)}, "step": 2, "payload": Exploit(marker)}, path)
    else:
        path.write_bytes(hostile_pickle(marker))
    if kind == "pt-named-safetensors":
        path = path.rename(tmp_path / "run" / "model.safetensors")
        (tmp_path / "run" / "model.json").write_text(json.dumps({"model": "vit_t"}))
    with pytest.raises(UserError) as caught:
        load_pretrained(tmp_path / "run")
    assert "\n" not in str(caught.value) and path.name in str(caught.value)
    if kind != "pt-named-safetensors":
        with pytest.raises(UserError):
            load_checkpoint(path)
    assert not marker.exists()


def test_pretrain_resume_from_a_hostile_checkpoint_exits_2(tmp_path):
    marker = tmp_path / "marker"
    folder = tmp_path / "run" / "checkpoints"
    folder.mkdir(parents=True)
    torch.save({"model": {}, "step": 1, "payload": Exploit(marker)}, folder / "step-0000001.pt")
    proc = invoke_kamim("pretrain", "--out", str(tmp_path / "run"), "--resume", "--device", "cpu")
    assert_one_line_error(proc, "step-0000001.pt")
    assert not marker.exists()


@pytest.mark.parametrize("suffix", [".pth", ".safetensors"])
def test_convert_refuses_a_hostile_original_checkpoint(tmp_path, suffix):
    marker = tmp_path / "marker"
    path = tmp_path / f"checkpoint_final{suffix}"
    torch.save({"model_state_dict": {"w": torch.zeros(1)}, "payload": Exploit(marker)}, path)
    out = tmp_path / "converted.safetensors"
    assert_one_line_error(invoke_kamim("convert", str(path), "--model", "vit_t", "--out", str(out)), path.name)
    assert not marker.exists() and not out.exists()


def test_hostile_cifar_batch_is_refused(tmp_path):
    marker = tmp_path / "marker"
    path = tmp_path / "data_batch_1"
    path.write_bytes(hostile_pickle(marker))
    with pytest.raises(UserError, match="data_batch_1"):
        load_plain_pickle(path)
    assert not marker.exists()


def _tar(path, members: dict[str, bytes]) -> None:
    with tarfile.open(path, "w") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))


def _sample_members(index: int, points=None) -> dict[str, bytes]:
    sample = encode_sample(index, _photo(64), np.array([[3, 4], [10, 20]], np.float32), 1)
    members = {f"{sample['__key__']}.{k}": (v.encode() if isinstance(v, str) else v)
               for k, v in sample.items() if k != "__key__"}
    if points is not None:
        members[f"{sample['__key__']}.kp.npy"] = points
    return members


def test_shard_with_pickles_and_path_like_names_yields_only_the_real_sample(tmp_path):
    marker = tmp_path / "marker"
    members = _sample_members(1)
    for suffix in ("pyd", "pickle", "pth", "npz", "kp.pyd"):
        members[f"000000001.{suffix}"] = hostile_pickle(marker)
    members["../../escape/000000002.jpg"] = members["000000001.jpg"]
    members["/abs/000000003.cls"] = b"1"
    members["dir/000000004.kp.npy"] = hostile_pickle(marker)
    _tar(tmp_path / "shard.tar", members)
    samples = list(iter_wds([tmp_path / "shard.tar"]))
    assert len(samples) == 1
    image, points, label = samples[0]
    assert image.shape == (64, 64, 3) and points.tolist() == [[3, 4], [10, 20]] and label == 1
    assert not marker.exists() and not (tmp_path.parent / "escape").exists()


def test_training_stream_reads_a_hostile_shard_like_the_cache_reader(tmp_path):
    from kamim.train.wds_stream import WdsPretrainStream

    marker = tmp_path / "marker"
    members = _sample_members(1)
    members["000000001.pyd"] = hostile_pickle(marker)
    members["../../escape/000000002.jpg"] = members["000000001.jpg"]
    _tar(tmp_path / "shard.tar", members)
    stream = WdsPretrainStream([tmp_path / "shard.tar"], "cached", 16, seed=0, batch_size=3)
    batch = next(iter(stream))  # resampled forever: the one real sample, three times
    assert batch["image"].shape == (3, 3, 192, 192) and batch["source_meta"][:, 0].max() <= 2  # 2 points
    assert not marker.exists()


@pytest.mark.parametrize("fault", ["object-array", "missing-key", "not-npy"])
def test_shard_with_hostile_or_missing_keypoints_is_a_one_line_error(tmp_path, fault):
    marker = tmp_path / "marker"
    buffer = io.BytesIO()
    np.save(buffer, np.array([Exploit(marker)], dtype=object), allow_pickle=True)
    members = _sample_members(1, points={"object-array": buffer.getvalue(), "not-npy": b"garbage"}.get(fault))
    if fault == "missing-key":
        del members["000000001.kp.npy"]
    _tar(tmp_path / "shard.tar", members)
    with pytest.raises(UserError) as caught:
        list(iter_wds([tmp_path / "shard.tar"]))
    assert "shard.tar" in str(caught.value) and "\n" not in str(caught.value)
    assert not marker.exists()


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory):
    root = make_folder(tmp_path_factory.mktemp("hostile") / "data", per_class=2, size=64)
    return build_cache(CacheConfig(dataset="folder", data_root=str(root), detector="orb", workers=1,
                                   out=str(root / "c.zarr")))


MANIFESTS = {
    "not-json": lambda m: "{ not json",
    "a-list": lambda m: json.dumps([m]),
    "wrong-version": lambda m: json.dumps({**m, "format_version": 99}),
    "unknown-format": lambda m: json.dumps({**m, "format": "pickle"}),
    "no-dataset": lambda m: json.dumps({k: v for k, v in m.items() if k != "dataset"}),
    "no-steps": lambda m: json.dumps({k: v for k, v in m.items() if k != "subpixel_steps"}),
    "count-as-text": lambda m: json.dumps({**m, "dataset": {**m["dataset"], "count": "many"}}),
    "no-fingerprint": lambda m: json.dumps({**m, "dataset": {k: v for k, v in m["dataset"].items()
                                                              if k != "fingerprint"}}),
}


@pytest.mark.parametrize("case", sorted(MANIFESTS))
def test_malformed_manifests_are_refused_before_use(cache_dir, tmp_path, case):
    copy = shutil.copytree(cache_dir, tmp_path / "c.zarr")
    manifest = json.loads((copy / "manifest.json").read_text())
    (copy / "manifest.json").write_text(MANIFESTS[case](manifest))
    with pytest.raises(UserError) as caught:
        open_cache(copy)
    assert "manifest.json" in str(caught.value) and "\n" not in str(caught.value)
    proc = run_kamim("cache", "info", str(copy)) if case == "no-steps" else None
    if proc is not None:
        assert_one_line_error(proc, "manifest.json")
