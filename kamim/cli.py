"""The ``kamim`` command. Verbs are imported lazily so ``kamim --help`` answers without loading torch."""

from __future__ import annotations

import errno
import importlib
import os

import click

# verb -> (module:attribute of the click command, one-line help shown by `kamim --help`).
# Each verb lives with the stage it belongs to; this table is the only place that lists them.
COMMANDS: dict[str, tuple[str, str]] = {
    "analyze": ("kamim.evaluate.analyze:analyze", "Reconstruction, attention and representation analyses (JSON + PNG)."),
    "cache": ("kamim.preprocess.cli:cache", "Detect keypoints once and write the zarr or webdataset cache (resumable, all cores)."),
    "data": ("kamim.data_cli:data", "Inspect datasets (count, classes, image sizes) before a long job."),
    "convert": ("kamim.evaluate.cli_convert:convert", "Import the original's HuggingFace ViT checkpoints."),
    "finetune": ("kamim.evaluate.cli_finetune:finetune", "Finetune a pretrained encoder (layer decay, mixup/cutmix)."),
    "sweep": ("kamim.evaluate.cli_sweep:sweep", "w_ps x T x detector sweep: pretrain + linear probe per point."),
    "linprobe": ("kamim.evaluate.cli_linprobe:linprobe", "Linear probe of a pretrained encoder (top-1/top-5)."),
    "pretrain": ("kamim.train.pretrain_cli:pretrain", "SimMIM/KAMIM pretraining from the keypoint cache (resumable)."),
    "weights": ("kamim.evaluate.weights_cli:weights", "Show an image's keypoints, densities and KAMIM weight map."),
}


class LazyGroup(click.Group):
    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(COMMANDS)

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        if name not in COMMANDS:
            return None
        target, _ = COMMANDS[name]
        module_name, attr = target.split(":")
        return getattr(importlib.import_module(module_name), attr)

    def invoke(self, ctx: click.Context):  # noqa: ANN201
        try:
            return super().invoke(ctx)
        except OSError as error:  # a full disk (or file-size/quota limit) is the user's to fix: one line
            if error.errno not in (errno.ENOSPC, errno.EFBIG, errno.EDQUOT):
                raise
            from kamim.errors import UserError

            where = f" {error.filename}" if error.filename else ""
            raise UserError(f"cannot write{where}: {os.strerror(error.errno)}; free disk space and rerun the same "
                            f"command (finished work is kept)") from None

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        rows = [(name, COMMANDS[name][1]) for name in self.list_commands(ctx)]
        with formatter.section("Commands"):
            formatter.write_dl(rows)


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="kamim")
def main() -> None:
    """KAMIM: SimMIM whose reconstruction loss is weighted by handcrafted keypoint density.

    \b
    The pipeline, in order:
      kamim cache --dataset photos --detector fast     # detect once, write the cache
      kamim pretrain --model vit_t --dataset photos    # SimMIM/KAMIM pretraining
      kamim linprobe --checkpoint runs/<run>           # linear probe of the encoder

    Run `kamim VERB --help` for each verb's options and an example.
    """
