import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "cache"))
from cache_testdata import add_bad_files, make_folder_dataset, tree_bytes  # noqa: E402

from kamim.errors import UserError  # noqa: E402
from kamim.preprocess.build import CacheConfig, build_cache  # noqa: E402


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    root = make_folder_dataset(tmp_path_factory.mktemp("data"), per_class=6, seed=5)
    add_bad_files(root)
    return root


@pytest.mark.parametrize("fmt", ["zarr", "wds"])
def test_one_and_two_workers_write_identical_bytes(data_root, tmp_path, fmt):
    common = {
        "dataset": "folder",
        "data_root": str(data_root),
        "detector": "orb",
        "format": fmt,
        "block_size": 3,
    }
    one = build_cache(CacheConfig(**common, workers=1, out=str(tmp_path / "one")))
    two = build_cache(CacheConfig(**common, workers=2, out=str(tmp_path / "two")))
    files_one, files_two = tree_bytes(one), tree_bytes(two)
    assert "manifest.json" in files_one and "errors.jsonl" in files_one
    assert not (one / "parts").exists()
    assert files_one == files_two


def test_rerun_is_a_no_op_and_other_options_are_refused(data_root, tmp_path, capsys):
    cfg = CacheConfig(
        dataset="folder", data_root=str(data_root), detector="fast", workers=1, out=str(tmp_path / "c")
    )
    out = build_cache(cfg)
    before = tree_bytes(out)
    capsys.readouterr()
    build_cache(cfg)
    assert "already complete" in capsys.readouterr().out
    assert tree_bytes(out) == before
    cfg.detect_size = 128
    with pytest.raises(UserError, match="different cache"):
        build_cache(cfg)


def test_every_sample_bad_is_a_user_error(tmp_path):
    add_bad_files(tmp_path, cls="only")
    cfg = CacheConfig(
        dataset="folder", data_root=str(tmp_path), detector="fast", workers=1, out=str(tmp_path / "c")
    )
    with pytest.raises(UserError, match="every one of the 5 samples failed"):
        build_cache(cfg)
    assert not (tmp_path / "c" / "manifest.json").exists()
    assert len((tmp_path / "c" / "errors.jsonl").read_text().splitlines()) == 5


@pytest.mark.parametrize(
    ("change", "message"),
    [({"detector": "surf"}, "--detector"), ({"partition": 3, "num_partitions": 3}, "--partition"),
     ({"store_size": 128}, "--store-size"), ({"detect_size": 4}, "--detect-size")],
)  # fmt: skip
def test_bad_options_are_user_errors(data_root, tmp_path, change, message):
    cfg = CacheConfig(
        dataset="folder", data_root=str(data_root), workers=1, out=str(tmp_path / "c"), **change
    )
    with pytest.raises(UserError, match=message):
        build_cache(cfg)
    assert not (tmp_path / "c").exists()
