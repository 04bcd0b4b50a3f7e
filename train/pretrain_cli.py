"""The ``kamim pretrain`` click command (options -> PretrainConfig -> run_pretrain)."""

from __future__ import annotations

import click

from .choices import DEVICES, INITS, MODEL_NAMES, PRECISIONS
from .recipes import PRETRAIN_RECIPES  # no torch: flags are checked before the heavy imports


@click.command("pretrain")
@click.option("--recipe", default="kamim", show_default=True, type=click.Choice(list(PRETRAIN_RECIPES)),
              help="kamim: the defaults shown here (a small, fast start). original: the original's ViT-B run (vit_b, "
                   "global batch 2048, 110 epochs, bf16, per-crop FAST w_ps 8 T 0.25); flags you give still win.")
@click.option("--model", default="vit_t", show_default=True, help=f"One of {', '.join(MODEL_NAMES)}.")
@click.option("--init", default="hf", show_default=True, type=click.Choice(list(INITS)),
              help="hf: initialise as the original's HuggingFace models; timm: timm's own init.")
@click.option("--override", multiple=True, metavar="NAME=INT[,INT..]",
              help="Model size override for small experiments: depth, embed_dim, num_heads, depths.")
@click.option("--method", default="kamim", show_default=True, help="kamim or simmim.")
@click.option("--keypoints", default="auto", show_default=True,
              help="auto, cached, online or device. cached: points from the keypoint cache, rastered on the device; "
                   "online: the original (detect on every augmented crop in the loader); device: FAST only, detected on "
                   "the batch where the model runs (torch ops, bit-exact to online; no cache, no loader cost). auto: "
                   "device for FAST, cached for SIFT/ORB (online for images under 96 px), cached when --cache is given "
                   "or --cache-format is wds.")
@click.option("--cache", default=None, help="Keypoint cache dir (default: where `kamim cache` writes; built if absent).")
@click.option("--cache-format", default="zarr", show_default=True, type=click.Choice(["zarr", "wds"]),
              help="Without --cache: read (or build) the default cache of this format, as `kamim cache --format`.")
@click.option("--detector", default="fast", show_default=True, help="fast, sift or orb (OpenCV defaults).")
@click.option("--detect-size", default=256, show_default=True, type=int, help="Cache detect size (shorter side).")
@click.option("--gray", default="bgr", show_default=True,
              help="bgr: hand RGB to OpenCV as is (the original); rgb: proper RGB->gray.")
@click.option("--weight-ps", default=8, show_default=True, type=int, help="Weight patch size w_ps: 8, 16 or 32.")
@click.option("--temperature", default="0.25", show_default=True,
              help="Temperature T > 0 (inf = SimMIM's loss).")
@click.option("--dataset", default="photos", show_default=True)
@click.option("--split", default="train", show_default=True)
@click.option("--data-root", default=None, help="Dataset root (default $KAMIM_DATA_ROOT or ./data).")
@click.option("--device", default="auto", show_default=True, help=f"One of {', '.join(DEVICES)}.")
@click.option("--precision", default="auto", show_default=True,
              help=f"One of {', '.join(PRECISIONS)}. auto: bf16 autocast on cuda/xla, fp32 on cpu.")
@click.option("--out", default=None, help="Run dir (default runs/<dataset>-<model>-<method>-...-<time>).")
@click.option("--steps", default=None, type=int, help="Optimiser steps (overrides --epochs).")
@click.option("--epochs", default=None, type=float, help="Epochs (default 110: the original's 100 + 10 warmup).")
@click.option("--stop-after", default=None, type=int,
              help="Stop (with a checkpoint) after this optimiser step, e.g. to fit a job's time limit.")
@click.option("--batch-size", default=64, show_default=True, type=int, help="Micro-batch per device.")
@click.option("--accumulation", default=1, show_default=True, type=int, help="Micro-batches per optimiser step.")
@click.option("--global-batch", default=None, type=int,
              help="Images per optimiser step over all processes: sets --accumulation to N / (batch-size x processes), "
                   "lowering --batch-size if one process's share is smaller [--recipe original: 2048].")
@click.option("--lr", default=8e-4, show_default=True, type=float)
@click.option("--weight-decay", default=0.05, show_default=True, type=float)
@click.option("--warmup-steps", default=None, type=int, help="Default: 10/110 of the steps, like the original.")
@click.option("--min-lr", default=1e-5, show_default=True, type=float)
@click.option("--warmup-lr", default=1e-6, show_default=True, type=float)
@click.option("--clip-grad", default=1.0, show_default=True, type=float, help="Gradient norm clip; 0 = off.")
@click.option("--workers", default=None, type=int, help="Loader worker processes [default: cores, at most 8].")
@click.option("--seed", default=0, show_default=True, type=int)
@click.option("--resume", is_flag=True, help="Continue the run in --out from its latest checkpoint (exactly).")
@click.option("--log-every", default=1, show_default=True, type=int, help="Steps between metrics.jsonl records.")
@click.option("--save-every", default=500, show_default=True, type=int, help="Steps between checkpoints.")
@click.option("--grid-every", default=500, show_default=True, type=int, help="Steps between reconstruction grids (0: off).")
@click.option("--keep-checkpoints", default=2, show_default=True, type=int)
@click.option("--save-optimizer/--no-save-optimizer", default=True, show_default=True,
              help="Keep AdamW's state in checkpoints (2/3 of their size: vit_b 1.0 GB -> 0.35 GB without). "
                   "Without it a resume restarts AdamW's moments, so it is not bit-exact.")
@click.option("--nan-policy", default="stop", show_default=True, type=click.Choice(["stop", "skip"]),
              help="A NaN/Inf loss: stop (one line naming the step; checkpoints stay finite) or skip that update and count it.")
@click.option("--tensorboard", is_flag=True, help="Also log to TensorBoard (needs tensorboard installed).")
@click.option("--wandb", default=None, metavar="PROJECT", help="Also log to this wandb project (needs wandb).")
@click.option("--decode", default="worker", show_default=True, type=click.Choice(["worker", "device"]),
              help="Where JPEGs are decoded: in the loader workers (PIL), or on the training device in the step "
                   "(decode_jpeg: nvJPEG on cuda), the workers only reading the bytes. Same crops and masks.")
@click.option("--compile", "compile", is_flag=True,
              help="torch.compile the model, weighting and loss (cpu/cuda; first steps slower while it compiles). "
                   "Checkpoints and resume are the same with or without it.")
@click.pass_context
def pretrain(ctx: click.Context, **options) -> None:  # noqa: ANN003
    """Pretrain a ViT/Swin with SimMIM or KAMIM (keypoint-weighted SimMIM) at 192 px.

    \b
    Always as the original: RandomResizedCrop(0.67-1) + v/h flips, 32-px masks at 0.6, AdamW (wd on
    every parameter), warmup + cosine. The defaults (--recipe kamim) are a small, fast start: vit_t,
    effective batch 64 (= batch-size x accumulation x processes), keypoints auto. --recipe original
    gives the original's ViT-B run: global batch 2048, 110 epochs, bf16, FAST per crop. The run dir
    gets config.json, metrics.jsonl, checkpoints/, grids/ and, at the end, model.safetensors + model.json.

    \b
    Examples:
      kamim pretrain --model vit_t --dataset photos --steps 60 --batch-size 32
      kamim pretrain --recipe original --dataset imagenet                 # 1024 x 2 on one GPU
      kamim pretrain --recipe original --dataset imagenet --batch-size 256  # 256 x 8: still 2048
      kamim pretrain --model vit_b --method simmim --dataset imagenet --batch-size 256 --accumulation 8
      kamim pretrain --model vit_b --keypoints online --detector sift     # the original's per-crop path
      kamim pretrain --model vit_b --keypoints device                     # FAST per crop, on the GPU
      kamim pretrain --out runs/my-run --resume                           # continue after a stop
      torchrun --nproc-per-node 8 -m kamim pretrain --model vit_b --batch-size 256   # DDP, 8 GPUs
      python -m kamim.train.xla_launch pretrain --model vit_b --batch-size 128       # every TPU device
    """
    from .pretrain import config_from_options, run_pretrain

    cfg = config_from_options(options, given_options(ctx))
    if cfg.resume:  # the run's own config.json fills every flag not given again
        from .setup import resume_config

        cfg = resume_config(cfg, given_options(ctx))
    run_pretrain(cfg)


def given_options(ctx: click.Context) -> set[str]:
    """Config field names of the options the user gave (command line or environment), not defaults."""
    given = {click.core.ParameterSource.COMMANDLINE, click.core.ParameterSource.ENVIRONMENT}
    names = {name for name in ctx.params if ctx.get_parameter_source(name) in given}
    return {"overrides" if name == "override" else name for name in names}
