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

import numpy as np
import pandas as pd
import torch
from torch.utils.data import DataLoader, TensorDataset

from csg.data import split_labels, stacked
from csg.method.features import gap_features

WHITE_BOX = ("fgsm", "pgd", "cw")
ATTACK_DEFAULTS = {  # Appendix I
    "fgsm": {"eps": 0.031},
    "pgd": {"eps": 0.031, "alpha": 2 / 255, "steps": 7},
    "cw": {"c": 1.0, "steps": 100, "lr": 0.01},
}


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
    from csg.store.checkpoint import checkpoint_split, restore_model

    model, _, info = restore_model(checkpoint)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    model = model.to(device)
    images, labels = stacked(checkpoint_split(checkpoint, split), pool)
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
    gpu = 1 if ray.cluster_resources().get("GPU", 0) else 0
    attack_task = ray.remote(num_cpus=1, num_gpus=gpu)(attack_pool)
    fit_task = ray.remote(num_cpus=1)(detection_row)
    pooled = {(run, name): attack_task.remote(checkpoint, split, pool, name, options.get(name, {}), seed, batch_size)
              for run, checkpoint in checkpoints.items() for name in attacks}
    fits = {fit_task.remote(ref, size, test_per_class, repeat, seed): (run, name)
            for (run, name), ref in pooled.items() for size in train_sizes for repeat in range(repeats)}
    rows, pending = [], list(fits)
    while pending:
        ready, pending = ray.wait(pending, num_returns=1)
        run, name = fits[ready[0]]
        rows.append({"run_id": run, "attack": name, **ray.get(ready[0])})
        progress(f"detectors {len(rows)}/{len(fits)}: {run} {name} train {rows[-1]['train_per_class']}/class "
                 f"repeat {rows[-1]['repeat']}: error {rows[-1]['error_rate']:.3f}")
    return pd.DataFrame(rows).sort_values(["run_id", "attack", "train_per_class", "repeat"], ignore_index=True)


def table3(frame: pd.DataFrame, names: dict[str, str] | None = None) -> pd.DataFrame:
    """Mean error rate (%) per attack and training size, one column per run (as Table 3)."""
    table = frame.pivot_table(index=["attack", "train_per_class"], columns="run_id", values="error_rate",
                              aggfunc="mean", observed=True) * 100
    return table.rename(columns=names or {})
