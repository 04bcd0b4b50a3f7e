"""``make demo``: the whole pipeline on the embedded ``photos`` dataset in a few minutes of CPU.

cache (FAST) -> short SimMIM and KAMIM pretraining of a slim ViT -> linear probe of both ->
``kamim weights`` on a few images -> reconstruction (and, time permitting, attention-distance)
analysis -> ``runs/demo/report.md``. Every stage runs the real ``kamim`` command as a subprocess, so the
demo exercises exactly what a user types. Reruns reuse the cache, finished pretraining runs and cached
probe features (fixed run dirs under runs/demo/). A stage whose command is missing is reported as
"not yet available" and the demo goes on.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import click

from kamim.cli import COMMANDS
from kamim.config import format_config, save_config


@dataclass
class DemoConfig:
    out: str = "runs/demo"
    dataset: str = "photos"
    data_root: str | None = None
    model: str = "vit_t"
    # A slim ViT (6 blocks of width 96, ~2 CPU-seconds per step of 32 images) so that two pretrainings
    # fit the 10-minute budget on 2 CPU cores.
    overrides: tuple[str, ...] = ("depth=6", "embed_dim=96", "num_heads=3")
    steps: int = 80
    batch_size: int = 32
    workers: int = 2
    detector: str = "fast"
    weight_ps: int = 8
    temperature: float = 0.25
    probe_layer: int = 6  # the last block of the slim ViT (the original probes block 8 of 12)
    probe_epochs: int = 100
    weight_images: int = 3
    recon_images: int = 32
    optional_budget_s: float = 540.0  # attention-distance (~15 s) runs only if the demo is still under this
    fresh: bool = False


@dataclass
class Stage:
    name: str
    status: str = "pending"  # ok | reused | failed | not yet available | skipped
    seconds: float = 0.0
    notes: list[str] = field(default_factory=list)


def available(verb: str) -> bool:
    if verb not in COMMANDS:
        return False
    module = COMMANDS[verb][0].split(":")[0]
    try:
        return importlib.util.find_spec(module) is not None
    except ModuleNotFoundError:
        return False


class Demo:
    def __init__(self, config: DemoConfig) -> None:
        self.config = config
        self.out = Path(config.out)
        self.logs = self.out / "logs"
        self.stages: list[Stage] = []
        self.started = time.perf_counter()

    def elapsed(self) -> float:
        return time.perf_counter() - self.started

    def header(self, name: str) -> Stage:
        stage = Stage(name)
        self.stages.append(stage)
        print(f"\n{'=' * 78}\n== {name}   (demo time so far {self.elapsed():.0f} s)\n{'=' * 78}", flush=True)
        return stage

    def kamim(self, stage: Stage, verb: str, *args: str, log: str) -> bool:
        """Run ``python -m kamim VERB ARGS``, streaming its output to the console and a log file."""
        if not available(verb):
            stage.status = "not yet available"
            print(f"not yet available: `kamim {verb}`", flush=True)
            return False
        command = [sys.executable, "-m", "kamim", verb, *args]
        print("$ kamim " + " ".join([verb, *args]), flush=True)
        self.logs.mkdir(parents=True, exist_ok=True)
        started = time.perf_counter()
        with open(self.logs / f"{log}.log", "wb") as log_file:
            process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
            while chunk := process.stdout.read1(4096):
                sys.stdout.buffer.write(chunk)
                sys.stdout.flush()
                log_file.write(chunk)
            code = process.wait()
        stage.seconds += time.perf_counter() - started
        if code != 0:
            stage.status = "failed"
            stage.notes.append(f"`kamim {verb}` exited {code}; see logs/{log}.log")
            print(f"!! kamim {verb} failed (exit {code}); continuing", flush=True)
            return False
        if stage.status in ("pending", "reused"):
            stage.status = "ok"
        return True

    # ---- stages -------------------------------------------------------------------------------
    def cache_dir(self) -> Path:
        return self.out / "cache" / f"{self.config.dataset}-train-{self.config.detector}-256.zarr"

    def data_args(self) -> list[str]:
        return ["--data-root", self.config.data_root] if self.config.data_root else []

    def build_cache(self) -> None:
        stage = self.header("1. keypoint cache (FAST, detect once; a rerun reuses it)")
        self.kamim(stage, "cache", "--dataset", self.config.dataset, "--split", "train", "--detector",
                   self.config.detector, "--out", str(self.cache_dir()), "--workers", str(self.config.workers),
                   *self.data_args(), log="cache")

    def run_dir(self, method: str) -> Path:
        return self.out / method

    def finished(self, run: Path) -> bool:
        try:
            info = json.loads((run / "model.json").read_text())
        except (OSError, json.JSONDecodeError):
            return False
        expected = dict(o.split("=") for o in self.config.overrides)
        got = {k: str(v) for k, v in (info.get("overrides") or {}).items()}
        return info.get("step") == self.config.steps and got == expected and info.get("model") == self.config.model

    def pretrain(self, method: str) -> None:
        c = self.config
        stage = self.header(f"2. pretrain {method.upper()} ({c.model} {' '.join(c.overrides)}, {c.steps} steps "
                            f"x batch {c.batch_size})")
        run = self.run_dir(method)
        if self.finished(run) and not c.fresh:
            stage.status = "reused"
            print(f"reusing the finished run {run} (delete it or pass --fresh to retrain)", flush=True)
            return
        if run.exists():
            shutil.rmtree(run)  # a stale or partial demo run: the demo owns runs/demo/
        args = ["--model", c.model, *[a for o in c.overrides for a in ("--override", o)], "--method", method,
                "--dataset", c.dataset, "--steps", str(c.steps), "--batch-size", str(c.batch_size),
                "--workers", str(c.workers), "--device", "cpu", "--out", str(run), "--grid-every", str(c.steps),
                "--save-every", str(c.steps), *self.data_args()]
        if method == "kamim":
            args += ["--cache", str(self.cache_dir()), "--detector", c.detector, "--weight-ps", str(c.weight_ps),
                     "--temperature", str(c.temperature)]
        self.kamim(stage, "pretrain", *args, log=f"pretrain-{method}")

    def linprobe(self, method: str) -> None:
        stage = self.header(f"3. linear probe {method.upper()} (block {self.config.probe_layer}, avg pool)")
        run = self.run_dir(method)
        if not (run / "model.safetensors").is_file():
            stage.status = "skipped"
            print(f"skipped: no pretrained model in {run}", flush=True)
            return
        self.kamim(stage, "linprobe", "--checkpoint", str(run), "--dataset", self.config.dataset,
                   "--layer", str(self.config.probe_layer), "--epochs", str(self.config.probe_epochs),
                   "--device", "cpu", "--workers", str(self.config.workers), "--out", str(run / "linprobe"),
                   *self.data_args(), log=f"linprobe-{method}")

    def weights(self) -> None:
        stage = self.header("4. keypoint weight maps (kamim weights)")
        from kamim.datasets import open_dataset

        dataset = open_dataset(self.config.dataset, "val", self.config.data_root)
        count = self.config.weight_images
        for k in range(count):
            index = round(k * (len(dataset) - 1) / max(count - 1, 1))
            image = dataset.location / dataset.sample_name(index)
            if not self.kamim(stage, "weights", str(image), "--detector", self.config.detector, "--weight-ps",
                              str(self.config.weight_ps), "--temperature", str(self.config.temperature),
                              "--out", str(self.out / "weights" / f"image-{index}"), log=f"weights-{index}"):
                return

    def analyses(self) -> None:
        runs = [(label, self.run_dir(m)) for label, m in (("SimMIM", "simmim"), ("KAMIM", "kamim"))
                if (self.run_dir(m) / "model.safetensors").is_file()]
        checkpoint_args = [a for label, run in runs for a in ("--checkpoint", str(run), "--label", label)]
        stage = self.header("5. reconstruction analysis (PSNR/SSIM, mask ratio 0.4 like the original)")
        if not runs:
            stage.status = "skipped"
            return
        common = [*checkpoint_args, "--dataset", self.config.dataset, "--device", "cpu",
                  "--out", str(self.out / "analysis"), *self.data_args()]
        self.kamim(stage, "analyze", "reconstruction", *common, "--num-images", str(self.config.recon_images),
                   log="analyze-reconstruction")
        stage = self.header("6. attention distance per depth (only if time permits)")
        if self.elapsed() > self.config.optional_budget_s:
            stage.status = "skipped"
            stage.notes.append(f"demo already at {self.elapsed():.0f} s")
            print(f"skipped: the demo is at {self.elapsed():.0f} s (> {self.config.optional_budget_s:.0f} s)")
            return
        self.kamim(stage, "analyze", "attention-distance", *common, "--num-images", "32",
                   log="analyze-attention-distance")

    def run(self) -> Path:
        print(format_config(self.config), flush=True)
        save_config(self.config, self.out / "demo_config.json")
        self.build_cache()
        for method in ("simmim", "kamim"):
            self.pretrain(method)
        for method in ("simmim", "kamim"):
            self.linprobe(method)
        self.weights()
        self.analyses()
        from kamim.demo_report import write_report

        report = write_report(self.out, self.config, self.stages, self.elapsed())
        print(f"\n{'=' * 78}\ndemo finished in {self.elapsed():.0f} s -> {report}", flush=True)
        for stage in self.stages:
            print(f"  {stage.name[:60]:<60} {stage.status:<18} {stage.seconds:6.1f} s")
        return report


@click.command()
@click.option("--out", default="runs/demo", show_default=True)
@click.option("--steps", default=DemoConfig.steps, show_default=True, help="Pretraining steps per method.")
@click.option("--batch-size", default=DemoConfig.batch_size, show_default=True)
@click.option("--workers", default=min(2, os.cpu_count() or 1), show_default=True)
@click.option("--fresh", is_flag=True, help="Retrain even if runs/demo holds finished runs.")
def main(out: str, steps: int, batch_size: int, workers: int, fresh: bool) -> None:
    """The full showcase on `photos`: cache, SimMIM vs KAMIM pretraining, linear probe, weight maps,
    reconstruction analysis, and runs/demo/report.md.

    \b
    Example:
      make demo            # or: python -m kamim.demo --steps 120
    """
    Demo(DemoConfig(out=out, steps=steps, batch_size=batch_size, workers=workers, fresh=fresh)).run()


if __name__ == "__main__":
    main()
