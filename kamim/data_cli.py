"""``kamim data info``: check a dataset before a long job."""

from __future__ import annotations

import click
import numpy as np

from kamim.datasets import DATASETS, BadSampleError, open_dataset


@click.group()
def data() -> None:
    """Inspect datasets.

    \b
    Example:
      kamim data info --dataset photos --split train
    """


@data.command("info")
@click.option("--dataset", type=click.Choice(DATASETS), default="photos", show_default=True)
@click.option("--split", default="train", show_default=True, help="train or val (test is an alias of val)")
@click.option("--data-root", default=None, help="Data root [default: $KAMIM_DATA_ROOT or ./data]")
@click.option("--sample", default=200, show_default=True, help="Images decoded to estimate the size range.")
def info(dataset: str, split: str, data_root: str | None, sample: int) -> None:
    """Count, classes, image size range and location of a dataset (materialises `photos` if needed).

    \b
    Example:
      kamim data info --dataset cifar10 --data-root /datasets --split val
    """
    ds = open_dataset(dataset, split, data_root)
    click.echo(f"dataset   {ds.name}")
    click.echo(f"split     {ds.split}")
    click.echo(f"location  {ds.location}")
    click.echo(f"images    {len(ds)}")
    shown = ", ".join(ds.classes[:10]) + (" ..." if len(ds.classes) > 10 else "")
    click.echo(f"classes   {len(ds.classes)}: {shown}")
    counts = np.bincount([ds.label(i) for i in range(len(ds))], minlength=len(ds.classes))
    click.echo(f"per class min {counts.min()} / median {int(np.median(counts))} / max {counts.max()}")
    indices = np.linspace(0, len(ds) - 1, num=min(sample, len(ds))).astype(int)
    sizes, bad = [], []
    for i in indices:
        try:
            image, _ = ds[int(i)]
            sizes.append(image.shape[:2])
        except BadSampleError as error:
            bad.append(str(error))
    if sizes:
        hs, ws = np.array(sizes).T
        click.echo(
            f"size      {len(sizes)} decoded: height {hs.min()}-{hs.max()}, width {ws.min()}-{ws.max()}, "
            f"shorter side median {int(np.median(np.minimum(hs, ws)))}"
        )
    if bad:
        click.echo(f"unreadable {len(bad)} of {len(indices)} sampled, e.g. {bad[0]}")
    click.echo(f"fingerprint {ds.fingerprint()}")
