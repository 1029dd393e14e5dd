"""How evenly a learned gate shares the filters among classes, and what drives it.

Trains the digits CSG recipe in this process (no Ray; the same engine, sampler and seeds as
a 1-worker run) for each variant and seed, and prints per variant: accuracy, MIS, L1-density,
the filters each class owns (G[c, k] > 0.5: min, median, max over classes) and how many
classes own none, as mean over seeds. With --trace, the per-class counts after every CSG epoch
of the first seed, to see when the split is decided. `rho` is the Spearman correlation, over
classes, between each class's STD-path training loss when the first CSG epoch starts and the
filters it owns at the end: positive when the classes the network already knows best lose
the race for filters.

    python bench/gate_balance.py                                   # every variant, seeds 0-2
    python bench/gate_balance.py --variants preset lambda2=0.05 --seeds 0 1 2 3 4
    python bench/gate_balance.py --variants preset --trace

A variant is `preset` or KEY=VALUE[,KEY=VALUE] overriding the digits preset, where KEY is a
training option (`--lambda2 0.05` is `lambda2=0.05`) or `gate_momentum`, the gate's SGD
momentum alone (the weights keep theirs).
"""
from __future__ import annotations

import argparse
import dataclasses
import math
import time

import numpy as np
import torch
from torch.utils.data import DataLoader, DistributedSampler

from analysis.gate_stats import balance, filters_owned
from csg import data as data_lib
from csg.cli import summary
from csg.config import PRESETS, TrainConfig, resolved_g_density
from csg.method import engine
from csg.method.features import gap_features
from csg.method.gate import ClassSpecificGate, g_from_density
from csg.method.models import build_model
from csg.method.mutual_info import mi_matrix, mis

DEFAULT_VARIANTS = ["preset", "lambda2=0.5", "lambda2=0.3", "lambda2=0.1", "lambda2=0.05", "lambda2=0.01",
                    "gate_momentum=0", "csg_lr=0.01", "csg_epochs=2", "warmup=6", "lambda2=0.1,epochs=45",
                    "lambda2=0.1,g_density=0.2"]


def parse_variant(text: str) -> dict:
    if text == "preset":
        return {}
    fields = {f.name: f.type for f in dataclasses.fields(TrainConfig)}
    overrides = {}
    for item in text.split(","):
        key, value = item.split("=")
        if key != "gate_momentum" and key not in fields:
            raise SystemExit(f"gate_balance.py: error: unknown option {key!r} in variant {text!r}")
        overrides[key] = _number(value)
    return overrides


def _number(text: str):
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            continue
    return text


def train(overrides: dict, seed: int, trace=None) -> dict:
    overrides = dict(overrides)
    gate_momentum = overrides.pop("gate_momentum", None)
    cfg = TrainConfig(**{**PRESETS["digits-resnet20"], **overrides, "seed": seed})
    torch.manual_seed(cfg.seed)
    info = data_lib.describe(cfg.dataset, cfg.data)
    train_set, test_set = data_lib.load(cfg.dataset, cfg.data)
    sampler = DistributedSampler(train_set, num_replicas=1, rank=0, shuffle=True, seed=cfg.seed)
    loader = DataLoader(train_set, batch_size=cfg.batch_size, sampler=sampler)
    test_loader = DataLoader(test_set, batch_size=256)
    model = build_model(cfg.model, info.num_classes, info.in_channels, info.mean, info.std)
    gate = ClassSpecificGate(info.num_classes, model.num_filters)
    optimizers = engine.build_optimizers(model, gate, cfg)
    if gate_momentum is not None:
        optimizers["csg"].param_groups[-1]["momentum"] = gate_momentum
        optimizers["csg"].param_groups[-1]["nesterov"] = gate_momentum > 0 and cfg.nesterov
    schedulers = engine.build_schedulers(optimizers, cfg)
    g = g_from_density(resolved_g_density(cfg, info.num_classes), info.num_classes, model.num_filters)
    device = torch.device("cpu")
    class_loss = None
    for epoch in range(cfg.epochs):
        sampler.set_epoch(epoch)
        path = engine.epoch_path(epoch, cfg)
        if path == "csg" and class_loss is None:
            class_loss = per_class_loss(model, train_set, info.num_classes)
        engine.train_one_epoch(model, gate, loader, path, optimizers[path], engine.CSGLoss.of(cfg, g), device, epoch=epoch)
        engine.step_schedulers(schedulers)
        if trace is not None and path == "csg":
            trace(epoch, filters_owned(gate.matrix.detach().numpy()))
    correct, total = engine.evaluate(model, test_loader, device)
    features = gap_features(model, test_loader, device)
    matrix = gate.matrix.detach().numpy()
    from scipy.stats import spearmanr

    return {
        "accuracy": correct / total,
        "rho_loss_owned": float(spearmanr(class_loss, filters_owned(matrix)).statistic),
        "mis": mis(mi_matrix(features["features"], features["labels"], info.num_classes, 3, seed)),
        "l1_density": float(matrix.mean()),
        **balance(matrix),
    }


@torch.no_grad()
def per_class_loss(model, dataset, num_classes: int) -> np.ndarray:
    """Mean STD-path cross-entropy of each class on the training set (eval mode)."""
    model.eval()
    images, labels = dataset.tensors
    losses = torch.nn.functional.cross_entropy(model(images), labels, reduction="none")
    return torch.zeros(num_classes).index_add_(0, labels, losses).div_(torch.bincount(labels)).numpy()


def main(argv=None):
    parser = argparse.ArgumentParser(description=summary(__doc__))
    parser.add_argument("--variants", nargs="+", default=DEFAULT_VARIANTS)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--threads", type=int, default=1, help="torch threads (1: runs beside other work)")
    parser.add_argument("--trace", action="store_true", help="per-class counts after each CSG epoch, first seed")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    header = (f"{'variant':<28}{'acc':>14}{'MIS':>16}{'density':>9}{'owned min/med/max':>20}{'none':>6}"
              f"{'rho':>7}")
    lines = []
    for text in args.variants:
        overrides = parse_variant(text)
        rows = []
        for i, seed in enumerate(args.seeds):
            start = time.time()
            trace = (lambda e, c: print(f"  {text} seed {seed} epoch {e}: {c.tolist()}", flush=True)) \
                if args.trace and i == 0 else None
            rows.append(train(overrides, seed, trace))
            print(f"{text} seed {seed}: " + " ".join(f"{k}={v:.4g}" for k, v in rows[-1].items())
                  + f" ({time.time() - start:.0f} s)", flush=True)
        mean = {k: float(np.mean([r[k] for r in rows])) for k in rows[0]}
        std = {k: float(np.std([r[k] for r in rows], ddof=1)) if len(rows) > 1 else math.nan for k in rows[0]}
        lines.append(f"{text:<28}{mean['accuracy']:>8.4f}±{std['accuracy']:.3f}{mean['mis']:>10.4f}±{std['mis']:.3f}"
                     f"{mean['l1_density']:>9.4f}{mean['min']:>8.1f}/{mean['median']:.1f}/{mean['max']:.1f}"
                     f"{mean['classes_without']:>8.1f}{mean['rho_loss_owned']:>7.2f}")
    print(f"\nmeans over seeds {args.seeds} (± sample std):\n{header}")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
