"""``kamim pretrain --recipe``: the defaults are what the README says, ``--recipe original`` gives the
original's values (global batch 2048 over the processes), and flags given explicitly win."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner
from train_helpers import TINY_VIT, make_folder

from kamim.errors import UserError
from kamim.train.pretrain import PretrainConfig, config_from_options
from kamim.train.pretrain_cli import given_options, pretrain
from kamim.train.recipes import fit_global_batch


def parsed(*args: str) -> PretrainConfig:
    """The config the command line gives (click's real parsing), before any device or data is touched."""
    ctx = pretrain.make_context("pretrain", list(args))
    return config_from_options(dict(ctx.params), given_options(ctx))


def test_the_defaults_are_the_documented_kamim_defaults():
    cfg = fit_global_batch(parsed(), world=1)
    assert cfg.recipe == "kamim" and cfg.model == "vit_t" and cfg.init == "hf"
    assert cfg.batch_size * cfg.accumulation == 64  # the effective batch on one device: not 2048
    assert (cfg.lr, cfg.weight_decay, cfg.warmup_lr, cfg.min_lr, cfg.clip_grad) == (8e-4, 0.05, 1e-6, 1e-5, 1.0)
    assert (cfg.keypoints, cfg.precision, cfg.epochs, cfg.steps) == ("auto", "auto", None, None)


def test_recipe_original_sets_the_originals_values():
    cfg = parsed("--recipe", "original")
    assert (cfg.model, cfg.init, cfg.precision, cfg.keypoints, cfg.detector) == ("vit_b", "hf", "bf16", "device", "fast")
    assert (cfg.weight_ps, cfg.temperature, cfg.epochs, cfg.steps, cfg.warmup_steps) == (8, 0.25, 110, None, None)
    assert (cfg.lr, cfg.weight_decay, cfg.warmup_lr, cfg.min_lr, cfg.clip_grad) == (8e-4, 0.05, 1e-6, 1e-5, 1.0)
    one = fit_global_batch(cfg, world=1)
    assert (one.batch_size, one.accumulation) == (1024, 2)
    for world, micro, accumulation in ((2, 1024, 1), (8, 256, 1)):  # DDP: the per-device share of 2048
        fitted = fit_global_batch(cfg, world)
        assert (fitted.batch_size, fitted.accumulation) == (micro, accumulation)
        assert fitted.batch_size * fitted.accumulation * world == 2048


def test_explicit_flags_win_and_are_named(capsys):
    cfg = parsed("--recipe", "original", "--model", "vit_s", "--batch-size", "256", "--lr", "1e-4")
    note = capsys.readouterr().err
    assert "given explicitly, so kept: --batch-size, --lr, --model" in note
    assert (cfg.model, cfg.lr, cfg.min_lr) == ("vit_s", 1e-4, 1e-5)
    fitted = fit_global_batch(cfg, world=1)
    assert (fitted.batch_size, fitted.accumulation) == (256, 8)  # still 2048 per optimiser step
    fixed = fit_global_batch(parsed("--recipe", "original", "--accumulation", "3"), world=1)
    assert (fixed.global_batch, fixed.batch_size, fixed.accumulation) == (None, 1024, 3)  # the user's batch
    with pytest.raises(UserError, match="--batch-size 300 does not divide"):
        fit_global_batch(parsed("--recipe", "original", "--batch-size", "300"), world=1)
    with pytest.raises(UserError, match="--global-batch 2048: must be a positive multiple of the 3"):
        fit_global_batch(parsed("--recipe", "original"), world=3)


def test_recipe_original_runs_and_resumes_with_its_values(tmp_path):
    root = make_folder(tmp_path / "data", count=8)
    run = tmp_path / "run"
    overrides = [a for o in TINY_VIT for a in ("--override", o)]
    args = ["--recipe", "original", *overrides, "--dataset", "folder", "--data-root", str(root), "--device", "cpu",
            "--batch-size", "2", "--global-batch", "4", "--steps", "2", "--workers", "0", "--grid-every", "0",
            "--out", str(run)]
    first = CliRunner().invoke(pretrain, [*args, "--stop-after", "1"])
    assert first.exit_code == 0, first.output
    assert "given explicitly, so kept: --batch-size, --global-batch, --steps" in first.output
    assert "effective batch 4 = 2 x 2 accumulation x 1 rank(s)" in first.output
    saved = json.loads((run / "config.json").read_text())
    assert (saved["model"], saved["overrides"]["embed_dim"], saved["keypoints"], saved["precision"]) == (
        "vit_b", 32, "device", "bf16")
    assert (saved["batch_size"], saved["accumulation"], saved["global_batch"], saved["recipe"]) == (2, 2, 4, "original")
    again = CliRunner().invoke(pretrain, [*args, "--resume"])  # the same recipe resolves to the same settings
    assert again.exit_code == 0, again.output
    assert (run / "model.safetensors").is_file()
    assert json.loads((run / "config.json").read_text())["accumulation"] == 2
