"""``--resume`` continues on the data the run started on. Checkpoints record the dataset's fingerprint
(file names and sizes) and the keypoint cache's identity; a resume after files were added, or with a
--data-root/--cache holding other data, is refused in one line before anything is written. The same data
at another path resumes and finishes exactly like the uninterrupted run."""

from __future__ import annotations

import shutil

import pytest
import torch
from fault_files import _photo, make_folder
from fault_files import tiny_run_config as config
from PIL import Image
from safetensors.torch import load_file

from kamim.errors import UserError
from kamim.preprocess.build import CacheConfig, build_cache
from kamim.train.checkpoint import atomic_save, latest_checkpoint, load_checkpoint
from kamim.train.pretrain import run_pretrain

pytestmark = pytest.mark.fault


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return make_folder(tmp_path_factory.mktemp("resume-data") / "data", per_class=4, size=96)


def with_extra_file(data, where):  # noqa: ANN001, ANN201
    copy = shutil.copytree(data, where)
    Image.fromarray(_photo(96, offset=5)).save(copy / "train" / "c0" / "zz-added.jpg", quality=90)
    return copy


def snapshot(run) -> dict[str, bytes]:  # noqa: ANN001
    return {str(p.relative_to(run)): p.read_bytes() for p in sorted(run.rglob("*")) if p.is_file()}


def test_resume_after_files_were_added_is_refused(data, tmp_path):
    run = tmp_path / "run"
    run_pretrain(config(data, run, stop_after=2))
    before = snapshot(run)
    changed = with_extra_file(data, tmp_path / "changed")
    with pytest.raises(UserError) as caught:
        run_pretrain(config(changed, run, resume=True))
    message = str(caught.value)
    assert "\n" not in message and "step-0000002.pt" in message and "dataset" in message and "fingerprint" in message
    assert snapshot(run) == before  # refused before anything was written


def test_resume_with_the_same_data_elsewhere_finishes_like_the_uninterrupted_run(data, tmp_path):
    whole = run_pretrain(config(data, tmp_path / "whole"))
    run = tmp_path / "run"
    run_pretrain(config(data, run, stop_after=2))
    moved = shutil.copytree(data, tmp_path / "moved")  # same names and sizes: the same data
    run_pretrain(config(moved, run, resume=True))
    a, b = load_file(whole / "model.safetensors"), load_file(run / "model.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_resume_with_a_cache_of_other_data_is_refused(data, tmp_path):
    def cache(root, out):  # noqa: ANN001, ANN202
        return build_cache(CacheConfig(dataset="folder", data_root=str(root), detector="fast", workers=1,
                                       block_size=4, out=str(out)))

    run = tmp_path / "run"
    first = cache(data, tmp_path / "first.zarr")
    run_pretrain(config(data, run, method="kamim", cache=str(first), stop_after=2))
    changed = with_extra_file(data, tmp_path / "changed")
    other = cache(changed, tmp_path / "other.zarr")
    with pytest.raises(UserError, match=r"the cache \(fingerprint .*\) and the dataset|the dataset .* changed"):
        run_pretrain(config(changed, run, method="kamim", cache=str(other), resume=True))


def test_older_checkpoint_with_only_the_cache_fingerprint_is_still_checked(data, tmp_path):
    run = tmp_path / "run"
    run_pretrain(config(data, run, stop_after=2))
    path = latest_checkpoint(run)
    state = load_checkpoint(path)
    del state["data_fingerprints"]  # as kamim wrote checkpoints before this check existed
    atomic_save(state, path)
    changed = with_extra_file(data, tmp_path / "changed")
    with pytest.raises(UserError, match="other data"):
        run_pretrain(config(changed, run, resume=True))
    run_pretrain(config(data, run, resume=True))  # the original data still resumes
    assert (run / "model.safetensors").is_file()
