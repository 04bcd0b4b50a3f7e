"""``kamim sweep``: the command-line face of evaluate/sweep.py."""

from __future__ import annotations

import click

from kamim.errors import UserError

from .choices import POOLS  # no torch: flags are checked before the heavy imports

PRETRAIN_OPTIONS = ("model", "dataset", "data_root", "split", "keypoints", "detect_size", "gray", "steps", "epochs",
                    "batch_size", "accumulation", "lr", "device", "precision", "workers", "seed", "save_every",
                    "grid_every")


def number_list(text: str, kind: type, flag: str) -> list:
    try:
        return [kind(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise UserError(f"{flag} {text!r}: use a comma list of numbers, e.g. 8,16,32") from None


@click.command("sweep")
@click.option("--weight-ps", default="8,16,32", show_default=True, help="Comma list of w_ps values.")
@click.option("--temperature", default="0.1,0.25,0.5,1,2.5", show_default=True, help="Comma list of T values.")
@click.option("--detector", default="fast", show_default=True, help="Comma list of fast, sift, orb.")
@click.option("--no-baseline", is_flag=True, help="Skip the SimMIM baseline point.")
@click.option("--out", default=None, help="Sweep dir [default: runs/sweep-<dataset>-<model>]")
@click.option("--model", default=None, help="Pretrain: model (vit_t, vit_s, vit_b, swin_t, swin_b) [vit_t]")
@click.option("--override", multiple=True, metavar="NAME=INT[,INT..]", help="Pretrain: model override, e.g. depth=2.")
@click.option("--dataset", default=None, help="Pretrain and probe dataset [photos]")
@click.option("--data-root", default=None)
@click.option("--split", default=None, help="Pretrain split [train]")
@click.option("--keypoints", default=None, help="Pretrain: auto, cached, online or device [auto]")
@click.option("--detect-size", type=int, default=None, help="Cache detect size [256]")
@click.option("--gray", default=None, help="Detector input: bgr (original) or rgb [bgr]")
@click.option("--steps", type=int, default=None, help="Pretrain optimiser steps per point.")
@click.option("--epochs", type=float, default=None, help="Pretrain epochs per point [110].")
@click.option("--batch-size", type=int, default=None, help="Pretrain micro-batch [64]")
@click.option("--accumulation", type=int, default=None)
@click.option("--lr", type=float, default=None, help="Pretrain LR [8e-4]")
@click.option("--device", default=None, help="auto, cpu, cuda (pretrain and probe) [auto]")
@click.option("--precision", default=None)
@click.option("--workers", type=int, default=None, help="Pretrain loader workers [as pretrain: cores, at most 8]")
@click.option("--seed", type=int, default=None)
@click.option("--save-every", type=int, default=None, help="Pretrain checkpoint interval (resume granularity).")
@click.option("--grid-every", type=int, default=None)
@click.option("--probe-layer", type=int, default=None, help="Probe block/stage [8 ViT, last stage Swin]")
@click.option("--probe-pool", type=click.Choice(POOLS), default=None)
@click.option("--probe-bn", is_flag=True, help="Probe with BatchNorm1d(affine=False).")
@click.option("--probe-epochs", type=int, default=None, help="Probe head epochs on cached features [100]")
@click.option("--probe-lr", type=float, default=None)
@click.option("--probe-batch-size", type=int, default=None)
@click.option("--probe-workers", type=int, default=None)
def sweep(weight_ps: str, temperature: str, detector: str, no_baseline: bool, out: str | None,
          override: tuple[str, ...], probe_bn: bool, **options) -> None:
    """Parameter sweep / detector comparison: pretrain + linear probe per (detector, w_ps, T), + SimMIM.

    One keypoint cache per detector (built once at the default path, shared by all points). Each point
    is a run dir OUT/<detector>-wps<w>-T<t> (and OUT/simmim); rerunning skips finished points and
    resumes an interrupted pretrain. Writes OUT/results.csv, OUT/results.md and OUT/heatmap-<det>.png.

    \b
    Examples:
      kamim sweep --weight-ps 8,16,32 --temperature 0.1,0.25,0.5,1,2.5 --detector fast \\
          --model vit_b --dataset imagenet --epochs 110 --out runs/sweep-paper
      kamim sweep --weight-ps 8 --temperature 0.25 --detector fast,sift,orb --steps 200 --dataset photos
    """
    from kamim.train.setup import parse_overrides

    from .sweep import SweepConfig, run_sweep

    pretrain = {k: v for k, v in options.items() if k in PRETRAIN_OPTIONS and v is not None}
    if override:
        pretrain["overrides"] = parse_overrides(override)
    probe = {k.removeprefix("probe_"): v for k, v in options.items() if k.startswith("probe_") and v is not None}
    if probe_bn:
        probe["bn"] = True
    run_sweep(SweepConfig(
        weight_ps=number_list(weight_ps, int, "--weight-ps"), temperature=number_list(temperature, float, "--temperature"),
        detector=[d.strip() for d in detector.split(",") if d.strip()], baseline=not no_baseline, out=out,
        pretrain=pretrain, probe=probe,
    ), log=lambda message: click.echo(message, err=True))
