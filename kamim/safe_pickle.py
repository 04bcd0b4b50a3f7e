"""A restricted unpickler for third-party data that only exists as pickles (CIFAR's python batches).

It builds dicts, lists, strings, bytes, numbers and plain numpy arrays, and refuses every other global,
so a hostile file cannot run code. Never used for our own caches or checkpoints (those hold no pickle).
"""

from __future__ import annotations

import pickle
from pathlib import Path

from kamim.errors import UserError

_ALLOWED = {
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "_reconstruct"),
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
    ("numpy.core.multiarray", "scalar"),
    ("numpy._core.multiarray", "scalar"),
    ("_codecs", "encode"),
}


class _PlainUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str):  # noqa: ANN201
        if (module, name) in _ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"refused global {module}.{name}")


def load_plain_pickle(path: str | Path) -> dict:
    path = Path(path)
    try:
        with path.open("rb") as f:
            return _PlainUnpickler(f, encoding="bytes").load()
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError, IndexError) as error:
        raise UserError(f"{path}: not a plain data pickle ({error}); re-extract the dataset archive") from None
