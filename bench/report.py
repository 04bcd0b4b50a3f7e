"""Regenerate the README "Performance" section (between `<!-- bench:start -->` and `<!-- bench:end -->`)
and bench/results/performance.png from bench/results/*.json. Without the markers, prints the section.
"""

from __future__ import annotations

import json
from pathlib import Path

import click

from .common import REPO, results_dir
from .report_scale import scale_chart, scale_lines

START, END = "<!-- bench:start -->", "<!-- bench:end -->"
ORDER = ("loader", "step", "build", "fidelity", "wds_vs_folder", "wds_stream", "scale", "host_pages", "gpu")


def load(folder: Path) -> dict[str, dict]:
    found = {p.stem: json.loads(p.read_text()) for p in sorted(folder.glob("*.json"))}
    return {name: found[name] for name in ORDER if name in found}


def _num(value: float, digits: int = 1) -> str:
    return f"{value:,.{digits}f}"


def machine_line(record: dict) -> str:
    m = record["machine"]
    gpu = f", {m['gpu']}" if m.get("gpu") else ""
    return (f"{m['cores']} cores ({m['cpu_model']}{gpu}), torch {m['torch']}, OpenCV {m['opencv']}, "
            f"load {m.get('load_average')}, {m['date']}")


def targets_table(records: dict[str, dict]) -> list[str]:
    lines = ["| measure | value | target | |", "|---|---:|---:|---|"]
    for record in records.values():
        for r in record.get("ratios", []):
            target = f"{r['op']} {r['target']}" if r["target"] is not None else ""
            verdict = "" if r["met"] is None else ("met" if r["met"] else "**not met**")
            note = f" ({r['note']})" if r.get("note") else ""
            lines.append(f"| {r['name']}{note} | {r['value']:.3f} | {target} | {verdict} |")
    return lines


def detail_tables(records: dict[str, dict]) -> list[str]:
    out: list[str] = []
    if "loader" in records:
        rec = records["loader"]
        out += ["", f"Loader images/s (192 px, batch {rec['config']['batch_size']}, {rec['workers']} workers, "
                "median):", "", "| variant | " + " | ".join(rec["results"]) + " |",
                "|---|" + "---:|" * len(rec["results"])]
        names = next(iter(rec["results"].values()))["images_per_s"]
        for name in names:
            out.append(f"| {name} | " + " | ".join(_num(r["images_per_s"][name]["median"])
                                                  for r in rec["results"].values()) + " |")
    if "step" in records:
        rec = records["step"]
        c = rec["config"]
        kamim = "; ".join(
            f"kamim-cached {d.upper()} {rec['step_seconds'][f'kamim-{d}']['median'] * 1e3:.0f} ms (points per crop "
            f"median {rec['points_per_crop'][d]['median']:.0f}; the weighting alone {rec['weighting_ms'][d]:.1f} ms)"
            for d in c["detectors"])
        out += ["", f"Train step, {c['model']} batch {c['batch_size']} on {rec['device']} ({rec['precision']}): "
                f"simmim {rec['step_seconds']['simmim']['median'] * 1e3:.0f} ms; {kamim}. The weighting is the "
                "batch's ring maps + densities + weights, computed where the trainer computes them."]
    if "build" in records:
        for tag, r in records["build"]["results"].items():
            out += ["", f"Cache build on {tag} ({r['images']} images; decode+resize alone "
                    + ", ".join(f"{_num(v)} img/s with {w} worker(s)" for w, v in r["decode_resize_images_per_s"].items())
                    + "):", "", "| detector | img/s, 1 worker | img/s, 2 workers | zarr bytes/image | keypoints/image |",
                    "|---|---:|---:|---:|---:|"]
            for d, v in r["detectors"].items():
                size = r["bytes"].get(f"zarr-{d}", {})
                out.append(f"| {d} | {_num(v['images_per_s_1_worker'])} | {_num(v['images_per_s_2_workers'])} | "
                           f"{size.get('bytes_per_image', '')} | {size.get('keypoints_per_image_median', '')} |")
            wds = {k: v for k, v in r["bytes"].items() if k.startswith("wds")}
            out.append("")
            out.append(f"Source JPEG {r['bytes']['source_image_bytes']:,} bytes/image; "
                       + ", ".join(f"{k} {v['bytes_per_image']:,} bytes/image" for k, v in wds.items()) + ".")
    if "fidelity" in records:
        out += ["", "Fidelity (Pearson r of per-patch densities, cached vs online on the same random crop of held-out "
                "photos, median / 10th percentile; floor A: online with the crop box moved 1 source pixel, floor B: "
                "the crop translated 1 output pixel; weight: mean weight at T 0.25 cached / online, median):", "",
                "| set | detector | cache | w_ps | cached r | floor A | floor B | r / floor A | density ratio | weight ratio |",
                "|---|---|---|---:|---:|---:|---:|---:|---:|---:|"]
        for tag, per in records["fidelity"]["results"].items():
            for d, v in per.items():
                if not isinstance(v, dict):
                    continue
                for key, f in v.items():
                    if not key.startswith("w_ps") or "floor_a" not in f:
                        continue
                    fa, fb = f["floor_a"], f["floor_b"]
                    first = next(x for x in v if x.startswith("w_ps"))
                    for name, e in f.items():
                        if name in ("floor_a", "floor_b"):
                            continue
                        dr = v[first][name].get("density_ratio", {})
                        out.append(f"| {tag} | {d} | {name} | {key[4:]} | {e['r']['median']:.3f} / {e['r']['p10']:.3f} | "
                                   f"{fa['median']:.3f} / {fa['p10']:.3f} | {fb['median']:.3f} / {fb['p10']:.3f} | "
                                   f"{e['r_over_floor_a']['median']:.3f} / {e['r_over_floor_a']['p10']:.3f} | "
                                   f"{dr.get('median', float('nan')):.2f} | {e['mean_weight_ratio_T0.25']['median']:.3f} |")
    if "wds_vs_folder" in records:
        r = records["wds_vs_folder"]["images_per_s"]
        out += ["", "Large photos, kamim-cached loader: " + ", ".join(f"{k} {_num(v['median'])} img/s"
                                                                     for k, v in r.items()) + "."]
    if "gpu" in records:
        g = records["gpu"]
        steps = ", ".join(f"{m} {_num(v['images_per_s'])} img/s"
                          + (f" (MFU {v['mfu'] * 100:.1f}%)" if v.get("mfu") is not None else "")
                          for m, v in g["step"].items())
        loader = ", ".join(f"{k} {_num(v)} img/s" for k, v in g["loader"]["images_per_s"].items())
        out += ["", f"GPU ({g['device']}): {g['model']} {g['precision']}, batch {g['batch_size']}: {steps}; "
                f"the weighting alone {g['weighting_ms']:.2f} ms. Loader on the large photos with "
                f"{g['loader']['workers']} workers: {loader}."]
    return out


def scale_chart_path(records: dict[str, dict]) -> Path | None:
    """bench/results[/quick]/scale.png, drawn from scale.json (None without it)."""
    quick = any(r.get("quick") for r in records.values())
    return scale_chart(records, results_dir(quick) / "scale.png")


def section(records: dict[str, dict], chart: Path | None) -> str:
    if not records:
        return "No benchmark results yet: run `make bench`."
    first = next(iter(records.values()))
    quick = any(r.get("quick") for r in records.values())
    lines = ["## Performance", "",
             "Measured by `make bench` (CPU; `make bench-gpu` on a GPU; its first run writes the cache-scale "
             "benchmark's synthetic caches up to 1.28 M images, about 24 GB and 15 minutes, skipping an N the "
             "disk cannot hold). Each ratio compares variants run "
             "side by side in the same process (interleaved repetitions, median of paired ratios), so a "
             "busy machine slows both sides alike; absolute figures are for context.",
             "", f"Machine: {machine_line(first)}." + (" **Quick mode: small, noisy samples.**" if quick else ""),
             "", *targets_table(records), *detail_tables(records)]
    lines += scale_lines(records, scale_chart_path(records))
    if chart is not None:
        lines += ["", f"![benchmark ratios]({chart.relative_to(REPO).as_posix()})"]
    return "\n".join(lines)


def distinct(value: float, target: float) -> str:
    """``value`` with enough digits to differ from ``target`` when it does (1.031 vs 1.03, not "1.03"), so
    a label never reads as the target while its bar says otherwise. Met/not met is decided unrounded."""
    for digits in range(3, 8):
        text = f"{value:.{digits}g}"
        if value == target or float(text) != float(f"{target:.{digits}g}"):
            return text
    return f"{value:.8g}"


def chart(records: dict[str, dict], path: Path) -> Path | None:
    """One bar per ratio that has a target, as its margin over the target (value/target for '>=',
    target/value for '<='): right of the line at 1 is met. Each bar is labelled with the value itself."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [r for rec in records.values() for r in rec.get("ratios", []) if r["target"] is not None]
    if not rows:
        return None
    margins = [r["value"] / r["target"] if r["op"] == ">=" else r["target"] / max(r["value"], 1e-9) for r in rows]
    margins = [min(m, 10.0) for m in margins]  # a value of 0 against a '<=' target: draw it at 10x, not infinity
    fig, ax = plt.subplots(figsize=(9, 0.32 * len(rows) + 1.3))
    y = list(range(len(rows)))
    ax.barh(y, margins, color=["#3a3" if r["met"] else "#c33" for r in rows])
    ax.axvline(1.0, color="k", linewidth=1)
    for yi, margin, r in zip(y, margins, rows, strict=True):
        verdict = "met" if r["met"] else "not met"
        ax.text(margin, yi, f" {distinct(r['value'], r['target'])} ({r['op']} {r['target']:g}: {verdict})",
                va="center", fontsize=7)
    ax.set_yticks(y, [r["name"] for r in rows], fontsize=7)
    ax.invert_yaxis()
    ax.set_xlim(0, max(max(margins) * 1.35, 1.3))
    ax.set_xlabel("margin over the target (1 = exactly the target; green = met)")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def write_readme(text: str, readme: Path) -> bool:
    """Replace only what lies between the markers; False (and nothing written) if they are absent."""
    if not readme.is_file():
        return False
    content = readme.read_text()
    if START not in content or END not in content or content.index(START) > content.index(END):
        return False
    head, rest = content.split(START, 1)
    _, tail = rest.split(END, 1)
    readme.write_text(f"{head}{START}\n{text}\n{END}{tail}")
    return True


def run(quick: bool = False, readme: Path = REPO / "README.md") -> str:
    folder = results_dir(quick)
    records = load(folder)
    path = chart(records, folder / "performance.png")
    text = section(records, path)
    if quick or not records or not write_readme(text, readme):
        print(text)  # quick results (and an empty results folder) never go into the README
    else:
        print(f"updated the Performance section of {readme}")
    return text


@click.command()
@click.option("--quick", is_flag=True, help="Report the quick-mode results (printed, README untouched).")
def main(quick: bool) -> None:
    """Regenerate the README Performance section and bench/results/performance.png."""
    run(quick)


if __name__ == "__main__":
    main()
