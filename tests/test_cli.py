"""The `kamim` command: help for every verb, lazy imports, one-line errors with exit code 2."""

import subprocess
import sys

import pytest
from click.testing import CliRunner

from kamim.cli import COMMANDS, main


def test_top_level_help_lists_every_verb():
    result = CliRunner().invoke(main, ["--help"])
    assert result.exit_code == 0
    for verb in COMMANDS:
        assert verb in result.output


@pytest.mark.parametrize("verb", sorted(COMMANDS))
def test_each_verb_has_help_with_an_example(verb):
    result = CliRunner().invoke(main, [verb, "--help"])
    assert result.exit_code == 0, result.output
    assert "Example" in result.output or "kamim " in result.output


def test_python_dash_m_works_without_importing_torch():
    code = "import sys, runpy; sys.argv=['kamim','--help']\ntry:\n runpy.run_module('kamim', run_name='__main__')\nexcept SystemExit: pass\nprint('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert "Commands:" in out and out.strip().endswith("False")


def test_user_errors_are_one_line_exit_2(tmp_path):
    for args in (
        ["data", "info", "--dataset", "cifar10", "--data-root", str(tmp_path)],
        ["data", "info", "--dataset", "folder", "--data-root", str(tmp_path)],
        ["data", "info", "--dataset", "nope"],
    ):
        proc = subprocess.run([sys.executable, "-m", "kamim", *args], capture_output=True, text=True)
        assert proc.returncode == 2, proc.stderr
        assert "Traceback" not in proc.stderr
        assert proc.stderr.strip().splitlines()[-1].startswith("Error:")


def test_data_info_on_a_folder(tmp_path):
    from PIL import Image

    (tmp_path / "val" / "a").mkdir(parents=True)
    for i in range(3):
        Image.new("RGB", (30 + i, 20)).save(tmp_path / "val" / "a" / f"{i}.png")
    result = CliRunner().invoke(main, ["data", "info", "--dataset", "folder", "--data-root", str(tmp_path), "--split", "val"])
    assert result.exit_code == 0, result.output
    assert "images    3" in result.output and "width 30-32" in result.output
