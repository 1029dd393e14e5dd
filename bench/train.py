"""Training speed, side by side in one run: the engine's STD and CSG steps, the CSG step with
the gate built the authors' way, an epoch in a plain process against the same epoch under Ray
Train, host synchronisations per step, and the ImageFolder loader against the model; the CSG
step through attach's hook against the same step written out (`attached_over_builtin`).

    python bench/train.py                                  # this CPU: ResNet-20 at 32 px, a few minutes
    python bench/train.py --device cuda --model resnet18 --image-size 224 --batch-size 256
    python bench/train.py --device cuda --amp bf16 --channels-last --steps-only   # the step's fast paths

Steps run on the same synthetic batches (no disk); each figure is the median over `--steps`
timed steps after `--warmup` untimed ones. The last line is the summary.
"""
from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from PIL import Image
from torch.utils.data import DataLoader

from csg import data as data_lib
from csg.cli import summary
from csg.config import TrainConfig
from csg.method import engine
from csg.method.gate import ClassSpecificGate
from csg.method.models import build_model
from csg.method.precision import Precision, resolve_amp
from csg.testing.host_syncs import HostSyncCounter
from csg.testing.written_out import WrittenOut

REPO = Path(__file__).resolve().parents[1]


class LoopGate(ClassSpecificGate):
    """The gate rows built as the authors' code builds them: a Python loop over the samples,
    reading each label on the host."""

    def forward(self, labels: torch.Tensor) -> torch.Tensor:
        return torch.stack([self.matrix[int(label)] for label in labels])


def synchronize(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def stepper(args, path: str, gate_class=ClassSpecificGate, wrap=None):
    """One engine step (forward, backward, optimizer, projection) on `path`, ready to call."""
    torch.manual_seed(0)
    cfg = TrainConfig(method="std" if path == "std" else "csg", lr=0.05, epochs=10)
    device = torch.device(args.device)
    precision = Precision(resolve_amp(args.amp, device), device.type, args.channels_last)
    model = precision.model(build_model(args.model, args.classes, 3).to(device))
    gate = None if path == "std" else gate_class(args.classes, model.num_filters).to(device)
    optimizer = engine.build_optimizers(model, gate, cfg)[path]
    runner = model if wrap is None else wrap(model)
    runner = torch.compile(runner) if args.compile else runner
    generator = torch.Generator().manual_seed(0)
    batch = [(torch.rand(args.batch_size, 3, args.image_size, args.image_size, generator=generator),
              torch.randint(0, args.classes, (args.batch_size,), generator=generator))]
    return lambda: engine.train_one_epoch(runner, gate, batch, path, optimizer,
                                          engine.CSGLoss.of(cfg, float(model.num_filters)), device,
                                          precision=precision)


def step_seconds(args, steps: dict) -> dict:
    """Median seconds per step of each of `steps` (name -> step), timed in turn, round after
    round, so drift in the machine's speed falls on all of them alike."""
    times = {name: [] for name in steps}
    for round_ in range(args.warmup + args.steps):
        for name, step in steps.items():
            synchronize(args.device)
            start = time.perf_counter()
            step()
            synchronize(args.device)
            if round_ >= args.warmup:
                times[name].append(time.perf_counter() - start)
    return {name: statistics.median(values) for name, values in times.items()}


def syncs_per_step(args) -> float:
    """Host reads by csg's code per CSG step, over a 4-step epoch (the epoch's one read included)."""
    cfg = TrainConfig(method="csg", lr=0.05, epochs=10)
    model = build_model(args.model, args.classes, 3).to(args.device)
    gate = ClassSpecificGate(args.classes, model.num_filters).to(args.device)
    optimizer = engine.build_optimizers(model, gate, cfg)["csg"]
    batches = [(torch.rand(8, 3, args.image_size, args.image_size), torch.randint(0, args.classes, (8,)))] * 4
    with HostSyncCounter() as syncs:
        engine.train_one_epoch(model, gate, batches, "csg", optimizer, engine.CSGLoss.of(cfg, float(model.num_filters)),
                               torch.device(args.device))
    return syncs.total / len(batches)


def plain_epochs(epochs: int) -> list[float]:
    """The digits preset's epochs (2 threads, one process), as a Ray worker runs them."""
    from csg.config import PRESETS

    cfg = TrainConfig(**{**PRESETS["digits-resnet20"], "epochs": epochs})
    info = data_lib.describe("digits", None)
    train_set, _ = data_lib.load("digits", None)
    torch.manual_seed(cfg.seed)
    loader = DataLoader(train_set, batch_size=cfg.batch_size, shuffle=True)
    model = build_model(cfg.model, info.num_classes, info.in_channels, info.mean, info.std)
    gate = ClassSpecificGate(info.num_classes, model.num_filters)
    optimizers = engine.build_optimizers(model, gate, cfg)
    seconds = []
    for epoch in range(epochs):
        path = engine.epoch_path(epoch, cfg)
        seconds.append(engine.train_one_epoch(model, gate, loader, path, optimizers[path],
                                              engine.CSGLoss.of(cfg, float(model.num_filters)),
                                              torch.device("cpu"), epoch=epoch).seconds)
    return seconds


def ray_epochs(epochs: int) -> tuple[list[float], float]:
    """The same epochs under Ray Train with 1 worker given this process's threads as CPUs,
    through the training job: the epoch times it records, and the job's wall time."""
    with tempfile.TemporaryDirectory() as results:
        start = time.perf_counter()
        subprocess.run([sys.executable, str(REPO / "jobs" / "train_cifar.py"), "--preset", "digits-resnet20",
                        "--workers", "1", "--cpus-per-worker", str(torch.get_num_threads()), "--epochs", str(epochs),
                        "--results", results, "--run-id", "bench"],
                       check=True, capture_output=True)
        wall = time.perf_counter() - start
        rows = pd.read_parquet(Path(results) / "epochs").sort_values("epoch")
        return rows["epoch_time_s"].tolist(), wall


def loader_images_per_second(workers: int, folder: Path, size: int, batches: int) -> float:
    """Images per second out of the ImageFolder training loader (JPEG decode + augmentation)."""
    train_set, _ = data_lib.load("imagefolder", str(folder), size)
    loader = DataLoader(train_set, batch_size=32, shuffle=True, num_workers=workers,
                        persistent_workers=workers > 0)
    seen, start = 0, None
    for index, (images, _) in enumerate(loader):
        if index == 1:  # the first batch pays for starting the workers
            start, seen = time.perf_counter(), 0
        seen += len(images)
        if index == batches:
            break
    return seen / (time.perf_counter() - start)


def jpeg_tree(root: Path, count: int, classes: int = 4) -> Path:
    rng = np.random.default_rng(0)
    for split in ("train", "val"):
        for c in range(classes):
            folder = root / split / f"c{c}"
            folder.mkdir(parents=True)
            for i in range(count // classes if split == "train" else 1):
                Image.fromarray(rng.integers(0, 256, (375, 500, 3), dtype=np.uint8)).save(folder / f"{i}.jpg")
    return root


def main(argv=None):
    parser = argparse.ArgumentParser(description=summary(__doc__))
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--model", default="resnet20")
    parser.add_argument("--image-size", type=int, default=32)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--classes", type=int, default=10)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--epochs", type=int, default=4, help="epochs of the plain-versus-Ray comparison")
    parser.add_argument("--loader-model", default="resnet18", help="the model the 224-px loader feeds")
    parser.add_argument("--amp", choices=("bf16", "fp16", "off"), default=None,
                        help="the steps' mixed precision (default: bf16 on a GPU that has it, off on CPU)")
    parser.add_argument("--channels-last", action="store_true")
    parser.add_argument("--compile", action="store_true", help="torch.compile the stepped models")
    parser.add_argument("--steps-only", action="store_true",
                        help="time the steps and stop: no Ray epochs, no loader (for comparing fast paths)")
    args = parser.parse_args(argv)
    say = lambda line: print(line, flush=True)  # noqa: E731

    timed = step_seconds(args, {"std": stepper(args, "std"), "csg": stepper(args, "csg"),
                                "loop": stepper(args, "csg", LoopGate), "unhooked": stepper(args, "csg", wrap=WrittenOut)})
    std, csg, loop, unhooked = timed["std"], timed["csg"], timed["loop"], timed["unhooked"]
    amp = resolve_amp(args.amp, torch.device(args.device))
    fast = f"amp {amp}{', channels-last' if args.channels_last else ''}{', compiled' if args.compile else ''}"
    say(f"step ({args.model}, {args.image_size} px, batch {args.batch_size}, {args.device}, {fast}): "
        f"STD {1000 * std:.1f} ms, CSG {1000 * csg:.1f} ms, CSG with a per-sample loop gate {1000 * loop:.1f} ms, "
        f"CSG written out without the hook {1000 * unhooked:.1f} ms")
    if args.steps_only:
        say(f"steps: model={args.model} size={args.image_size} batch={args.batch_size} amp={amp} "
            f"channels_last={int(args.channels_last)} compile={int(args.compile)} std_ms={1000 * std:.1f} "
            f"csg_ms={1000 * csg:.1f} img_s={args.batch_size / csg:.0f} csg_over_std={csg / std:.3f} "
            f"loop_over_gather={loop / csg:.3f} attached_over_builtin={csg / unhooked:.3f}")
        return
    syncs = syncs_per_step(args)
    say(f"host reads per CSG step (csg's code, 4-step epoch): {syncs:.2f}")

    plain = plain_epochs(args.epochs)
    under_ray, wall = ray_epochs(args.epochs)
    steady_plain, steady_ray = statistics.median(plain[1:]), statistics.median(under_ray[1:])
    startup = wall - sum(under_ray)
    say(f"digits epoch (steady, median of epochs 2-{args.epochs}): plain {steady_plain:.2f} s, Ray Train 1 worker "
        f"{steady_ray:.2f} s; the Ray job's time beyond its training epochs {startup:.1f} s")

    with tempfile.TemporaryDirectory() as folder:
        tree = jpeg_tree(Path(folder), 256)
        rates = {w: loader_images_per_second(w, tree, 224, 6) for w in (0, 1, 2)}
    say("imagefolder loader at 224 px: " + ", ".join(f"{w} workers {r:.0f} img/s" for w, r in rates.items()))
    model_args = argparse.Namespace(**{**vars(args), "model": args.loader_model, "image_size": 224,
                                       "batch_size": 32, "steps": 3, "warmup": 1, "classes": 4})
    model_rate = 32 / step_seconds(model_args, {"csg": stepper(model_args, "csg")})["csg"]
    say(f"{args.loader_model} CSG steps at 224 px, batch 32: {model_rate:.0f} img/s")
    say(f"train: csg_over_std={csg / std:.3f} loop_over_gather={loop / csg:.3f} attached_over_builtin={csg / unhooked:.3f} "
        f"ray_over_plain={steady_ray / steady_plain:.3f} ray_startup_s={startup:.1f} syncs_per_step={syncs:.2f} "
        f"loader_img_s={max(rates.values()):.0f} model_img_s={model_rate:.0f}")


if __name__ == "__main__":
    main()
