"""``kamim finetune``: the command-line face of evaluate/finetune.py."""

from __future__ import annotations

import click

from kamim.datasets import DATASETS

from .finetune import FinetuneConfig, run_finetune


@click.command("finetune")
@click.option("--checkpoint", default=None, help="Run dir, .pt checkpoint or .safetensors export (with its .json).")
@click.option("--latest", is_flag=True, help="Finetune the newest run under runs/ pretrained on --dataset.")
@click.option("--dataset", type=click.Choice(DATASETS), default="photos", show_default=True)
@click.option("--data-root", default=None, help="Data root [default: $KAMIM_DATA_ROOT or ./data]")
@click.option("--epochs", type=int, default=110, show_default=True, help="Total, warmup included (original: 110).")
@click.option("--warmup-epochs", type=int, default=10, show_default=True)
@click.option("--batch-size", type=int, default=2048, show_default=True)
@click.option("--lr", type=float, default=5e-3, show_default=True)
@click.option("--weight-decay", type=float, default=0.05, show_default=True)
@click.option("--layer-decay", type=float, default=0.65, show_default=True, help="Layer-wise LR decay; 1 = none (the original).")
@click.option("--mixup", type=float, default=1.0, show_default=True, help="MixUp/CutMix alpha; 0 = off.")
@click.option("--clip-grad", type=float, default=1.0, show_default=True, help="Gradient norm clip; 0 = off.")
@click.option("--eval-batch-size", type=int, default=128, show_default=True)
@click.option("--workers", type=int, default=2, show_default=True)
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto", show_default=True)
@click.option("--precision", type=click.Choice(["auto", "bf16", "fp16", "fp32"]), default="auto", show_default=True)
@click.option("--compile", "compile", is_flag=True, help="torch.compile the model (cpu/cuda); checkpoints unchanged.")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--out", default=None, help="Output dir [default: RUN_DIR/finetune]")
def finetune(**options) -> None:
    """Finetune a pretrained encoder end to end; top-1/top-5 to OUT/finetune.json.

    Head of the original: final normalised tokens, CLS dropped, average pooled, one linear layer.
    Recipe of the original (TrivialAugmentWide, RandomErasing, MixUp/CutMix, AdamW 5e-3, 110 epochs with
    10 warmup) plus layer-wise LR decay 0.65 (--layer-decay 1 for the original as run). One device.

    \b
    Examples:
      kamim finetune --latest --dataset photos --epochs 20 --batch-size 64
      kamim finetune --checkpoint runs/imagenet-vit_b-kamim --dataset imagenet
    """
    options["clip_grad"] = options["clip_grad"] or None  # 0 = off, as in pretrain (negative: refused)
    run_finetune(FinetuneConfig(**options))
