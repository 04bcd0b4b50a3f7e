"""Identical weights give byte-identical exports (safetensors writes its metadata in a random order)."""

import subprocess
import sys

SCRIPT = """
import sys, torch
from pathlib import Path
from kamim.train.checkpoint import write_safetensors
torch.manual_seed(0)
state = {"w": torch.randn(4, 3), "b": torch.zeros(3)}
write_safetensors(state, Path(sys.argv[1]), '{"model": "x"}\\n')
"""


def test_two_processes_write_byte_identical_exports(tmp_path):
    # One process per export: the metadata order is drawn per process (hash seeds), so do it a few times.
    paths = [tmp_path / f"m{i}.safetensors" for i in range(4)]
    for path in paths:
        subprocess.run([sys.executable, "-c", SCRIPT, str(path)], check=True)
    blobs = {path.read_bytes() for path in paths}
    assert len(blobs) == 1
