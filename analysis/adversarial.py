"""Adversarial sample detection (Sec. 5.2, Appendix I): can a random forest on a model's
per-layer features tell adversarial images from clean ones?

Protocol, per run and attack:
- a pool of images is drawn once per class from the chosen split (seeded): as many as the
  largest training size plus the test size;
- every pool image is attacked (targeted at a random class other than its own) and both its
  clean and its adversarial version are described by the GAP after every conv layer (STD path);
- each (training size, repeat) draws, per class, disjoint training and test images from the pool;
  an image's clean and adversarial versions always go to the same side, so no image, clean or
  attacked, is in both a detector's training and test sets;
- the detector is a random forest trained on clean (0) against adversarial (1) features; its
  error rate is measured on the test images, every attacked image counted whether or not the
  attack reached its target (the success rate is recorded beside it).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
import pyarrow as pa
import torch
from torch.utils.data import DataLoader, TensorDataset

from analysis.fan_out import fan_out, gpus_per_task
from analysis.options import Compared, option
from analysis.studies import StudyError, resolve_runs
from csg.data import split_labels, stacked
from csg.method.features import default_device, gap_features
from csg.store.results import register_schemas

WHITE_BOX = ("fgsm", "pgd", "cw")
ATTACK_DEFAULTS = {  # Appendix I
    "fgsm": {"eps": 0.031},
    "pgd": {"eps": 0.031, "alpha": 2 / 255, "steps": 7},
    "cw": {"c": 1.0, "steps": 100, "lr": 0.01},
}

SCHEMAS = register_schemas({
    "adversarial": pa.schema([("attack", pa.string()), ("train_per_class", pa.int64()), ("repeat", pa.int64()),
                              ("n_train", pa.int64()), ("n_test", pa.int64()), ("error_rate", pa.float64()),
                              ("attack_success_rate", pa.float64())]),
})


@dataclass(frozen=True)
class Options(Compared):
    attacks: tuple[str, ...] = option(WHITE_BOX, "attacks to run", choices=WHITE_BOX)
    eps: float = option(ATTACK_DEFAULTS["fgsm"]["eps"], "FGSM and PGD L-inf budget")
    pgd_steps: int = option(ATTACK_DEFAULTS["pgd"]["steps"], "PGD iterations")
    pgd_alpha: float = option(ATTACK_DEFAULTS["pgd"]["alpha"], "PGD step size")
    cw_steps: int = option(ATTACK_DEFAULTS["cw"]["steps"], "CW iterations")
    cw_c: float = option(ATTACK_DEFAULTS["cw"]["c"], "CW loss weight c")
    cw_lr: float = option(ATTACK_DEFAULTS["cw"]["lr"], "CW learning rate")
    train_per_class: tuple[int, ...] = option((500, 1000, 2000), "detector training sizes, images per class "
                                              "(each image: clean and adversarial)")
    test_per_class: int = option(100, "detector test images per class")
    repeats: int = option(5, "detectors per size, on different draws")
    split: str = option("train", "split the images come from", choices=("train", "test"))
    seed: int = option(0, "seed of the image draws, targets and forests")
    batch_size: int = option(256, "images per attack batch")

    def attack_options(self) -> dict:
        return {"fgsm": {"eps": self.eps}, "pgd": {"eps": self.eps, "alpha": self.pgd_alpha, "steps": self.pgd_steps},
                "cw": {"c": self.cw_c, "steps": self.cw_steps, "lr": self.cw_lr}}


def random_targets(labels: torch.Tensor, num_classes: int, generator: torch.Generator) -> torch.Tensor:
    """For each label, a class drawn uniformly from the other classes."""
    shift = torch.randint(1, num_classes, labels.shape, generator=generator)
    return (labels + shift) % num_classes


def white_box(model: torch.nn.Module, name: str, options: dict):
    """A torchattacks attack, targeted by label, in pixel space [0, 1] (models normalise inside)."""
    import torchattacks

    kinds = {"fgsm": torchattacks.FGSM, "pgd": torchattacks.PGD, "cw": torchattacks.CW}
    attack = kinds[name](model, **{**ATTACK_DEFAULTS[name], **options})
    attack.set_mode_targeted_by_label(quiet=True)
    return attack


def attacked(model, images: torch.Tensor, targets: torch.Tensor, name: str, options: dict,
             batch_size: int = 256) -> torch.Tensor:
    model.eval()
    attack = white_box(model, name, options)
    return torch.cat([attack(images[i:i + batch_size], targets[i:i + batch_size])
                      for i in range(0, len(images), batch_size)])


def draw_pool(labels: np.ndarray, per_class: int, rng: np.random.Generator) -> np.ndarray:
    """`per_class` indices of every class, without replacement; a class too small is an error."""
    chosen = []
    for c in np.unique(labels):
        members = np.flatnonzero(labels == c)
        if len(members) < per_class:
            raise ValueError(f"the detector needs {per_class} images of class {c}; the split has {len(members)}")
        chosen.append(rng.choice(members, per_class, replace=False))
    return np.sort(np.concatenate(chosen))


def detector_split(labels: np.ndarray, train_per_class: int, test_per_class: int,
                   rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Disjoint (train, test) positions, `train_per_class` and `test_per_class` of each class."""
    train, test = [], []
    for c in np.unique(labels):
        members = rng.permutation(np.flatnonzero(labels == c))
        test.append(members[:test_per_class])
        train.append(members[test_per_class:test_per_class + train_per_class])
    return np.concatenate(train), np.concatenate(test)


def detector_error(clean: np.ndarray, adversarial: np.ndarray, train: np.ndarray, test: np.ndarray,
                   seed: int) -> float:
    """Error rate of a random forest telling adversarial (1) from clean (0) features."""
    from sklearn.ensemble import RandomForestClassifier

    def stacked(rows):
        return np.vstack([clean[rows], adversarial[rows]]), np.r_[np.zeros(len(rows)), np.ones(len(rows))]

    forest = RandomForestClassifier(n_estimators=100, random_state=seed, n_jobs=1)
    forest.fit(*stacked(train))
    x_test, y_test = stacked(test)
    return float((forest.predict(x_test) != y_test).mean())


def attack_pool(checkpoint: str, split: str, pool: np.ndarray, name: str, options: dict, seed: int,
                batch_size: int = 256) -> dict:
    """Attack the pool images of a run's checkpoint: clean and adversarial all-layer features,
    labels, whether each attack reached its target, and whether it changed the prediction."""
    from csg.store import checkpoint as ckpt_lib

    model, cfg, info = ckpt_lib.restore_model(checkpoint, ckpt_lib.read(checkpoint))
    device = default_device()
    model = model.to(device)
    images, labels = stacked(ckpt_lib.evaluation_split(cfg, split), pool)
    targets = random_targets(labels, info.num_classes, torch.Generator().manual_seed(seed))
    adversarial = attacked(model, images.to(device), targets.to(device), name, options, batch_size).cpu()

    def features(batch):
        return gap_features(model, DataLoader(TensorDataset(batch, labels), batch_size), device, all_layers=True)

    clean, attacked_out = features(images), features(adversarial)
    return {
        "clean": clean["all_layers"], "adversarial": attacked_out["all_layers"], "labels": labels.numpy(),
        "success": attacked_out["predictions"] == targets.numpy(),
        "changed": attacked_out["predictions"] != clean["predictions"],
    }


def detection_row(pooled: dict, size: int, test_per_class: int, repeat: int, seed: int) -> dict:
    """One detector: training size `size` per class, draw `repeat`."""
    train, test = detector_split(pooled["labels"], size, test_per_class, np.random.default_rng([seed, size, repeat]))
    return {
        "train_per_class": size, "repeat": repeat, "n_train": 2 * len(train), "n_test": 2 * len(test),
        "error_rate": detector_error(pooled["clean"], pooled["adversarial"], train, test, seed + repeat),
        "attack_success_rate": float(pooled["success"].mean()),
    }


def run_detection(checkpoints: dict[str, str], attacks, options: dict, train_sizes, test_per_class: int,
                  repeats: int, split: str = "train", seed: int = 0, batch_size: int = 256,
                  progress=print) -> pd.DataFrame:
    """The whole protocol on Ray: a task per (run, attack) attacks the pool, then a task per
    (run, attack, training size, repeat) fits a detector. Rows of the `adversarial` table."""
    import ray

    from csg.store.checkpoint import checkpoint_split

    labels = split_labels(checkpoint_split(next(iter(checkpoints.values())), split))
    pool = draw_pool(labels, max(train_sizes) + test_per_class, np.random.default_rng(seed))
    attack_task = ray.remote(num_cpus=1, num_gpus=gpus_per_task())(attack_pool)  # pools stay in the object store
    pooled = {(run, name): attack_task.remote(checkpoint, split, pool, name, options.get(name, {}), seed, batch_size)
              for run, checkpoint in checkpoints.items() for name in attacks}

    def report(key, row, done, total):
        progress(f"detectors {done}/{total}: {key[0]} {key[1]} train {row['train_per_class']}/class "
                 f"repeat {row['repeat']}: error {row['error_rate']:.3f}")

    fits = fan_out("detectors", {(run, name, size, repeat): (detection_row, (ref, size, test_per_class, repeat, seed))
                                 for (run, name), ref in pooled.items() for size in train_sizes
                                 for repeat in range(repeats)}, on_result=report)
    rows = [{"run_id": key[0], "attack": key[1], **row} for key, row in fits.items()]
    return pd.DataFrame(rows).sort_values(["run_id", "attack", "train_per_class", "repeat"], ignore_index=True)


def table3(frame: pd.DataFrame, names: dict[str, str] | None = None) -> pd.DataFrame:
    """Mean error rate (%) per attack and training size, one column per run (as Table 3)."""
    table = frame.pivot_table(index=["attack", "train_per_class"], columns="run_id", values="error_rate",
                              aggfunc="mean", observed=True) * 100
    return table.rename(columns=names or {})


def main(store, options: Options, start=None, echo=print) -> pd.DataFrame:
    """Table 3 for `options.runs`: refuse bad input (StudyError), `start()` Ray, detect, write
    the `adversarial` table and print the table."""
    runs = resolve_runs(store, options.runs)
    if min(options.train_per_class) < 1 or options.test_per_class < 1 or options.repeats < 1:
        raise StudyError("--train-per-class, --test-per-class and --repeats must be >= 1")
    if start is not None:
        start()
    try:
        frame = run_detection({run.run_id: run.checkpoint for run in runs}, options.attacks, options.attack_options(),
                              options.train_per_class, options.test_per_class, options.repeats, options.split,
                              options.seed, options.batch_size, progress=lambda line: echo(line, flush=True))
    except ValueError as exc:  # too few images for the sizes asked
        raise StudyError(f"--train-per-class/--test-per-class: {exc}") from None
    for run, rows in frame.groupby("run_id", sort=False):
        store.write("adversarial", run, rows)
    echo("\nmean detector error rate (%), as Table 3; attack success rate in the adversarial table")
    echo(table3(frame, {run.run_id: run.label for run in runs}).to_string(float_format="{:.2f}".format))
    return frame
