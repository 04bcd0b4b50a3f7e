import pytest
from cache_testdata import add_bad_files, make_folder_dataset
from click.testing import CliRunner

from kamim.cli import main


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    root = make_folder_dataset(tmp_path_factory.mktemp("data"), per_class=4, seed=2)
    add_bad_files(root)
    out = tmp_path_factory.mktemp("caches") / "fast.zarr"
    args = ["cache", "--dataset", "folder", "--data-root", str(root), "--detector", "fast", "--workers", "1"]
    result = CliRunner().invoke(main, [*args, "--out", str(out)])
    return result, out


def test_cache_command_builds_and_prints_a_summary(built):
    result, out = built
    assert result.exit_code == 0, result.output
    assert f"cache: {out}: 12 images ok, 5 bad" in result.output
    assert (out / "manifest.json").is_file()


def test_info_shows_counts_keypoint_stats_errors_and_size(built):
    _, out = built
    result = CliRunner().invoke(main, ["cache", "info", str(out)])
    assert result.exit_code == 0, result.output
    text = result.output
    assert "folder/train: 17 images" in text and "ok 12" in text and "bad 5" in text
    assert "per image: min" in text and "median" in text and "p90" in text
    assert "bytes/image" in text and "MiB on disk" in text
    assert "errors      5" in text and "class1/zero.jpg: zero-byte file" in text


def test_missing_options_and_non_caches_are_one_line_user_errors(tmp_path):
    result = CliRunner().invoke(main, ["cache"])  # --detector defaults to fast, as in pretrain
    assert result.exit_code == 2 and "needs --dataset" in result.output
    result = CliRunner().invoke(main, ["cache", "info", str(tmp_path)])
    assert result.exit_code == 2 and "not a kamim cache" in result.output
    result = CliRunner().invoke(main, ["cache", "finalize", str(tmp_path)])
    assert result.exit_code == 2 and "no cache build to finalize" in result.output


def test_help_shows_examples():
    result = CliRunner().invoke(main, ["cache", "--help"])
    assert result.exit_code == 0
    assert "kamim cache --dataset photos --detector fast" in result.output
    assert "finalize" in result.output and "info" in result.output
