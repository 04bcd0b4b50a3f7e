"""Disk full: writes under a small RLIMIT_FSIZE (SIGXFSZ ignored, so they fail with EFBIG like ENOSPC) end
with one clear line naming the file, leave no partial file, keep earlier outputs, and a rerun with space
finishes the job."""

from __future__ import annotations

import resource
import signal
import subprocess

import pytest
from fault_child import run_child
from fault_files import PYTHON, assert_one_line_error, make_folder

from kamim.cache import open_cache
from kamim.preprocess.build import CacheConfig, build_cache
from kamim.train.checkpoint import latest_checkpoint, list_checkpoints, load_checkpoint
from kamim.train.pretrain import PretrainConfig, run_pretrain

pytestmark = pytest.mark.fault


def tree_bytes(directory) -> dict[str, bytes]:
    return {str(p.relative_to(directory)): p.read_bytes() for p in sorted(directory.rglob("*")) if p.is_file()}


def kamim_with_file_limit(limit: int, *args: str) -> subprocess.CompletedProcess:
    def limit_writes() -> None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    return subprocess.run([PYTHON, "-m", "kamim", *args], capture_output=True, text=True, timeout=240,
                          preexec_fn=limit_writes)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return make_folder(tmp_path_factory.mktemp("full") / "data", per_class=4, size=96)


def cache_args(data, out, *extra: str) -> list[str]:
    return ["cache", "--dataset", "folder", "--data-root", str(data), "--detector", "fast", "--out", str(out),
            "--workers", "1", "--block-size", "2", *extra]


def test_cache_build_on_a_full_disk_stops_cleanly_and_resumes(data, tmp_path):
    clean = tree_bytes(build_cache(CacheConfig(dataset="folder", data_root=str(data), detector="fast", workers=1,
                                               block_size=2, out=str(tmp_path / "clean"))))
    out = tmp_path / "c.zarr"
    proc = kamim_with_file_limit(2200, *cache_args(data, out))  # the first blocks fit, a later one does not
    assert_one_line_error(proc, "File too large", "block-", "rerun")
    assert not (out / "manifest.json").exists() and not list(out.rglob("*.tmp"))
    kept = sorted(p.name for p in (out / "parts").glob("block-*.npz"))
    assert kept, "earlier blocks should have been written"
    assert subprocess.run([PYTHON, "-m", "kamim", *cache_args(data, out)], capture_output=True).returncode == 0
    assert tree_bytes(out) == clean


def test_finalize_on_a_full_disk_keeps_the_blocks(data, tmp_path):
    out = tmp_path / "c.wds"
    for part in ("0", "1"):
        build_cache(CacheConfig(dataset="folder", data_root=str(data), detector="fast", workers=1, block_size=2,
                                format="wds", out=str(out), num_partitions=2, partition=int(part)))
    before = tree_bytes(out)
    proc = kamim_with_file_limit(100, "cache", "finalize", str(out))
    assert_one_line_error(proc, "File too large")
    after = tree_bytes(out)  # nothing lost, nothing half-written (an empty errors.jsonl is complete)
    assert {name: after.get(name) for name in before} == before and set(after) - set(before) <= {"errors.jsonl"}
    assert "manifest.json" not in after
    assert subprocess.run([PYTHON, "-m", "kamim", "cache", "finalize", str(out)], capture_output=True).returncode == 0
    assert sum(1 for _ in open_cache(out)) == 8


def test_checkpoint_write_on_a_full_disk_is_one_line_and_keeps_the_last_good_one(data, tmp_path):
    cfg = {"model": "vit_t", "overrides": {"depth": 1, "embed_dim": 32, "num_heads": 2}, "dataset": "folder",
           "data_root": str(data), "method": "simmim", "device": "cpu", "out": str(tmp_path / "run"),
           "batch_size": 2, "workers": 0, "grid_every": 0, "save_every": 2, "steps": 6}
    run = run_pretrain(PretrainConfig(**cfg, stop_after=2))
    size = latest_checkpoint(run).stat().st_size
    report = tmp_path / "error.txt"
    code = run_child(run_pretrain, PretrainConfig(**cfg, resume=True), limits={"RLIMIT_FSIZE": size // 2},
                     report=str(report))
    message = report.read_text()
    assert code == 2 and message.startswith("Error: could not write") and "step-0000004.pt" in message, message
    assert "\n" not in message
    assert [p.name for p in list_checkpoints(run)] == ["step-0000002.pt"]
    assert load_checkpoint(latest_checkpoint(run))["step"] == 2
    assert not list(run.rglob("*.tmp*"))
    run_pretrain(PretrainConfig(**cfg, resume=True))  # space again: it finishes
    assert (run / "model.safetensors").is_file()
