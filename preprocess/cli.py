"""``kamim cache``: build a keypoint cache; ``kamim cache finalize DIR``; ``kamim cache info DIR``."""

from __future__ import annotations

from pathlib import Path

import click

from kamim.errors import UserError


@click.group(invoke_without_command=True, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--dataset", help="photos, cifar10, cifar100, imagenet or folder.  [required to build]")
@click.option("--split", default="train", show_default=True, help="train or val.")
@click.option(
    "--detector", type=click.Choice(["fast", "sift", "orb"]), default="fast", show_default=True,
    help="Keypoint detector (OpenCV defaults); the same default as `kamim pretrain`."
)
@click.option(
    "--detect-size", default=256, show_default=True, help="Shorter side of the image the detector sees."
)
@click.option("--format", "fmt", type=click.Choice(["zarr", "wds"]), default="zarr", show_default=True,
              help="zarr: keypoints only, random access; wds: tar shards of image + keypoints + label.")  # fmt: skip
@click.option(
    "--out", type=click.Path(file_okay=False), help="Output dir (default: ./caches/<dataset>-<split>-<detector>-<size>-<data-root tag>.<format>, "
                                            "where `kamim pretrain` looks)."
)
@click.option("--workers", type=int, help="Worker processes (default: all cores).")
@click.option("--gray", type=click.Choice(["bgr", "rgb"]), default="bgr", show_default=True,
              help="bgr: hand RGB to OpenCV as is (the original); rgb: proper RGB->gray.")  # fmt: skip
@click.option(
    "--store-size", type=int, help="wds: pre-resize stored images down to this shorter side (e.g. 256)."
)
@click.option(
    "--block-size", default=256, show_default=True, help="Images per work block (and per wds shard)."
)
@click.option(
    "--num-partitions", default=1, show_default=True, help="Split the build over this many machines."
)
@click.option(
    "--partition", default=0, show_default=True, help="Which partition (0-based) this machine builds."
)
@click.option(
    "--data-root", type=click.Path(file_okay=False), help="Dataset root (default $KAMIM_DATA_ROOT or ./data)."
)
@click.option("--select/--no-select", default=None,
              help="SIFT/ORB zarr: store per-point attributes so each crop keeps what its own detector would "
                   "(default on; --no-select stores the plain detection).")
@click.pass_context
def cache(ctx: click.Context, dataset, split, detector, detect_size, fmt, out, workers, gray, store_size,
          block_size, num_partitions, partition, data_root, select) -> None:  # fmt: skip
    """Detect keypoints once per image and write the cache that `kamim pretrain` reads.

    Builds on all cores, resumes after interruption (rerun the same command), and records unreadable
    images in errors.jsonl without stopping.

    \b
    Examples:
      kamim cache --dataset photos --detector fast
      kamim cache --dataset imagenet --detector sift --format wds --store-size 256
      kamim cache --dataset imagenet --detector fast --out /scratch/c --num-partitions 8 --partition 3
      kamim cache finalize /scratch/c
      kamim cache info caches/photos-train-fast-256.zarr
    """
    if ctx.invoked_subcommand is not None:
        return
    if not dataset:
        raise UserError("kamim cache needs --dataset (e.g. --dataset photos)")
    from kamim.preprocess.build import CacheConfig, available_cores, build_cache

    cfg = CacheConfig(
        dataset=dataset, split=split, data_root=data_root, detector=detector, detect_size=detect_size,
        format=fmt, out=out, workers=workers or available_cores(), gray=gray, store_size=store_size,
        block_size=block_size, num_partitions=num_partitions, partition=partition, select=select,
    )  # fmt: skip
    build_cache(cfg)


@cache.command()
@click.argument("directory", type=click.Path(file_okay=False))
def finalize(directory: str) -> None:
    """Join the blocks that all partitions built into the final cache.

    \b
    Example:
      kamim cache finalize /scratch/imagenet-train-fast-256.zarr
    """
    from kamim.cache.finalize import finalize as finalize_cache
    from kamim.preprocess.build import summary_line
    from kamim.preprocess.guard import build_lock, naming

    with build_lock(Path(directory)), naming(Path(directory)):
        finalize_cache(Path(directory))
    click.echo(summary_line(Path(directory)))


@cache.command()
@click.argument("directory", type=click.Path(file_okay=False))
def info(directory: str) -> None:
    """Show a cache: counts, keypoints per image, errors, size on disk.

    \b
    Example:
      kamim cache info caches/photos-train-fast-256.zarr
    """
    from kamim.cache.info import describe

    click.echo(describe(Path(directory)))
