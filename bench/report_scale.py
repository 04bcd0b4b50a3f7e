"""The README Performance section's cache-scale part: a table per N and bench/results/scale.png (per-sample
keypoint cost and memory added per loader worker against the number of images, log x), from scale.json;
and the like-for-like webdataset line from wds_stream.json."""

from __future__ import annotations

from pathlib import Path

from .common import REPO


def scale_lines(records: dict[str, dict], chart: Path | None) -> list[str]:
    out: list[str] = []
    if "scale" in records:
        rec = records["scale"]
        out += ["", "Cache scale (synthetic caches written by the project's writer, read through the reader's "
                "derived flat file by real DataLoader workers; `python -m bench.scale`):", "",
                "| detector | N | zarr B/image | flat file MiB | flat build CPU s | workers | keypoint cost us "
                "(median / p90; a batch's keypoints after its images) | the same, flat-file pages resident us "
                "(median / p90) | one sample's keypoints right after its "
                "image us (median) | first release's points(i)+crop_points us (warm; in brackets the keypoint cost "
                "as left over it, a measure this VM's day-to-day speed does not move) | open s (max) | "
                "anon MiB / PSS MiB added per worker (its image decodes included) | kamim-cached/simmim images/s "
                "(in brackets CPU time per image, batches interleaved) |",
                "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
        for detector, per_n in rec["results"].items():
            for n, entry in sorted(per_n.items(), key=lambda item: int(item[0])):
                c = entry["cache"]
                loader = entry.get("loader", {})
                ratio = f"{loader['ratio']:.3f}" if loader else ""
                ratio += f" ({loader['work']['ratio']:.3f})" if "work" in loader else ""
                for workers, k in entry["keypoints"].items():
                    mem = k.get("added_per_worker_mib", {})
                    chained = k["median_us_of"].get("chained", float("nan"))
                    out.append(
                        f"| {detector} | {int(n):,} | {c['bytes_per_image']:.0f} | {c['flat_bytes'] / 2**20:,.0f} | "
                        f"{c.get('flat_build_cpu_s', c.get('flat_build_s', ''))} | {workers} | "
                        f"{k['cost_us']['median']:.1f} / {k['cost_us']['p90']:.1f} | "
                        f"{k.get('resident_us', {}).get('median', float('nan')):.1f} / "
                        f"{k.get('resident_us', {}).get('p90', float('nan')):.1f} | "
                        f"{k.get('one_by_one_us', {}).get('median', float('nan')):.1f} | "
                        f"{chained:.1f} ({k['cost_us']['median'] / chained:.2f}) | {k['open_s']['max']:.3f} | "
                        f"{mem.get('Anonymous_mib', 0):.0f} / {mem.get('Pss_mib', 0):.0f} | {ratio} |")
        if chart is not None:
            out += ["", f"![cache scale]({chart.relative_to(REPO).as_posix()})"]
    if "wds_stream" in records:
        r = records["wds_stream"]["results"]
        out += ["", "Webdataset like for like (same shards; SimMIM decodes the image only): " + "; ".join(
            f"{tag} " + ", ".join(f"{k} {v['median']:,.1f} img/s" for k, v in t["images_per_s"].items())
            for tag, t in r.items()) + "."]
    return out


def scale_chart(records: dict[str, dict], path: Path) -> Path | None:
    """Per-sample keypoint cost (median, p90) and memory added per worker against N, log x."""
    if "scale" not in records:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (cost_ax, mem_ax) = plt.subplots(1, 2, figsize=(10, 3.6))
    for detector, per_n in records["scale"]["results"].items():
        ns = sorted(int(n) for n in per_n)
        if not ns:
            continue
        for workers in next(iter(per_n.values()))["keypoints"]:
            ks = [per_n[str(n)]["keypoints"][workers] for n in ns]
            label = f"{detector}, {workers} workers"
            line = cost_ax.plot(ns, [k["cost_us"]["median"] for k in ks], "o-", label=f"{label} (median)")[0]
            cost_ax.plot(ns, [k["cost_us"]["p90"] for k in ks], ":", color=line.get_color())
            if all("resident_us" in k for k in ks):
                cost_ax.plot(ns, [k["resident_us"]["median"] for k in ks], "s-.", color=line.get_color(), alpha=0.8)
            if all("one_by_one_us" in k for k in ks):
                cost_ax.plot(ns, [k["one_by_one_us"]["median"] for k in ks], "x--", color=line.get_color(), alpha=0.6)
            mem_ax.plot(ns, [k["added_per_worker_mib"].get("Anonymous_mib", 0) for k in ks], "o-", label=f"{label} anon")
            mem_ax.plot(ns, [k["added_per_worker_mib"].get("Pss_mib", 0) for k in ks], "s--", color=mem_ax.lines[-1].get_color(),
                        alpha=0.6, label=f"{label} PSS")
    cost_ax.axhline(20, color="k", linewidth=0.8)
    cost_ax.set(xscale="log", xlabel="images in the cache (N)", ylabel="us per sample",
                title="keypoints per sample in a loader worker, a batch's after its images (o median, : p90;\n"
                "s: flat-file pages resident); one sample's right after its own image (x, median)")
    mem_ax.axhline(200, color="k", linewidth=0.8)
    mem_ax.set(xscale="log", xlabel="images in the cache (N)", ylabel="MiB added per loader worker",
               title="memory per worker (anonymous; PSS shares pages)")
    cost_ax.legend(fontsize=6)
    mem_ax.legend(fontsize=6)
    for ax in (cost_ax, mem_ax):
        ax.title.set_fontsize(8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
