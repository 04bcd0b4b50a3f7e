"""``kamim linprobe``: the command-line face of evaluate/linprobe.py."""

from __future__ import annotations

import click

from kamim.datasets import DATASETS

from .choices import POOLS, PROBE_RECIPES, RESIZES  # no torch: flags are checked before the heavy imports


@click.command("linprobe")
@click.option("--checkpoint", default=None, help="Run dir, .pt checkpoint or .safetensors export (with its .json).")
@click.option("--latest", is_flag=True, help="Probe the newest run under runs/ pretrained on --dataset.")
@click.option("--dataset", type=click.Choice(DATASETS), default="photos", show_default=True)
@click.option("--data-root", default=None, help="Data root [default: $KAMIM_DATA_ROOT or ./data]")
@click.option("--layer", type=int, default=None, help="Block (ViT) or stage (Swin), 1-based [default: 8 / last stage]")
@click.option("--pool", type=click.Choice(POOLS), default="avg", show_default=True,
              help="avg: mean of patch tokens (CLS dropped); cls: the CLS token.")
@click.option("--bn", is_flag=True, help="BatchNorm1d(affine=False) before the linear layer.")
@click.option("--recipe", type=click.Choice(PROBE_RECIPES), default="fast", show_default=True,
              help="fast: head on cached features; original: the original's augmentations, backbone every step.")
@click.option("--epochs", type=int, default=None, help="[default: 100 fast, 110 original]")
@click.option("--warmup-epochs", type=int, default=10, show_default=True)
@click.option("--batch-size", type=int, default=None, help="[default: 256 fast, 2048 original]")
@click.option("--lr", type=float, default=5e-3, show_default=True)
@click.option("--weight-decay", type=float, default=0.05, show_default=True)
@click.option("--mixup", type=float, default=1.0, show_default=True, help="Original recipe: MixUp/CutMix alpha; 0 = off.")
@click.option("--resize", type=click.Choice(RESIZES), default=None,
              help="Eval resize: crop (short side + centre crop) or squash [default: crop fast, squash original]")
@click.option("--feature-batch-size", type=int, default=128, show_default=True)
@click.option("--workers", type=int, default=2, show_default=True, help="Data loader processes.")
@click.option("--device", default="auto", show_default=True, help="auto, cpu, cuda or cuda:N")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--compile", "compile", is_flag=True, help="torch.compile the encoder for feature extraction (cpu/cuda).")
@click.option("--out", default=None, help="Output dir [default: RUN_DIR/linprobe]")
def linprobe(**options) -> None:
    """Linear probe of a frozen pretrained encoder; top-1/top-5 to OUT/linprobe.json.

    Features of one block before any final norm (block 8 for ViT, as the original; the last stage for
    Swin), average-pooled over patch tokens, one linear layer. The fast recipe extracts the features
    once and caches them in OUT/features/, keyed by the weights, layer, pooling and dataset, so a rerun
    with other head settings (--bn, --lr, --epochs) skips extraction.

    \b
    Examples:
      kamim linprobe --latest --dataset photos
      kamim linprobe --checkpoint runs/photos-vit_t-kamim --layer 6 --bn
      kamim linprobe --checkpoint runs/x --recipe original --epochs 110 --batch-size 2048
    """
    from .linprobe import LinprobeConfig, run_linprobe

    run_linprobe(LinprobeConfig(**options))
