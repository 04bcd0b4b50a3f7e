"""Pretraining set-up helpers: find (or build) the keypoint cache, parse model overrides, check resumes."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from kamim.config import config_dict
from kamim.errors import UserError, UserErrorLines
from kamim.paths import default_cache_dir

from .keypoint_mode import plain_cache_note

# Settings that may change between a run and its resume; everything else must match. --steps/--epochs
# extend (or shorten) a run: the restored scheduler keeps the original cosine, so extra steps run at --min-lr.
RESUMABLE_CHANGES = {"out", "resume", "device", "workers", "log_every", "save_every", "grid_every", "stop_after", "nan_policy",
                     "keep_checkpoints", "tensorboard", "wandb", "cache", "data_root", "steps", "epochs", "save_optimizer",
                     "compile", "decode",
                     "init", "recipe"}  # init: the weights come from the checkpoint; recipe: its values are compared one by one
# Not carried over from config.json on --resume: they belong to this machine and this invocation.
RESUME_NOT_CARRIED = {"out", "resume", "device", "workers", "stop_after"}
INT_LISTS = {"depths", "num_heads"}


def parse_overrides(items: tuple[str, ...] | list[str]) -> dict[str, Any]:
    """``("depth=2", "embed_dim=32", "depths=1,1,1,1")`` -> ``{"depth": 2, "embed_dim": 32, "depths": [1,1,1,1]}``."""
    out: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        try:
            if not sep:
                raise ValueError
            numbers = [int(v) for v in value.split(",")]
        except ValueError:
            raise UserError(f"--override {item!r}: use NAME=INT or NAME=INT,INT,... (e.g. depth=2)") from None
        out[key] = numbers if (key in INT_LISTS and "," in value) or len(numbers) > 1 else numbers[0]
    return out


def resume_mismatches(saved: dict[str, Any], current: dict[str, Any]) -> dict[str, tuple[Any, Any]]:
    """{setting: (saved, now)} for settings that would make the resumed run differ from the original."""
    keys = (set(saved) | set(current)) - RESUMABLE_CHANGES
    return {k: (saved.get(k), current.get(k)) for k in sorted(keys) if saved.get(k) != current.get(k)}


def option_flag(name: str) -> str:
    """The command-line flag of a config field (``overrides`` -> ``--override``)."""
    return "--override" if name == "overrides" else "--" + name.replace("_", "-")


def resume_config(cfg: Any, given: set[str]) -> Any:
    """``cfg`` completed from the run's own ``config.json``, so ``kamim pretrain --out RUN --resume`` alone
    continues a run. Flags given again (``given``: config field names) must agree with the run unless they
    are in RESUMABLE_CHANGES; every conflict is listed, one per line, with the flag to drop."""
    if cfg.out is None:
        raise UserError("--resume needs --out RUN_DIR (the run to continue)")
    path = Path(cfg.out) / "config.json"
    try:
        saved = json.loads(path.read_text())
    except FileNotFoundError:
        if any((Path(cfg.out) / "checkpoints").glob("step-*.pt")):
            return cfg  # config.json lost: the checkpoint's own config is compared with the flags instead
        raise UserError(f"--resume: {path} not found; is {cfg.out} a kamim pretrain run dir?") from None
    except (OSError, ValueError) as error:
        raise UserError(f"--resume: {path} is unreadable ({error}); restore it or start a new --out") from None
    now = config_dict(cfg)
    conflicts = [f"{option_flag(k)} {_shown(now[k])}: the run used {_shown(saved[k])}; drop {option_flag(k)}"
                 for k in sorted(given) if k in saved and k not in RESUMABLE_CHANGES and saved[k] != now[k]]
    if conflicts:
        flags = ", ".join(option_flag(k) for k in sorted(given) if k in saved and k not in RESUMABLE_CHANGES
                          and saved[k] != now[k])
        raise UserErrorLines(f"--resume: {len(conflicts)} flag(s) differ from the run in {cfg.out} (its config.json): "
                             f"{flags}; drop them to continue the run as it was:", conflicts)
    carried = {k: _decoded(v) for k, v in saved.items()
               if k in now and k not in given and k not in RESUME_NOT_CARRIED}
    if "epochs" in given and "steps" not in given:
        carried["steps"] = None  # --epochs given now decides the length
    return dataclasses.replace(cfg, **carried)


def _shown(value: Any) -> str:
    if isinstance(value, dict):
        return " ".join(f"{k}={','.join(map(str, v)) if isinstance(v, list) else v}" for k, v in value.items()) or "(none)"
    return str(value)


def _decoded(value: Any) -> Any:
    return float(value) if value in ("inf", "-inf") else value  # config_dict writes infinite floats as "inf"


def is_wds_cache(cfg: Any) -> bool:
    """``--cache`` names a complete webdataset cache: its shards carry the images, so training from it
    needs neither the dataset's files nor its fingerprint check (the manifest names the dataset)."""
    path, named = training_cache_path(cfg)
    if not (path / "manifest.json").is_file():
        return not named and path.suffix == ".wds"  # the default wds cache, built before training
    from kamim.cache.manifest import read_manifest

    return read_manifest(path)["format"] == "wds"


def training_cache_path(cfg: Any) -> tuple[Path, bool]:
    """(the cache pretraining reads, whether ``--cache`` named it). The default is where ``kamim cache``
    writes for the same --dataset/--split/--data-root/--detector/--detect-size/--gray and --cache-format."""
    if cfg.cache:
        return Path(cfg.cache), True
    fmt = getattr(cfg, "cache_format", "zarr")
    return default_cache_dir(cfg.dataset, cfg.split, cfg.detector, cfg.detect_size, fmt, cfg.gray,
                             data_root=cfg.data_root), False


def open_training_cache(cfg: Any, dataset: Any, log: Callable[..., None]) -> Any:
    """The cache for ``cfg`` (``--cache`` or the default location, built there first if absent), checked
    against the dataset's fingerprint and the requested detector."""
    from kamim.cache import open_cache

    path, named = training_cache_path(cfg)
    if named and not path.exists():
        raise UserError(f"--cache {path} does not exist; build it with `kamim cache` or leave --cache out")
    if not named and not (path / "manifest.json").exists():
        fmt = path.suffix.lstrip(".")
        log(f"no keypoint cache at {path}: building it first (kamim cache --dataset {cfg.dataset} "
            f"--split {cfg.split} --detector {cfg.detector} --detect-size {cfg.detect_size} --format {fmt})",
            err=True)
        from kamim.preprocess.build import CacheConfig, build_cache

        path = build_cache(CacheConfig(dataset=cfg.dataset, split=cfg.split, data_root=cfg.data_root,
                                       detector=cfg.detector, detect_size=cfg.detect_size, gray=cfg.gray,
                                       format=fmt, out=str(path)))
    cache = open_cache(path)
    manifest = cache.manifest
    if (note := plain_cache_note(manifest, path)) is not None:
        log(note, err=True)
    for key in ("detector", "detect_size", "gray"):
        wanted = getattr(cfg, key)
        if manifest[key] != wanted:
            flag = key.replace("_", "-")
            raise UserError(f"--cache {path} was built with {key} {manifest[key]} but --{flag} is {wanted}; "
                            f"pass --{flag} {manifest[key]} or another cache")
    if dataset is not None:
        from kamim.cache.manifest import check_dataset

        check_dataset(manifest, path, dataset, cfg.data_root)  # the fix it prints names --data-root too
    elif (manifest["dataset"]["name"], manifest["dataset"]["split"]) != (cfg.dataset, cfg.split):
        raise UserError(f"--cache {path} holds {manifest['dataset']['name']} {manifest['dataset']['split']}, not "
                        f"--dataset {cfg.dataset} --split {cfg.split}; pass those or another cache")
    log(f"keypoint cache {path} ({manifest['detector']}, detect size {manifest['detect_size']})", err=True)
    return cache


def data_fingerprints(dataset: Any, cache: Any) -> dict[str, str | None]:
    """What a run trains on: the dataset's files (names and sizes, in order) and the keypoint cache's
    identity (the fingerprint of the files it was built from, its detector and size). Saved in every
    checkpoint; ``check_resume_data`` compares them on ``--resume``."""
    found: dict[str, str | None] = {"dataset": dataset.fingerprint() if dataset is not None else None, "cache": None}
    if cache is not None:
        manifest = cache.manifest
        found["cache"] = "/".join(str(v) for v in (manifest["dataset"]["fingerprint"], manifest["dataset"]["count"],
                                                   manifest["detector"], manifest["detect_size"], manifest["gray"]))
    return found


def check_resume_data(checkpoint: dict[str, Any], path: Path, now: dict[str, str | None]) -> None:
    """``--resume`` continues on the data the run started on: files added, removed or resized under
    ``--data-root``, or another ``--cache``/``--data-root`` with other content, are refused in one line."""
    saved = checkpoint.get("data_fingerprints")
    if not isinstance(saved, dict):  # older checkpoints: only the cache's dataset fingerprint (or the dataset's)
        legacy = checkpoint.get("cache_fingerprint")
        if legacy is None:
            return
        saved, now = {"data": legacy}, {"data": (now["cache"] or "").split("/")[0] or now["dataset"]}
    changed = [key for key in sorted(set(saved) | set(now)) if saved.get(key) != now.get(key)]
    if changed:
        what = " and ".join(f"the {key} (fingerprint {saved.get(key)} then, {now.get(key)} now)" for key in changed)
        raise UserError(f"--resume: {path} was trained on other data: {what} changed; files were added, removed or "
                        f"resized, or --data-root/--cache point elsewhere. Resume with the run's data or start a new --out")
