"""The tests' one support module (test modules import from here, never from each other): load
a job script's main(), run the README's commands, fabricate data trees and results roots in
real formats, copy a shared run before writing into it, the engine's toy set-up, and pause a
process for certain."""
import contextlib
import glob
import io
import os
import pickle
import re
import runpy
import shlex
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import torchvision
from PIL import Image
from torch import nn

REPO = Path(__file__).resolve().parents[1]
DIGITS_ARGS = ["--preset", "digits-resnet20", "--workers", "2", "--epochs", "6", "--period", "2",
               "--lambda2", "0.2", "--seed", "3", "--batch-size", "64"]


def documented_columns(table: str) -> dict[str, str]:
    """The columns and types docs/results.md's section on `table` documents."""
    text = (REPO / "docs" / "results.md").read_text()
    section = text.split(f"\n## `{table}`", 1)[1].split("\n## ", 1)[0]
    return dict(re.findall(r"^\| `([\w.]+)` \| (\w+) \|", section, flags=re.M))


def written_columns(results: Path, table: str) -> dict[str, str]:
    """The columns and types of a table as written (run_id lives in the directory names)."""
    schema = pq.read_schema(next((Path(results) / table).rglob("part-0.parquet")))
    return {f.name: str(f.type).replace("double", "float64") for f in schema}


class Terminal(io.StringIO):
    """A captured stream that says it is a terminal, so output is written as a terminal shows it."""

    def isatty(self):
        return True


def job_main(name: str):
    return runpy.run_path(str(REPO / "jobs" / f"{name}.py"))["main"]


README = (REPO / "README.md").read_text()
README_COMMANDS = [re.split(r"\s+#", line)[0].strip() for line in re.findall(r"^    (python .+)$", README, flags=re.M)]
NEEDS_NO_DATA = re.compile(r"--(dataset|preset) digits|--help|jobs/status\.py --results results$|"
                           r"read_parquet\('results/runs'\)|csg\.attach")
# Appended to the README's commands that train for minutes: the same flags, fewer epochs and trials.
# The sweep's 2 trials run at once, as the README's 4 do two by two (2 epochs let ASHA stop one).
README_SWEEP_TRIALS = 2
SHORTER = {"train_cifar": ["--epochs", "1"],
           "tune_cifar": ["--epochs", "2", "--num-samples", str(README_SWEEP_TRIALS)]}


def readme_commands_without_data() -> list[str]:
    """The README's commands that need no data set (the quickstart has its own test)."""
    return [command for command in README_COMMANDS if NEEDS_NO_DATA.search(command) and "quickstart" not in command]


def run_readme_commands(cwd: Path) -> dict[str, str]:
    """Each of those commands, as written, from `cwd` (the trainings first, then what lists
    them): what it printed. A job runs in this process (its flags parsed as the shell would pass
    them, only `SHORTER`), a `python -c` line as a process."""
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    printed, before = {}, os.getcwd()
    os.chdir(cwd)
    try:
        for command in sorted(readme_commands_without_data(), key=reads_the_runs):
            words = shlex.split(command)
            if words[1] == "-c":
                done = subprocess.run([sys.executable, *words[1:]], capture_output=True, text=True, timeout=120,
                                      env=env, check=False)
                assert done.returncode == 0, f"{command}\n{done.stderr[-2000:]}"
                printed[command] = done.stdout
                continue
            name = words[1].removeprefix("jobs/").removesuffix(".py")
            printed[command] = _job_output(name, words[2:] if "--help" in words else
                                           [*words[2:], *SHORTER.get(name, [])])
    finally:
        os.chdir(before)
    return printed


def reads_the_runs(command: str) -> bool:
    return "jobs/status.py" in command or "read_parquet" in command


def _job_output(name: str, argv: list[str]) -> str:
    """A job's stdout; `--help` must exit 0, any other run return."""
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        if "--help" not in argv:
            job_main(name)(argv)
            return out.getvalue()
        with pytest.raises(SystemExit) as exit_info:
            job_main(name)(argv)
    assert exit_info.value.code == 0
    return out.getvalue()


def make_imagefolder(root: Path, classes=("cat", "dog", "owl"), per_class=(6, 3), size=40, seed=0) -> Path:
    rng = np.random.default_rng(seed)
    for split, count in zip(("train", "val"), per_class):
        for i, name in enumerate(classes):
            folder = root / split / name
            folder.mkdir(parents=True, exist_ok=True)
            for j in range(count):
                pixels = rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
                pixels[..., i % 3] = 255  # each class tinted, so there is something to learn
                Image.fromarray(pixels).save(folder / f"{j}.png")
    return root


def make_digits_imagefolder(root: Path, size=32, per_class: int | None = None) -> Path:
    """scikit-learn's handwritten digits (the package's own train/test split) as an ImageFolder
    tree of RGB PNGs upscaled to `size`: small images whose mirror image can be another class.
    `per_class` keeps the first images of each class in each split."""
    from csg.data import digits_split

    x_train, x_test, y_train, y_test = digits_split()
    for split, images, labels in (("train", x_train, y_train), ("val", x_test, y_test)):
        counts = np.zeros(10, dtype=int)
        for index, (image, label) in enumerate(zip(images, labels)):
            if per_class is not None and counts[label] >= per_class:
                continue
            counts[label] += 1
            folder = root / split / str(label)
            folder.mkdir(parents=True, exist_ok=True)
            gray = Image.fromarray((image[0] * 255).astype(np.uint8)).resize((size, size), Image.BILINEAR)
            gray.convert("RGB").save(folder / f"{index}.png")
    return root


def make_cifar10(root: Path, per_batch=20, test=20, seed=0) -> Path:
    rng = np.random.default_rng(seed)
    base = root / "cifar-10-batches-py"
    base.mkdir(parents=True)

    def batch(n):
        return {b"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8), b"labels": list(rng.integers(0, 10, n))}

    for name, n in [*((f"data_batch_{i}", per_batch) for i in range(1, 6)), ("test_batch", test)]:
        with open(base / name, "wb") as f:
            pickle.dump(batch(n), f)
    with open(base / "batches.meta", "wb") as f:
        pickle.dump({b"label_names": [f"c{i}".encode() for i in range(10)]}, f)
    return root


def fabricated_runs(root, runs: dict) -> None:
    """`runs` rows only (run id -> method, dataset): enough for an analysis's validation, which
    runs first."""
    import pandas as pd

    from csg.store.results import ResultStore
    from csg.store.run_record import RUNS_SCHEMA

    store = ResultStore(str(root))
    for run_id, (method, dataset) in runs.items():
        row = {name: None for name in RUNS_SCHEMA.names}
        row.update(method=method, dataset=dataset, num_classes=10, num_filters=64, status="finished",
                   checkpoint=f"/nowhere/{run_id}")
        store.write("runs", run_id, pd.DataFrame([row]), RUNS_SCHEMA)


def copy_results(results: Path, dest: Path) -> Path:
    """A results root's tables copied to `dest`, for a test that writes (an analysis's table,
    a rerun's rows). The `runs` rows name their checkpoints by absolute path and the analyses
    read checkpoints from there, read-only: the copy shares the original's checkpoints and
    leaves out `checkpoints/` and `_leases/`. Copy `checkpoints/` yourself to train into it."""
    shutil.copytree(results, dest, ignore=lambda folder, names: [
        name for name in names if Path(folder) == Path(results) and name in ("checkpoints", "_leases")])
    return dest


def toy_loader(n=32, classes=3, seed=0):
    """A DataLoader of `n` random 1x8x8 images in `classes` classes, batches of 8."""
    import torch
    from torch.utils.data import DataLoader, TensorDataset

    g = torch.Generator().manual_seed(seed)
    x = torch.rand(n, 1, 8, 8, generator=g)
    y = torch.arange(n) % classes
    return DataLoader(TensorDataset(x, y), batch_size=8)


def engine_setup(method="csg", scheme="alternate", gate_kind="learned", **kw):
    """A 3-class ResNet-20 on 1-channel images, its gate and optimizers, seeded: (cfg, model,
    gate, optimizers)."""
    import torch

    from csg.config import TrainConfig
    from csg.method import engine
    from csg.method.gate import ClassSpecificGate, FixedGate
    from csg.method.models import build_model

    torch.manual_seed(0)
    cfg = TrainConfig(method=method, scheme=scheme, gate=gate_kind, epochs=2, lr=0.05, **kw)
    model = build_model("resnet20", 3, in_channels=1, mean=(0.5,), std=(0.3,))
    if method == "std":
        gate = None
    elif gate_kind == "fixed":
        gate = FixedGate(3, 64, 20, 4)
    else:
        gate = ClassSpecificGate(3, 64)
    return cfg, model, gate, engine.build_optimizers(model, gate, cfg)


def _thread_states(pid: int) -> str:
    states = ""
    for stat in glob.glob(f"/proc/{pid}/task/*/stat"):
        with contextlib.suppress(FileNotFoundError):  # a thread that just ended
            text = open(stat).read()
            states += text[text.rindex(")") + 2]
    return states


@contextlib.contextmanager
def paused(pid: int, timeout_s: float = 10.0):
    """SIGSTOP `pid` and wait until every thread of it is stopped; SIGCONT on the way out.
    kill() returns before the stop lands: the kernel wakes one thread to take the signal and
    the others run on until it does, so a busy process (the GCS's gRPC threads) can still
    answer a request made right after kill(). Linux only (/proc)."""
    os.kill(pid, signal.SIGSTOP)
    try:
        deadline = time.monotonic() + timeout_s
        while (states := _thread_states(pid)) and set(states) - set("tT"):
            if time.monotonic() > deadline:
                raise AssertionError(f"process {pid} not stopped {timeout_s} s after SIGSTOP: threads {states}")
            time.sleep(0.001)
        yield
    finally:
        os.kill(pid, signal.SIGCONT)


# Models of one's own, for csg.attach and the jobs' `--model tests.helpers:NAME` (a factory spec).
def tiny_vit(num_classes: int) -> nn.Module:
    """A tiny Vision Transformer: 32 px, patch 8, 2 layers, hidden 64."""
    return torchvision.models.VisionTransformer(image_size=32, patch_size=8, num_layers=2, num_heads=2,
                                                hidden_dim=64, mlp_dim=128, num_classes=num_classes)


class OwnNet(nn.Module):
    """A researcher's own network: two conv blocks, then an MLP head."""

    def __init__(self, num_classes: int):
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(), nn.MaxPool2d(2),
                                  nn.Conv2d(16, 24, 3, padding=1), nn.BatchNorm2d(24), nn.ReLU())
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(24, 32), nn.ReLU(),
                                  nn.Linear(32, num_classes))

    def forward(self, x):
        return self.head(self.body(x))


def own_net(num_classes: int) -> nn.Module:
    return OwnNet(num_classes)
