"""Run a kamim verb on every local XLA device through torch_xla's launcher (PJRT), one replica per
device, like torchrun does for GPUs:

    PJRT_DEVICE=TPU python -m kamim.train.xla_launch pretrain --model vit_b --batch-size 128 ...

Each replica reads its rank and world from torch_xla's runtime (train/device.py); gradients are
all-reduced in the device module, only replica 0 writes. ``--device xla`` is added if not given.
"""

from __future__ import annotations

import sys

import click


def run_verb(index: int, argv: list[str]) -> None:
    """One replica: the kamim CLI with ``argv`` (``index`` is torch_xla's process index)."""
    from kamim.cli import main

    main.main(args=argv, prog_name="kamim", standalone_mode=False)


def with_xla_device(argv: list[str]) -> list[str]:
    if any(arg == "--device" or arg.startswith("--device=") for arg in argv):
        return list(argv)
    return [*argv, "--device", "xla"]


def launch(argv: list[str]) -> None:
    try:
        import torch_xla
    except ImportError:
        raise click.UsageError("torch_xla is not installed: pip install -e '.[xla]' (see docs/scale-out.md)") from None
    torch_xla.launch(run_verb, args=(with_xla_device(argv),))


if __name__ == "__main__":
    try:
        launch(sys.argv[1:])
    except click.ClickException as error:  # a UserError in any replica: one line, exit 2
        error.show()
        sys.exit(error.exit_code)
