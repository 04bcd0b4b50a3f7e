import subprocess
import sys
from pathlib import Path

from click.testing import CliRunner

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "cache"))
from cache_testdata import add_bad_files, make_folder_dataset, tree_bytes  # noqa: E402

from kamim.cli import main  # noqa: E402
from kamim.preprocess.build import CacheConfig, build_cache  # noqa: E402


def test_three_partitions_in_separate_processes_then_finalize_equal_one_build(tmp_path):
    root = make_folder_dataset(tmp_path / "data", per_class=5, seed=11)
    add_bad_files(root)  # 20 images, 10 blocks of 2: partitions own blocks 0-2, 3-5, 6-9
    out = tmp_path / "parted"

    def partition(index: int) -> subprocess.Popen:
        command = [sys.executable, "-m", "kamim", "cache", "--dataset", "folder", "--data-root", str(root),
                   "--detector", "orb", "--block-size", "2", "--workers", "1", "--num-partitions", "3",
                   "--partition", str(index), "--out", str(out)]  # fmt: skip
        return subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)

    first = [partition(0), partition(2)]
    outputs = [p.communicate(timeout=300)[0] for p in first]
    assert [p.returncode for p in first] == [0, 0]
    assert all("kamim cache finalize" in text for text in outputs)
    assert not (out / "manifest.json").exists()

    early = CliRunner().invoke(main, ["cache", "finalize", str(out)])
    assert early.exit_code == 2
    assert "3 of 10 blocks are not built yet (blocks 3-5)" in early.output
    assert not (out / "manifest.json").exists()

    last = partition(1)
    last.communicate(timeout=300)
    assert last.returncode == 0
    done = CliRunner().invoke(main, ["cache", "finalize", str(out)])
    assert done.exit_code == 0, done.output
    assert "15 images ok, 5 bad" in done.output

    single = build_cache(
        CacheConfig(
            dataset="folder",
            data_root=str(root),
            detector="orb",
            block_size=2,
            workers=1,
            out=str(tmp_path / "one"),
        )
    )
    assert tree_bytes(out) == tree_bytes(single)
