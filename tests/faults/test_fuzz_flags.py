"""Fuzzer 1 (Hypothesis): any value of any flag of ``pretrain``, ``cache``, ``linprobe``, ``finetune`` and
``convert`` ends in exit 0 with a finite result, or in exit 2 with one ``Error:`` line. Never a traceback,
never NaN output with exit 0.

The flags are read from the click commands themselves, so a flag added later is fuzzed too (paths,
booleans and --wandb aside). Values: negative, zero, huge, nan, inf, non-numeric, and Hypothesis'
integers and floats. Each case runs the real CLI in this process (click's runner) on a tiny real dataset
and model. Most values are refused by the validation table before any torch work; an accepted value is
trained for real and its output checked finite. An accepted value that would make the case expensive
(e.g. --accumulation 4096, --epochs 500, 8 loader workers) is run against a missing --data-root instead:
it must get past validation and stop at the data with one line. A few cases also run as real processes.

Cases are the same on every run (derandomized, for CI); KAMIM_FUZZ_RANDOM=1 draws new ones each run,
KAMIM_FUZZ_EXAMPLES=K runs K times as many, KAMIM_FUZZ_REPORT=FILE writes the tally.
"""

from __future__ import annotations

import json
import math
import os
import re
import subprocess
import tempfile
from collections import Counter
from pathlib import Path

import click
import pytest
import torch
from fault_files import make_folder, run_kamim
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from safetensors.torch import load_file, save_file

from kamim.cli import main
from kamim.train.checkpoint import export_model, latest_checkpoint, load_checkpoint
from kamim.train.models import build_model

pytestmark = pytest.mark.fault

SCALE = float(os.environ.get("KAMIM_FUZZ_EXAMPLES", "1"))
EXAMPLES = {"pretrain": 70, "cache": 30, "linprobe": 35, "finetune": 35, "convert": 20}
TALLY: Counter = Counter()
HOSTILE = ["nan", "-nan", "NaN", "inf", "-inf", "Infinity", "0", "-0", "0.0", "-1", "-5", "1", "2", "3", "4", "8", "16",
           "0.5", "1e-3", "3.5", "1e30", "-1e30", "1e309", "1e-320", str(2**31), str(2**63), str(2**64),
           str(-(2**63)), "99999999999", "abc", "", " ", "0x10", "1_000", "1e", "--", "None", "true", "1,2",
           "depth=1", "\x00", "é"]
SKIP = {"out", "data_root", "cache", "checkpoint", "wandb"}  # paths (kept in the test's tmp) and network
# Accepted values above these make a case slow, not wrong: they are checked up to the data stage only.
COSTLY = {"accumulation": 4, "global_batch": 8, "workers": 1, "epochs": 2, "warmup_epochs": 2, "steps": 10**12,
          "detect_size": 1024, "store_size": 1024, "block_size": 10**6, "num_partitions": 4}
TINY = ["--override", "depth=1", "--override", "embed_dim=32", "--override", "num_heads=2"]


def fuzzed_options(verb: str) -> list[click.Option]:
    command = main.get_command(click.Context(main), verb)
    return [p for p in command.params if isinstance(p, click.Option) and not p.is_flag and p.name not in SKIP]


def flag_of(option: click.Option) -> str:
    return max(option.opts, key=len)


values = st.one_of(st.sampled_from(HOSTILE), st.integers(-(10**20), 10**20).map(str),
                   st.floats(allow_nan=True, allow_infinity=True).map(repr),
                   st.floats(min_value=-10, max_value=10).map(lambda v: f"{v:g}"))


def number(text: str) -> float | None:
    try:
        return float(text)
    except ValueError:
        return None


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """A tiny image folder (train + val), a tiny pretrained export and an HF-keyed ViT checkpoint."""
    root = tmp_path_factory.mktemp("fuzz")
    data = make_folder(root / "data", per_class=4, size=64)
    make_folder(root / "data", split="val", per_class=1, size=64)
    torch.manual_seed(0)
    model = build_model("vit_t", depth=1, embed_dim=32, num_heads=2)
    run = root / "run"
    export_model(model, {"model": "vit_t", "img_size": 192, "overrides": {"depth": 1, "embed_dim": 32,
                                                                          "num_heads": 2}}, run)
    hf = root / "hf.safetensors"
    save_file(hf_keys(model.state_dict()), str(hf))
    return {"root": root, "data": data, "run": run, "hf": hf}


def hf_keys(ours: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Our tiny ViT's weights under transformers 4.x ViTForMaskedImageModeling names (convert's input)."""
    names = {"encoder.cls_token": "vit.embeddings.cls_token", "mask_token": "vit.embeddings.mask_token",
             "encoder.pos_embed": "vit.embeddings.position_embeddings"}
    out = {}
    for key, value in ours.items():
        if key in names:
            out[names[key]] = value
        elif key.startswith("encoder.patch_embed.proj."):
            out["vit.embeddings.patch_embeddings.projection." + key.rsplit(".", 1)[1]] = value
        elif key.startswith("encoder.norm."):
            out["vit.layernorm." + key.rsplit(".", 1)[1]] = value
        elif key.startswith("decoder."):
            out[key] = value
        elif match := re.fullmatch(r"encoder\.blocks\.(\d+)\.(.+)\.(weight|bias)", key):
            block, part, kind = match.groups()
            prefix = f"vit.encoder.layer.{block}."
            if part == "attn.qkv":
                for name, piece in zip(("query", "key", "value"), value.chunk(3), strict=True):
                    out[f"{prefix}attention.attention.{name}.{kind}"] = piece
            else:
                hf = {"attn.proj": "attention.output.dense", "mlp.fc1": "intermediate.dense",
                      "mlp.fc2": "output.dense", "norm1": "layernorm_before", "norm2": "layernorm_after"}[part]
                out[f"{prefix}{hf}.{kind}"] = value
    return {k: v.contiguous() for k, v in out.items()}


def base_args(verb: str, world: dict, out: Path, data: Path) -> list[str]:
    """A tiny, fast, valid invocation of ``verb`` (the fuzzed flag is appended after it and wins)."""
    if verb == "pretrain":
        return ["pretrain", "--dataset", "folder", "--data-root", str(data), "--method", "kamim", "--keypoints",
                "online", "--device", "cpu", "--workers", "0", "--batch-size", "2", "--steps", "2", "--stop-after",
                "1", "--grid-every", "0", "--out", str(out), *TINY]
    if verb == "cache":
        return ["cache", "--dataset", "folder", "--data-root", str(data), "--detector", "fast", "--workers", "1",
                "--block-size", "4", "--out", str(out / "c.zarr")]
    if verb in ("linprobe", "finetune"):
        common = ["--checkpoint", str(world["run"]), "--dataset", "folder", "--data-root", str(data), "--epochs",
                  "1", "--batch-size", "4", "--workers", "0", "--device", "cpu", "--out", str(out)]
        extra = ["--feature-batch-size", "8"] if verb == "linprobe" else ["--eval-batch-size", "4"]
        return [verb, *common, *extra]
    return ["convert", str(world["hf"]), "--model", "vit_t", "--out", str(out / "x.safetensors"), "--num-heads", "2"]


def finite_file(path: Path) -> bool:
    return all(bool(torch.isfinite(t).all()) for t in load_file(path).values() if t.is_floating_point())


def assert_finite_result(verb: str, out: Path) -> None:
    """What an exit 0 produced is finite (weights, metrics, accuracies)."""
    if verb == "pretrain":
        if (out / "model.safetensors").exists():
            assert finite_file(out / "model.safetensors")
        state = load_checkpoint(latest_checkpoint(out))
        assert all(bool(torch.isfinite(t).all()) for t in state["model"].values() if t.is_floating_point())
        for line in (out / "metrics.jsonl").read_text().splitlines():
            loss = json.loads(line)["loss"]
            assert loss is None or math.isfinite(loss)  # None: a step --nan-policy skip dropped (counted)
    elif verb == "cache":
        from kamim.cache import open_cache

        if (out / "c.zarr" / "manifest.json").exists():
            cache = open_cache(out / "c.zarr")
            assert all(bool(torch.isfinite(torch.from_numpy(cache.points(i))).all()) for i in range(len(cache)))
        else:  # one partition of several: its blocks, finalized later
            assert list((out / "c.zarr" / "parts").glob("block-*"))
    elif verb in ("linprobe", "finetune"):
        result = json.loads((out / f"{verb}.json").read_text())
        assert math.isfinite(result["top1"])  # top5 is null with fewer than 5 classes
        assert result["top5"] is None or math.isfinite(result["top5"])
        assert finite_file(out / ("head.safetensors" if verb == "linprobe" else "finetuned.safetensors"))
    else:
        assert finite_file(out / "x.safetensors")


def invoke(args: list[str]) -> tuple[int, str]:
    from click.testing import CliRunner

    result = CliRunner().invoke(main, args)
    stderr = result.stderr
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        import traceback

        stderr += "".join(traceback.format_exception(result.exception))
    return result.exit_code, stderr


def check_case(verb: str, option: click.Option, value: str, world: dict) -> None:
    name = option.name
    out = Path(tempfile.mkdtemp(dir=world["root"], prefix=f"{verb}-"))
    amount = number(value)
    costly = name in COSTLY and amount is not None and math.isfinite(amount) and amount > COSTLY[name]
    costly = costly or (verb == "cache" and name == "workers" and amount is not None and amount != 1)
    costly = costly or (name == "override" and value not in ("1", "2") and amount is not None and amount > 0)
    data = world["root"] / "no-such-data" if costly else world["data"]
    fuzzed = [flag_of(option), f"embed_dim={value}" if name == "override" else value]
    code, stderr = invoke([*base_args(verb, world, out, data), *fuzzed])
    assert "Traceback" not in stderr, (verb, fuzzed, stderr[-3000:])
    errors = [line for line in stderr.splitlines() if line.startswith("Error:")]
    if code == 2:
        assert len(errors) == 1 and stderr.strip().splitlines()[-1] == errors[0], (verb, fuzzed, stderr[-2000:])
        TALLY[f"{verb} refused"] += 1
        if costly and "no-such-data" in errors[0]:
            TALLY[f"{verb} accepted, stopped at the data"] += 1
        return
    assert code == 0 and not costly, (verb, fuzzed, code, stderr[-3000:])
    assert_finite_result(verb, out)
    TALLY[f"{verb} ran, finite"] += 1


def fuzz(verb: str):  # noqa: ANN201
    options = fuzzed_options(verb)

    @settings(max_examples=max(1, int(EXAMPLES[verb] * SCALE)), deadline=None, database=None,
              derandomize=os.environ.get("KAMIM_FUZZ_RANDOM") != "1",
              suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
    @given(option=st.sampled_from(options), value=values)
    def case(world, option, value):  # noqa: ANN001, ANN202
        TALLY["cases"] += 1
        check_case(verb, option, value, world)

    return case


test_fuzz_pretrain_flags = fuzz("pretrain")
test_fuzz_cache_flags = fuzz("cache")
test_fuzz_linprobe_flags = fuzz("linprobe")
test_fuzz_finetune_flags = fuzz("finetune")
test_fuzz_convert_flags = fuzz("convert")


@pytest.mark.parametrize("args", [
    ("pretrain", "--lr", "nan"),
    ("pretrain", "--seed", str(2**64)),
    ("convert", "hf", "--model", "vit_t", "--out", "x.safetensors", "--num-heads", "-1"),
])
def test_real_process_refuses_in_one_line(world, tmp_path, args):
    args = [str(world["hf"]) if a == "hf" else a for a in args]
    if args[0] == "pretrain":
        args = [*base_args("pretrain", world, tmp_path / "run", world["data"]), *args[1:]]
    proc: subprocess.CompletedProcess = run_kamim(*args, cwd=tmp_path)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr[-2000:]
    assert proc.stderr.strip().splitlines()[-1].startswith("Error: --")
    TALLY["real processes"] += 1


@pytest.mark.parametrize("heads", ["1", "2", "4", "32"])
def test_convert_with_heads_that_divide_the_width_gives_a_finite_export(world, tmp_path, heads):
    """The accepted side of --num-heads (the derandomized cases above draw only refused values)."""
    args = base_args("convert", world, tmp_path, world["data"])
    code, stderr = invoke([*args, "--num-heads", heads])
    assert code == 0, stderr[-2000:]
    assert_finite_result("convert", tmp_path)
    TALLY["convert ran, finite"] += 1


def test_fuzz_tally():
    """Runs last in this file: prints (and with KAMIM_FUZZ_REPORT, writes) how many cases ran."""
    print(dict(TALLY))
    if os.environ.get("KAMIM_FUZZ_REPORT"):
        Path(os.environ["KAMIM_FUZZ_REPORT"]).write_text(json.dumps(dict(TALLY), indent=2, sort_keys=True) + "\n")
    assert TALLY["cases"] == 0 or any(k.endswith("ran, finite") for k in TALLY)
