"""Fuzzer 2 (Hypothesis): one byte flip, truncation or deletion of any file of a small zarr cache, a wds
cache, a run dir or a checkpoint gives EXACTLY the clean result, or a UserError (exit 2) whose one line
names the damaged file or its directory. Never a silently different result, never a traceback.

Each artifact is built once per module (8 real photo crops, a 1-block vit_t, 2 steps); every example
copies it, applies one mutation and runs the real consumer:
- zarr cache: ``open_cache`` -> ok flags, counts and ``points(i)`` for every image;
- wds cache: ``open_cache`` -> every (image, points, label) in order;
- run dir: ``run_pretrain(--resume)`` for one more step -> the exported weights;
- checkpoint: ``load_pretrained`` of a ``.pt`` checkpoint and of the ``.safetensors`` export + ``.json``.
Small enough for CI (derandomized, so a failure reproduces): the counts per artifact are in EXAMPLES.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from fault_files import make_folder
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kamim.errors import UserError

pytestmark = pytest.mark.fault
SCALE = int(os.environ.get("KAMIM_FUZZ_SCALE", "1"))  # a longer campaign: KAMIM_FUZZ_SCALE=10
EXAMPLES = {kind: count * SCALE for kind, count in {"zarr": 15, "wds": 60, "run": 15, "checkpoint": 60}.items()}
TINY = {"depth": 1, "embed_dim": 32, "num_heads": 2}
OUTCOMES: dict[str, dict[str, int]] = {}


def fuzz_settings(kind: str):  # noqa: ANN201
    return settings(max_examples=EXAMPLES[kind], deadline=None, derandomize=True, database=None,
                    suppress_health_check=list(HealthCheck), print_blob=True)


def files_of(root: Path) -> list[tuple[str, int]]:
    return sorted((str(p.relative_to(root)), p.stat().st_size) for p in root.rglob("*") if p.is_file())


@st.composite
def mutations(draw, files: list[tuple[str, int]]):  # noqa: ANN001, ANN201
    """(relative path, kind, offset, bit): offsets favour the first KiB (headers, indexes, metadata)."""
    name, size = draw(st.sampled_from(files))
    kind = draw(st.sampled_from(["flip", "truncate", "delete"])) if size else "delete"
    offset = draw(st.one_of(st.integers(0, min(size, 1024) - 1), st.integers(0, size - 1))) if size else 0
    return name, kind, offset, draw(st.integers(0, 7))


def mutate(root: Path, mutation: tuple[str, str, int, int]) -> Path:
    name, kind, offset, bit = mutation
    path = root / name
    if kind == "delete":
        path.unlink()
    elif kind == "truncate":
        os.truncate(path, offset)
    else:
        data = bytearray(path.read_bytes())
        data[offset] ^= 1 << bit
        path.write_bytes(bytes(data))
    return path


def judge(kind: str, consume, clean, root: Path, mutation) -> None:  # noqa: ANN001
    """Run ``consume(copy)``: its result must equal ``clean`` or it must raise a UserError naming the file."""
    with tempfile.TemporaryDirectory() as scratch:
        copy = Path(shutil.copytree(root, Path(scratch) / root.name))
        path = mutate(copy, mutation)
        tally = OUTCOMES.setdefault(kind, {"cases": 0, "same result": 0, "one-line error": 0})
        tally["cases"] += 1
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                result = consume(copy)
        except UserError as error:
            message = error.format_message()
            # the file, or a directory holding it inside the artifact (a zarr array, the checkpoints
            # folder); the artifact's own directory only for its top-level files
            names = [path, *[p for p in path.parents if copy in p.parents]]
            names += [copy] if path.parent == copy else []
            assert any(str(n) in message for n in names), f"{mutation}: the error names neither {path} nor its directory: {message}"
            tally["one-line error"] += 1
            return
        assert equal(result, clean), f"{mutation}: a silently different result"
        tally["same result"] += 1


def equal(a, b) -> bool:  # noqa: ANN001
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(equal(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return isinstance(b, (list, tuple)) and len(a) == len(b) and all(equal(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, torch.Tensor):
        return isinstance(b, torch.Tensor) and a.dtype == b.dtype and a.shape == b.shape and torch.equal(a, b)
    if isinstance(a, np.ndarray):
        return isinstance(b, np.ndarray) and a.dtype == b.dtype and a.shape == b.shape and np.array_equal(a, b)
    return a == b


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    root = tmp_path_factory.mktemp("fuzz")
    before = os.environ.get("KAMIM_DERIVED_DIR")
    os.environ["KAMIM_DERIVED_DIR"] = str(root / "derived")  # the zarr reader's flat files, not beside copies
    yield root, make_folder(root / "data", per_class=4, size=96)
    if before is None:  # leave the environment as the other test modules expect it
        os.environ.pop("KAMIM_DERIVED_DIR", None)
    else:
        os.environ["KAMIM_DERIVED_DIR"] = before


@pytest.fixture(scope="module")
def caches(base):
    from kamim.preprocess.build import CacheConfig, build_cache

    root, data = base
    made = {}
    for fmt in ("zarr", "wds"):
        made[fmt] = build_cache(CacheConfig(dataset="folder", data_root=str(data), detector="fast", workers=1,
                                            block_size=4, format=fmt, out=str(root / f"c.{fmt}")))
    return made


def read_zarr(path: Path):  # noqa: ANN201
    from kamim.cache import open_cache

    cache = open_cache(path)
    return {"ok": np.asarray(cache.ok), "counts": np.asarray(cache.counts),
            "points": [np.asarray(cache.points(i)) for i in range(len(cache))], "len": len(cache)}


def read_wds(path: Path):  # noqa: ANN201
    from kamim.cache import open_cache

    return [(image, points, label) for image, points, label in open_cache(path)]


def test_fuzz_zarr_cache(caches):
    clean = read_zarr(caches["zarr"])
    files = files_of(caches["zarr"])

    @fuzz_settings("zarr")
    @given(mutation=mutations(files))
    def check(mutation) -> None:  # noqa: ANN001
        judge("zarr", read_zarr, clean, caches["zarr"], mutation)

    check()


def test_fuzz_wds_cache(caches):
    clean = read_wds(caches["wds"])
    files = files_of(caches["wds"])

    @fuzz_settings("wds")
    @given(mutation=mutations(files))
    def check(mutation) -> None:  # noqa: ANN001
        judge("wds", read_wds, clean, caches["wds"], mutation)

    check()


def pretrain_config(data: Path, out: Path, **changes):  # noqa: ANN201
    from kamim.train.pretrain import PretrainConfig

    return PretrainConfig(model="vit_t", overrides=dict(TINY), method="simmim", dataset="folder", data_root=str(data),
                          device="cpu", out=str(out), batch_size=2, workers=0, steps=3, save_every=1,
                          grid_every=0, keep_checkpoints=2, **changes)


@pytest.fixture(scope="module")
def run_dir(base):
    from kamim.train.pretrain import run_pretrain

    root, data = base
    return run_pretrain(pretrain_config(data, root / "run", stop_after=2)), data


def export_weights(run: Path) -> dict:
    from safetensors.torch import load_file

    return load_file(str(run / "model.safetensors"))


def test_fuzz_run_dir(run_dir):
    from kamim.train.pretrain import run_pretrain

    run, data = run_dir

    def resume(copy: Path) -> dict:
        run_pretrain(pretrain_config(data, copy, resume=True))
        return export_weights(copy)

    with tempfile.TemporaryDirectory() as scratch:
        clean = resume(Path(shutil.copytree(run, Path(scratch) / run.name)))
    files = files_of(run)

    @fuzz_settings("run")
    @given(mutation=mutations(files))
    def check(mutation) -> None:  # noqa: ANN001
        judge("run", resume, clean, run, mutation)

    check()


@pytest.fixture(scope="module")
def checkpoint_files(run_dir, base):
    from kamim.train.pretrain import run_pretrain

    run, data = run_dir
    root = base[0]
    done = run_pretrain(pretrain_config(data, Path(shutil.copytree(run, root / "finished")), resume=True))
    folder = root / "checkpoint"
    folder.mkdir()
    for name in ("model.safetensors", "model.json"):
        shutil.copy(done / name, folder / name)
    shutil.copy(sorted((done / "checkpoints").glob("step-*.pt"))[-1], folder / "step.pt")
    return folder


def load_both(folder: Path):  # noqa: ANN201
    from kamim.train.checkpoint import load_pretrained

    out = []
    for name in ("step.pt", "model.safetensors"):
        model, info = load_pretrained(folder / name)
        out.append((model.state_dict(), {k: v for k, v in info.items() if k != "source"}))
    return out


def test_fuzz_checkpoint_and_export(checkpoint_files):
    clean = load_both(checkpoint_files)
    files = files_of(checkpoint_files)

    @fuzz_settings("checkpoint")
    @given(mutation=mutations(files))
    def check(mutation) -> None:  # noqa: ANN001
        judge("checkpoint", load_both, clean, checkpoint_files, mutation)

    check()


def test_fuzz_outcomes_are_recorded():
    """Prints the tally (run with -s): cases per artifact and how each ended."""
    for kind, tally in sorted(OUTCOMES.items()):
        print(f"fuzz {kind}: {tally}")
    assert all(t["cases"] > 0 for t in OUTCOMES.values())
