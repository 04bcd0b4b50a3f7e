"""A damaged webdataset cache: missing, zero-byte, truncated, garbage shards, a flipped byte inside a JPEG
or a tar header. Every case is a one-line UserError naming the shard (exit 2 from `kamim pretrain`);
what can be seen up front stops the run before it writes anything, the rest stops it mid-run with its
checkpoints intact. Never a different sample, never a traceback."""

from __future__ import annotations

import shutil
import tarfile

import pytest
from fault_files import assert_one_line_error, invoke_kamim, make_folder, run_kamim

from kamim.cache import open_cache
from kamim.cache.wds_store import INDEX_MEMBER
from kamim.errors import UserError
from kamim.preprocess.build import CacheConfig, build_cache

pytestmark = pytest.mark.fault
TINY = ["--model", "vit_t", "--override", "depth=1", "--override", "embed_dim=32", "--override", "num_heads=2"]


@pytest.fixture(scope="module")
def clean(tmp_path_factory):
    root = make_folder(tmp_path_factory.mktemp("wdsdamage") / "data", per_class=4, size=96)
    return build_cache(CacheConfig(dataset="folder", data_root=str(root), detector="fast", workers=1, block_size=4,
                                   format="wds", out=str(root.parent / "c.wds")))


def member_offsets(shard) -> dict[str, tuple[int, int]]:
    """{member name: (header offset, data offset)} of a tar file."""
    with tarfile.open(shard) as tar:
        return {m.name: (m.offset, m.offset_data) for m in tar.getmembers()}


def damage(shard, kind: str) -> None:
    data = bytearray(shard.read_bytes())
    offsets = member_offsets(shard)
    if kind == "missing":
        shard.unlink()
        return
    if kind == "zero-byte":
        data = bytearray()
    elif kind == "truncated":
        data = data[: len(data) // 2 + 100]
    elif kind == "truncated-at-a-member":  # whole 512-byte blocks: only the index can tell
        data = data[: offsets["000000002.jpg"][0]]
    elif kind == "garbage":
        data = bytearray((i * 7919 + 13) % 251 for i in range(len(data)))
    elif kind == "jpeg-byte":
        data[offsets["000000001.jpg"][1] + 700] ^= 0x20
    elif kind == "header-byte":  # tar then ends silently at that member
        data[offsets["000000002.jpg"][0] + 3] ^= 0x01
    elif kind == "index-byte":
        data[offsets[INDEX_MEMBER][1] + 30] ^= 0x04
    shard.write_bytes(bytes(data))


UP_FRONT = ["missing", "zero-byte", "truncated", "garbage", "index-byte"]
MID_STREAM = ["truncated-at-a-member", "jpeg-byte", "header-byte"]


@pytest.mark.parametrize("kind", UP_FRONT + MID_STREAM)
def test_a_damaged_shard_is_one_line_naming_it(clean, tmp_path, kind):
    copy = shutil.copytree(clean, tmp_path / "c.wds")
    shard = copy / "shard-000000.tar"
    damage(shard, kind)
    with pytest.raises(UserError) as caught:
        list(open_cache(copy))
    message = caught.value.format_message()
    assert "shard-000000.tar" in message and "\n" not in message, message
    if kind in UP_FRONT:
        return
    clean_samples = list(open_cache(clean))
    seen = []
    with pytest.raises(UserError):
        for sample in open_cache(copy):
            seen.append(sample)
    for (image, points, label), (image0, points0, label0) in zip(seen, clean_samples, strict=False):
        assert (image == image0).all() and (points == points0).all() and label == label0  # never a wrong one


@pytest.mark.parametrize("kind", ["missing", "garbage", "truncated"])
def test_pretrain_on_a_damaged_cache_stops_before_writing_anything(clean, tmp_path, kind):
    copy = shutil.copytree(clean, tmp_path / "c.wds")
    damage(copy / "shard-000001.tar", kind)
    out = tmp_path / "run"
    proc = invoke_kamim("pretrain", *TINY, "--dataset", "folder", "--cache", str(copy), "--device", "cpu",
                        "--workers", "0", "--batch-size", "2", "--steps", "2", "--grid-every", "0", "--out", str(out))
    assert_one_line_error(proc, "shard-000001.tar")
    assert not out.exists()


def test_pretrain_hitting_a_damaged_sample_mid_run_is_one_line_and_resumable(clean, tmp_path):
    copy = shutil.copytree(clean, tmp_path / "c.wds")
    for shard in sorted(copy.glob("shard-*.tar")):  # every sample damaged: the first batch meets one
        offsets = member_offsets(shard)
        data = bytearray(shard.read_bytes())
        for name, (_, start) in offsets.items():
            if name.endswith(".kp.npy"):
                data[start + 130] ^= 0x10
        shard.write_bytes(bytes(data))
    out = tmp_path / "run"
    args = ["pretrain", *TINY, "--dataset", "folder", "--cache", str(copy), "--device", "cpu", "--batch-size", "2",
            "--steps", "2", "--grid-every", "0", "--out", str(out)]
    proc = run_kamim(*args, "--workers", "2")  # the error comes from a loader worker process
    last = assert_one_line_error(proc, "does not match the shard index")
    assert "Caught" not in last and "worker" not in last
    assert not (out / "model.safetensors").exists()
    shutil.rmtree(copy)
    shutil.copytree(clean, copy)  # the cache rebuilt: the same command now runs in the same dir
    assert invoke_kamim(*args, "--workers", "0").returncode == 0
    assert (out / "model.safetensors").is_file()
