"""A newcomer's path: make variables reach the verbs, `make cache` and `make pretrain` name the same
cache, sweeps refuse a bad list value before any work, and a mistyped flag is answered without torch."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from kamim.preprocess.build import CacheConfig, output_dir
from kamim.train.pretrain import PretrainConfig
from kamim.train.setup import training_cache_path

REPO = Path(__file__).resolve().parents[1]


def make_n(*args: str) -> str:
    """``make -n`` (print, run nothing) with the install stamp treated as fresh."""
    done = subprocess.run(["make", "-n", "-o", "install", "-o", ".venv/.installed", *args], cwd=REPO,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    return done.stdout


@pytest.mark.parametrize("target", ["cache", "pretrain", "linprobe"])
def test_make_passes_data_root_only_when_set(target):
    assert "--data-root /d/x" in make_n(target, "DATASET=folder", "DATA_ROOT=/d/x")
    assert "--data-root" not in make_n(target)


def test_make_pretrain_reads_the_cache_format_make_cache_wrote():
    assert "--format wds" in make_n("cache", "FORMAT=wds")
    assert "--cache-format wds" in make_n("pretrain", "FORMAT=wds", "DETECTOR=sift")
    assert "--cache-format zarr" in make_n("pretrain")


@pytest.mark.parametrize("fmt", ["zarr", "wds"])
@pytest.mark.parametrize("data_root", [None, "/d/x"])
def test_cache_and_pretrain_compute_the_same_default_path(fmt, data_root):
    built = output_dir(CacheConfig(dataset="folder", data_root=data_root, detector="sift", format=fmt))
    read, named = training_cache_path(PretrainConfig(dataset="folder", data_root=data_root, detector="sift",
                                                     cache_format=fmt))
    assert built == read and not named and built.suffix == f".{fmt}"


def test_sweep_refuses_a_bad_value_anywhere_in_a_list_before_any_work(tmp_path):
    from kamim.evaluate.cli_sweep import sweep

    out = tmp_path / "sweep"
    for flags, flag in ((["--weight-ps", "8,7"], "--weight-ps 7"), (["--temperature", "0.25,0"], "--temperature"),
                        (["--detector", "fast,surf"], "--detector surf")):
        result = CliRunner().invoke(sweep, [*flags, "--steps", "1", "--out", str(out)])
        assert result.exit_code == 2 and flag in result.output, result.output
        assert len(result.output.strip().splitlines()) == 1 and not out.exists()


def test_a_mistyped_flag_is_answered_before_torch_is_imported():
    code = ("import sys\nfrom kamim.cli import main\n"
            "for verb in ('pretrain', 'linprobe', 'sweep', 'cache', 'finetune', 'weights'):\n"
            "    try:\n        main([verb, '--bogus-flag'])\n    except SystemExit as e:\n        assert e.code == 2\n"
            "print('torch' in sys.modules, 'timm' in sys.modules)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.stdout.strip() == "False False", done.stdout + done.stderr


def test_light_choices_agree_with_the_modules_that_own_them():
    from kamim.evaluate import choices as evaluate_choices
    from kamim.evaluate.features import POOLS, RESIZES
    from kamim.evaluate.linprobe import RECIPES
    from kamim.evaluate.recipe import FINETUNE_RECIPES
    from kamim.train import choices
    from kamim.train.device import DEVICES, PRECISIONS
    from kamim.train.init import INITS
    from kamim.train.models import MODELS

    assert (choices.DEVICES, choices.PRECISIONS, choices.INITS) == (DEVICES, PRECISIONS, INITS)
    assert tuple(MODELS) == choices.MODEL_NAMES
    assert (evaluate_choices.POOLS, evaluate_choices.RESIZES, evaluate_choices.PROBE_RECIPES) == (POOLS, RESIZES,
                                                                                               RECIPES)
    assert tuple(FINETUNE_RECIPES) == evaluate_choices.FINETUNE_RECIPE_NAMES
