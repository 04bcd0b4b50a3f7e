"""Integrity of checkpoints and exports: damage on disk is a one-line error naming the file, never
silently different weights.

- ``.pt`` checkpoints are zip files whose members carry CRC-32s, but ``torch.load`` never checks them (a
  flipped byte in a tensor loads as a different weight). ``check_zip`` verifies every member first.
- ``.safetensors`` has no checksum at all. ``write_safetensors`` stores a SHA-256 of the tensors (and of
  the ``.json`` beside it) in the file's metadata; ``verify_export`` recomputes them on load. Exports
  written before this (or by other tools) carry no digest and are read as they are.
"""

from __future__ import annotations

import hashlib
import json
import struct
import zipfile
from pathlib import Path

import torch

from kamim.errors import UserError

DIGEST_KEY = "kamim_sha256"
INFO_DIGEST_KEY = "kamim_info_sha256"


def state_digest(state: dict[str, torch.Tensor]) -> str:
    """SHA-256 over the tensors in key order: name, dtype, shape and raw bytes."""
    digest = hashlib.sha256()
    for key in sorted(state):
        tensor = state[key].detach().to("cpu").contiguous()
        digest.update(f"{key}\0{tensor.dtype}\0{tuple(tensor.shape)}\0".encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def text_digest(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def export_metadata(state: dict[str, torch.Tensor], info_text: str | None) -> dict[str, str]:
    metadata = {"format": "pt", DIGEST_KEY: state_digest(state)}
    if info_text is not None:
        metadata[INFO_DIGEST_KEY] = text_digest(info_text)
    return metadata


def sort_metadata(path: Path) -> None:
    """Rewrite a ``.safetensors`` header with its metadata keys sorted, in place and at the same length.
    safetensors writes the metadata map in a per-process random order, so two identical exports would
    differ in bytes; sorted, the same weights always give the same file."""
    with open(path, "r+b") as handle:
        (length,) = struct.unpack("<Q", handle.read(8))
        raw = handle.read(length)
        header = json.loads(raw)
        if "__metadata__" not in header:
            return
        header["__metadata__"] = dict(sorted(header["__metadata__"].items()))
        text = json.dumps(header, separators=(",", ":")).encode()
        if len(text) > length:  # never: the same keys and values in another order
            raise RuntimeError(f"{path}: sorted safetensors header is longer than the original")
        handle.seek(8)
        handle.write(text + b" " * (length - len(text)))


def verify_export(source: Path, metadata: dict[str, str] | None, state: dict[str, torch.Tensor],
                  info_path: Path | None = None) -> None:
    """UserError naming the file if the tensors (or the .json beside) differ from what was written."""
    metadata = metadata or {}
    if DIGEST_KEY in metadata and state_digest(state) != metadata[DIGEST_KEY]:
        raise UserError(f"{source}: its weights do not match the checksum written with them (the file is damaged); "
                        f"export it again from its run (the checkpoints) or restore it")
    if info_path is not None and INFO_DIGEST_KEY in metadata and \
            text_digest(info_path.read_text()) != metadata[INFO_DIGEST_KEY]:
        raise UserError(f"{info_path}: changed since {source.name} was written (checksum); restore it or export again")


def check_zip(path: Path) -> None:
    """Every member of a ``.pt`` (zip) checkpoint reads back with its CRC-32, before torch.load trusts it."""
    try:
        with zipfile.ZipFile(path) as archive:
            bad = archive.testzip()
    except (zipfile.BadZipFile, OSError, EOFError, ValueError, NotImplementedError) as error:
        raise UserError(f"checkpoint {path} is unreadable: damaged or not a checkpoint ({type(error).__name__}: "
                        f"{' '.join(str(error).split())[:120]}); delete it to resume from the one before") from None
    if bad is not None:
        raise UserError(f"checkpoint {path} is unreadable: damaged (member {bad} fails its CRC-32); delete it to "
                        f"resume from the one before")
