"""Makers of bad and hostile files for the fault suite (imported by tests/faults/test_*.py).

Every bad image is real bytes a user could have on disk: zero bytes, a truncated JPEG/PNG, text with an
image extension, a 1x1 image, and a PNG whose header claims 100000x100000 pixels without the data. The
"odd but valid" images (16-bit, CMYK, palette with alpha, grayscale) must decode, not be rejected.
"""

from __future__ import annotations

import io
import os
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import numpy as np
import skimage.data
from PIL import Image

PYTHON = sys.executable


def _photo(size: int = 96, offset: int = 0) -> np.ndarray:
    return skimage.data.astronaut()[offset : offset + size, offset : offset + size].copy()


def _encode(image: Image.Image, fmt: str, **kwargs) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **kwargs)
    return buffer.getvalue()


def png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def bomb_png(width: int = 100_000, height: int = 100_000) -> bytes:
    """A valid PNG header that claims ``width`` x ``height`` RGB pixels, with a few bytes of data."""
    header = png_chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
    return b"\x89PNG\r\n\x1a\n" + header + png_chunk(b"IDAT", zlib.compress(b"\x00" * 64)) + png_chunk(b"IEND", b"")


def bad_images() -> dict[str, tuple[bytes, str]]:
    """{file name: (bytes, a word the BadSampleError reason must contain)} for unusable images."""
    jpeg = _encode(Image.fromarray(_photo(128)), "JPEG", quality=90)
    png = _encode(Image.fromarray(_photo(128)), "PNG")
    return {
        "zero.jpg": (b"", "zero-byte"),
        "truncated.jpg": (jpeg[: len(jpeg) // 3], "truncated"),
        "truncated.png": (png[: len(png) // 2], "truncated"),
        "text.jpg": (b"this is not an image\n" * 4, "not an image"),
        "html.png": (b"<html><body>404 Not Found</body></html>", "not an image"),
        "one.png": (_encode(Image.new("RGB", (1, 1), (200, 10, 10)), "PNG"), "too small"),
        "bomb.png": (bomb_png(), "too large"),
    }


def odd_images() -> dict[str, bytes]:
    """Valid images in unusual modes: each must decode to uint8 RGB HxWx3."""
    rgb = _photo(64)
    gray16 = (rgb[:, :, 0].astype(np.uint16) * 257).astype(np.uint16)
    rgba = np.concatenate([rgb, np.full(rgb.shape[:2] + (1,), 128, np.uint8)], axis=2)
    return {
        "gray16.png": _encode(Image.fromarray(gray16), "PNG"),
        "cmyk.jpg": _encode(Image.fromarray(rgb).convert("CMYK"), "JPEG", quality=90),
        "palette.png": _encode(Image.fromarray(rgb).convert("P", palette=Image.Palette.ADAPTIVE), "PNG"),
        "palette_alpha.png": _encode(Image.fromarray(rgb).convert("P", palette=Image.Palette.ADAPTIVE), "PNG", transparency=0),
        "rgba.png": _encode(Image.fromarray(rgba, "RGBA"), "PNG"),
        "gray.jpg": _encode(Image.fromarray(rgb[:, :, 1]), "JPEG", quality=90),
    }


def make_folder(root: Path, split: str = "train", per_class: int = 4, classes: int = 2, size: int = 96) -> Path:
    """``root/<split>/c<k>/<i>.jpg``: distinct real photo crops (an image-folder dataset)."""
    for label in range(classes):
        folder = root / split / f"c{label}"
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            crop = _photo(size, offset=17 * i + 61 * label)
            Image.fromarray(crop).save(folder / f"{i:03d}.jpg", quality=90)
    return root


def add_files(folder: Path, files: dict[str, bytes]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for name, data in files.items():
        (folder / name).write_bytes(data)


def run_kamim(*args: str, env: dict | None = None, timeout: float = 240, **kwargs) -> subprocess.CompletedProcess:
    """``python -m kamim ARGS`` in a subprocess (the real CLI, exit codes and stderr)."""
    full_env = {**os.environ, "PYTHONWARNINGS": "ignore", **(env or {})}
    return subprocess.run([PYTHON, "-m", "kamim", *args], capture_output=True, text=True, env=full_env,
                          timeout=timeout, **kwargs)


def invoke_kamim(*args: str) -> subprocess.CompletedProcess:
    """The CLI in this process (click's runner: no 5 s import per call); same exit code and stderr."""
    from click.testing import CliRunner

    from kamim.cli import main

    result = CliRunner().invoke(main, list(args))
    stderr = result.stderr
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        import traceback

        stderr += "".join(traceback.format_exception(result.exception))
    return subprocess.CompletedProcess(args, result.exit_code, result.stdout, stderr)


def assert_one_line_error(proc: subprocess.CompletedProcess, *words: str) -> str:
    """Exit 2, no traceback, the last stderr line is ``Error: ...`` containing ``words``; returns it."""
    assert proc.returncode == 2, (proc.returncode, proc.stderr[-3000:])
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("Error:"), proc.stderr[-3000:]
    for word in words:
        assert word.lower() in last.lower(), (word, last)
    return last


def hostile_pickle(marker: Path) -> bytes:
    """A pickle whose loading would create ``marker`` (runs ``open(marker, 'w')`` via __reduce__)."""
    import pickle

    class Exploit:
        def __reduce__(self):  # noqa: ANN204
            return (open, (os.fspath(marker), "w"))

    return pickle.dumps({"model": {}, "payload": Exploit()}, protocol=2)


def tiny_run_config(data: Path, out: Path, **changes):  # noqa: ANN201 - a PretrainConfig
    """A seconds-long SimMIM pretraining of a 1-block ViT on ``data`` into ``out`` (4 steps, a checkpoint
    every 2), for the fault tests that break a run and resume it; ``changes`` override fields."""
    from kamim.train.pretrain import PretrainConfig  # torch: only for the tests that train

    base = {"model": "vit_t", "overrides": {"depth": 1, "embed_dim": 32, "num_heads": 2}, "dataset": "folder",
            "data_root": str(data), "method": "simmim", "device": "cpu", "out": str(out), "batch_size": 2,
            "workers": 0, "grid_every": 0, "save_every": 2, "steps": 4}
    return PretrainConfig(**{**base, **changes})
