"""``kamim finetune``: the command-line face of evaluate/finetune.py."""

from __future__ import annotations

import click

from kamim.datasets import DATASETS

from .choices import FINETUNE_RECIPE_NAMES  # no torch: flags are checked before the heavy imports


@click.command("finetune")
@click.option("--recipe", type=click.Choice(list(FINETUNE_RECIPE_NAMES)), default="kamim", show_default=True,
              help="kamim: layer decay 0.65, no weight decay on biases/norms, clip 1.0, antialiased resize. original: "
                   "the original's script (one AdamW group decaying everything, no layer decay, no clip for ViT / "
                   "1.0 for Swin, resize without antialias). The flags below override either.")
@click.option("--checkpoint", default=None, help="Run dir, .pt checkpoint or .safetensors export (with its .json).")
@click.option("--latest", is_flag=True, help="Finetune the newest run under runs/ pretrained on --dataset.")
@click.option("--dataset", type=click.Choice(DATASETS), default="photos", show_default=True)
@click.option("--data-root", default=None, help="Data root [default: $KAMIM_DATA_ROOT or ./data]")
@click.option("--epochs", type=int, default=110, show_default=True, help="Total, warmup included (original: 110).")
@click.option("--warmup-epochs", type=int, default=10, show_default=True)
@click.option("--batch-size", type=int, default=2048, show_default=True)
@click.option("--lr", type=float, default=5e-3, show_default=True)
@click.option("--weight-decay", type=float, default=0.05, show_default=True)
@click.option("--layer-decay", type=float, default=None,
              help="Layer-wise LR decay; 1 = none [kamim: 0.65; original: 1].")
@click.option("--decay-all/--no-decay-all", default=None,
              help="Weight decay on biases and norms too [kamim: no; original: yes].")
@click.option("--mixup", type=float, default=1.0, show_default=True, help="MixUp/CutMix alpha; 0 = off.")
@click.option("--clip-grad", type=float, default=None,
              help="Gradient norm clip; 0 = off [kamim: 1.0; original: 0 for ViT, 1.0 for Swin].")
@click.option("--antialias/--no-antialias", default=None,
              help="Antialiased Resize of train and val images [kamim: yes; original: no].")
@click.option("--eval-batch-size", type=int, default=128, show_default=True)
@click.option("--workers", type=int, default=2, show_default=True)
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto", show_default=True)
@click.option("--precision", type=click.Choice(["auto", "bf16", "fp16", "fp32"]), default="auto", show_default=True)
@click.option("--compile", "compile", is_flag=True, help="torch.compile the model (cpu/cuda); checkpoints unchanged.")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--out", default=None, help="Output dir [default: RUN_DIR/finetune]")
@click.option("--resume", is_flag=True, help="Continue OUT from its newest checkpoint (exactly, on the CPU).")
@click.option("--save-every", type=int, default=1, show_default=True, help="Epochs between checkpoints in OUT/checkpoints.")
@click.option("--keep-checkpoints", type=int, default=2, show_default=True, help="Newest checkpoints kept (0: all).")
def finetune(**options) -> None:
    """Finetune a pretrained encoder end to end; top-1/top-5 to OUT/finetune.json.

    Head of the original: final normalised tokens, CLS dropped, average pooled, one linear layer.
    Recipe of the original (TrivialAugmentWide, RandomErasing, MixUp/CutMix, AdamW 5e-3 wd 0.05, batch
    2048, 110 epochs with 10 warmup) with improvements by default; --recipe original runs it as it was.

    \b
    Examples:
      kamim finetune --latest --dataset photos --epochs 20 --batch-size 64
      kamim finetune --checkpoint runs/imagenet-vit_b-kamim --dataset imagenet
      kamim finetune --checkpoint runs/imagenet-vit_b-kamim --dataset imagenet --recipe original
      kamim finetune --checkpoint runs/imagenet-vit_b-kamim --dataset imagenet --resume   # after a stop
    """
    # --clip-grad 0 = off, as in pretrain (negative: refused); not given (None): the recipe's
    from .finetune import FinetuneConfig, run_finetune

    run_finetune(FinetuneConfig(**options))
