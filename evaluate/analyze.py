"""``kamim analyze``: the paper's reconstruction, attention and representation analyses as JSON + PNG.

Each subcommand takes one or more ``--checkpoint`` (run dir, .pt checkpoint or .safetensors export) and
overlays them in one figure, e.g. SimMIM vs KAMIM. Formulas: reference/original-kamim.md section 5.
"""

from __future__ import annotations

import dataclasses
import functools
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import click

from kamim.config import format_config, save_config
from kamim.errors import UserError
from kamim.paths import runs_root


@dataclass
class AnalyzeConfig:
    analysis: str
    checkpoints: list[str]
    labels: list[str] = field(default_factory=list)
    dataset: str = "photos"
    split: str = "val"
    data_root: str | None = None
    num_images: int = 16
    batch_size: int = 16
    out: str = ""
    seed: int = 0
    device: str = "auto"


@dataclass
class ReconstructionConfig(AnalyzeConfig):
    mask_ratio: float = 0.4
    grid_images: int = 4


@dataclass
class AttentionMapConfig(AnalyzeConfig):
    depth: int = -1
    head: int = 0
    query: tuple[int, int] = (3, 8)


@dataclass
class TsneConfig(AnalyzeConfig):
    depth: int = -1
    perplexity: float = 20.0
    max_iter: int = 1000


@dataclass
class PcaConfig(AnalyzeConfig):
    depth: int = -1
    image_index: int = 8


def common_options(num_images: int):
    """The options every analysis shares; ``num_images`` is the original notebook's sample size."""

    def decorate(command):
        options = [
            click.option("--checkpoint", "checkpoints", multiple=True, required=True,
                         help="Run dir, .pt checkpoint or .safetensors export; repeat to overlay several."),
            click.option("--label", "labels", multiple=True, help="Legend name per --checkpoint (default: run name)."),
            click.option("--dataset", default="photos", show_default=True),
            click.option("--split", default="val", show_default=True),
            click.option("--data-root", default=None, help="Default: $KAMIM_DATA_ROOT or ./data."),
            click.option("--num-images", default=num_images, show_default=True,
                         help="Images, spread evenly over the split (so every class appears)."),
            click.option("--batch-size", default=16, show_default=True),
            click.option("--out", default=None, help="Output folder [default: runs/analysis]."),
            click.option("--seed", default=0, show_default=True),
            click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto", show_default=True),
        ]
        return functools.reduce(lambda cmd, opt: opt(cmd), reversed(options), command)

    return decorate


def run_analysis(config: AnalyzeConfig) -> Path:
    """Load models and images, run one analysis, write ``<out>/<analysis>.{json,png,config.json}``."""
    from . import analyses
    from .analysis_inputs import load_images, load_models, pick_device, require_vit
    from .plots import save_figure, save_json

    config.out = config.out or str(runs_root() / "analysis")
    print(format_config(config), file=sys.stderr, flush=True)  # configs and progress: stderr; results: stdout
    started = time.perf_counter()
    models = load_models(list(config.checkpoints), list(config.labels), pick_device(config.device))
    if len({m.img_size for m in models}) > 1:
        raise UserError("the checkpoints were trained at different --img-size; compare models of one size")
    if config.analysis != "reconstruction":
        require_vit(models, config.analysis)
    images = load_images(config.dataset, config.split, config.data_root, config.num_images)
    args = (models, images, config.batch_size)
    if isinstance(config, ReconstructionConfig):
        results, fig = analyses.reconstruction(*args, config.mask_ratio, config.seed, config.grid_images)
    elif isinstance(config, AttentionMapConfig):
        results, fig = analyses.attention_maps(*args, config.depth, config.head, tuple(config.query))
    elif isinstance(config, TsneConfig):
        results, fig = analyses.tsne(*args, config.depth, config.perplexity, config.seed,
                                     config.max_iter)
    elif isinstance(config, PcaConfig):
        results, fig = analyses.pca(*args, config.depth, config.image_index)
    elif config.analysis == "fourier":
        results, fig = analyses.fourier(*args)
    else:
        results, fig = analyses.attention_per_depth(*args, config.analysis.removeprefix("attention-"))
    out = Path(config.out)
    name = config.analysis
    save_config(config, out / f"{name}.config.json")
    save_json({"analysis": name, "config": dataclasses.asdict(config), "images": images.indices,
               "classes": images.classes, "results": results}, out / f"{name}.json")
    png = save_figure(fig, out / f"{name}.png")
    print_summary(name, results)
    print(f"wrote {out / f'{name}.json'} and {png} in {time.perf_counter() - started:.1f}s")
    return png


def print_summary(name: str, results: dict) -> None:
    for label, r in results.items():
        if name == "reconstruction":
            line = (f"PSNR {r['psnr']:.3f} dB  SSIM {r['ssim']:.4f}  masked-only PSNR {r['psnr_masked']:.3f} dB")
        elif "mean" in r:
            line = " ".join(f"{v:.3g}" for v in r["mean"]) + "  (per depth 1..L)"
        elif "delta_log_amplitude" in r:
            line = " ".join(f"{v:.3g}" for v in r["delta_log_amplitude"]) + "  (depth 0..L)"
        elif "centroid_distance" in r:
            line = f"pre/post centroid distance {r['centroid_distance']:.3g}, cosine {r['mean_cosine_pre_post']:.3g}"
        else:
            continue
        print(f"  {label}: {line}")


@click.group()
def analyze() -> None:
    """The paper's analyses of pretrained encoders; each writes JSON and a PNG overlaying the checkpoints.

    \b
    Example (SimMIM vs KAMIM):
      kamim analyze reconstruction --checkpoint runs/simmim --checkpoint runs/kamim \\
          --label SimMIM --label KAMIM --out runs/analysis
    """


@analyze.command("reconstruction", short_help="PSNR/SSIM and an image grid of reconstructions.")
@common_options(num_images=64)
@click.option("--mask-ratio", default=0.4, show_default=True, help="The original notebook used 0.4 (training: 0.6).")
@click.option("--grid-images", default=4, show_default=True, help="Rows of the image grid.")
def reconstruction_command(**kwargs) -> None:
    """PSNR/SSIM of reconstructions and an image grid (input, masked, reconstruction per checkpoint).

    PSNR/SSIM compare full reconstructed images with the normalised inputs, as the original notebook
    did (hence low values); psnr_masked uses the masked pixels only. Same masks for every checkpoint.

    \b
    Example:
      kamim analyze reconstruction --checkpoint runs/simmim --checkpoint runs/kamim --num-images 64
    """
    if not 0 < kwargs["mask_ratio"] < 1:
        raise UserError(f"--mask-ratio {kwargs['mask_ratio']} must be between 0 and 1")
    run_analysis(ReconstructionConfig(analysis="reconstruction", **kwargs))


@analyze.command("attention-maps", short_help="Attention of a query token, per checkpoint.")
@common_options(num_images=5)
@click.option("--depth", default=-1, show_default=True, help="Block, 1-based; -1 = last (the original's depth 11).")
@click.option("--head", default=0, show_default=True)
@click.option("--query", type=(int, int), default=(3, 8), show_default=True, help="Query token X Y on the grid.")
def attention_maps_command(**kwargs) -> None:
    """Attention of one query token over the image, per checkpoint.

    \b
    Example:
      kamim analyze attention-maps --checkpoint runs/kamim --query 3 8 --depth -1 --head 0
    """
    run_analysis(AttentionMapConfig(analysis="attention-maps", **kwargs))


@analyze.command("attention-distance", short_help="Mean attention distance per depth and head.")
@common_options(num_images=64)
def attention_distance_command(**kwargs) -> None:
    """Mean attention distance (pixels) per depth and head: how far each block looks.

    \b
    Example:
      kamim analyze attention-distance --checkpoint runs/simmim --checkpoint runs/kamim
    """
    run_analysis(AnalyzeConfig(analysis="attention-distance", **kwargs))


@analyze.command("attention-nmi", short_help="NMI of attention per depth (low = collapse).")
@common_options(num_images=64)
def attention_nmi_command(**kwargs) -> None:
    """Normalised mutual information between queries and keys per depth (low = attention collapse).

    \b
    Example:
      kamim analyze attention-nmi --checkpoint runs/simmim --checkpoint runs/kamim
    """
    run_analysis(AnalyzeConfig(analysis="attention-nmi", **kwargs))


@analyze.command("fourier", short_help="Delta log amplitude of tokens per depth.")
@common_options(num_images=16)
def fourier_command(**kwargs) -> None:
    """Relative log amplitude of the highest-frequency token component per depth (0 = embeddings).

    \b
    Example:
      kamim analyze fourier --checkpoint runs/simmim --checkpoint runs/kamim
    """
    run_analysis(AnalyzeConfig(analysis="fourier", **kwargs))


@analyze.command("tsne", short_help="t-SNE of patch tokens coloured by class.")
@common_options(num_images=16)
@click.option("--depth", default=-1, show_default=True, help="Block, 1-based; -1 = last.")
@click.option("--perplexity", default=20.0, show_default=True)
@click.option("--max-iter", default=1000, show_default=True, help="t-SNE iterations (sklearn minimum 250).")
def tsne_command(**kwargs) -> None:
    """t-SNE of all patch tokens of the images at one block, coloured by class.

    \b
    Example:
      kamim analyze tsne --checkpoint runs/simmim --checkpoint runs/kamim --num-images 16
    """
    run_analysis(TsneConfig(analysis="tsne", **kwargs))


@analyze.command("pca", short_help="PCA of tokens before/after self-attention.")
@common_options(num_images=16)
@click.option("--depth", default=-1, show_default=True, help="Block, 1-based; -1 = last.")
@click.option("--image-index", default=8, show_default=True, help="Which of the selected images (0-based).")
def pca_command(**kwargs) -> None:
    """2-D PCA of one image's tokens before and after self-attention (how much attention moves them).

    \b
    Example:
      kamim analyze pca --checkpoint runs/simmim --checkpoint runs/kamim --image-index 8
    """
    run_analysis(PcaConfig(analysis="pca", **kwargs))
