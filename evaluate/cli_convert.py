"""``kamim convert``: the original's HuggingFace checkpoints -> our safetensors export."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import click

from kamim.config import format_config, save_config


@dataclasses.dataclass
class ConvertConfig:
    checkpoint: str  # the original's checkpoint_final.pth (bare or {'model_state_dict': ...}) or .safetensors
    out: str  # FILE.safetensors; FILE.json is written beside it
    model: str = "vit_b"
    num_heads: int | None = None  # ViT of non-standard width only: not recoverable from its weights


@click.command("convert")
@click.argument("checkpoint", type=click.Path(dir_okay=False))
@click.option("--model", type=click.Choice(["vit_t", "vit_s", "vit_b", "swin_t", "swin_b"]), default="vit_b",
              show_default=True, help="Our model the checkpoint is (widths and depths are read from it).")
@click.option("--out", required=True, help="Output FILE.safetensors (FILE.json is written beside it).")
@click.option("--num-heads", type=int, default=None, help="ViT heads, if the checkpoint is not the standard size.")
def convert(checkpoint: str, model: str, out: str, num_heads: int | None) -> None:
    """Import an original KAMIM/SimMIM checkpoint (HuggingFace ViT/SwinForMaskedImageModeling) into kamim.

    Reads the state dict with torch.load(weights_only=True) (or safetensors), bare or under
    'model_state_dict'; maps every key explicitly (q/k/v fused into qkv); any missing, unexpected or
    mis-shaped key is an error. The result loads anywhere a run dir does (linprobe, analyze, ...).

    \b
    Example:
      kamim convert Models/imagenet/vit_b/KAMIM/checkpoint_final.pth --model vit_b --out kamim_vit_b.safetensors
      kamim convert Models/imagenet/swin_t/SimMIM/checkpoint_final.pth --model swin_t --out simmim_swin_t.safetensors
      kamim linprobe --checkpoint kamim_vit_b.safetensors --dataset imagenet
    """
    from .convert import convert_checkpoint

    config = ConvertConfig(checkpoint=checkpoint, out=out, model=model, num_heads=num_heads)
    click.echo(format_config(config), err=True)  # configs and progress: stderr; results: stdout
    path = convert_checkpoint(config.checkpoint, config.out, config.model, config.num_heads)
    save_config(config, Path(out).with_name(Path(out).stem + ".convert_config.json"))
    click.echo(f"convert: wrote {path} and {path.with_suffix('.json')}")
