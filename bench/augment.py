"""Test accuracy of each ImageFolder augmentation on small images whose mirror image can be
another class: scikit-learn's handwritten digits written as a 32-px ImageFolder tree.

    python bench/augment.py                 # STD ResNet-20, 5 epochs each, a few minutes here
    python bench/augment.py --epochs 15 --seeds 0 1 2

Each run uses the digits preset's optimizer and schedule on the tree, in one plain process
(no Ray: the augmentation is all that differs). The last line is the summary.
"""
from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import torch
from torch.utils.data import DataLoader

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from csg import data as data_lib  # noqa: E402
from csg.cli import summary
from csg.config import PRESETS, TrainConfig  # noqa: E402
from csg.method import engine  # noqa: E402
from csg.method.models import build_model  # noqa: E402
from tests.helpers import make_digits_imagefolder  # noqa: E402


def accuracy(root: Path, augment: str, args, seed: int) -> float:
    torch.manual_seed(seed)
    cfg = TrainConfig(**{**PRESETS["digits-resnet20"], "method": "std", "epochs": args.epochs, "seed": seed})
    train_set, test_set = data_lib.load("imagefolder", str(root), args.image_size, augment=augment)
    info = data_lib.describe("imagefolder", str(root))
    train = DataLoader(train_set, batch_size=cfg.batch_size, shuffle=True, num_workers=args.loader_workers,
                       persistent_workers=args.loader_workers > 0)
    test = DataLoader(test_set, batch_size=256, num_workers=args.loader_workers)
    model = build_model(cfg.model, info.num_classes, info.in_channels, info.mean, info.std)
    optimizers = engine.build_optimizers(model, None, cfg)
    schedulers = engine.build_schedulers(optimizers, cfg)
    for epoch in range(cfg.epochs):
        engine.train_one_epoch(model, None, train, "std", optimizers["std"], engine.CSGLoss.of(cfg, 0.0), torch.device("cpu"),
                               epoch=epoch)
        engine.step_schedulers(schedulers)
    correct, total = engine.evaluate(model, test, torch.device("cpu"))
    return correct / total


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=summary(__doc__))
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--image-size", type=int, default=32)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--loader-workers", type=int, default=1)
    parser.add_argument("--augments", nargs="+", default=list(data_lib.AUGMENTS), choices=data_lib.AUGMENTS)
    args = parser.parse_args(argv)
    results = {}
    with tempfile.TemporaryDirectory() as folder:
        root = make_digits_imagefolder(Path(folder), size=args.image_size)
        for augment in args.augments:
            scores = [accuracy(root, augment, args, seed) for seed in args.seeds]
            results[augment] = sum(scores) / len(scores)
            print(f"{augment:>8}: test accuracy {results[augment]:.4f} (seeds {args.seeds}: "
                  f"{', '.join(f'{s:.4f}' for s in scores)})", flush=True)
    print("augment: " + " ".join(f"{name}={value:.4f}" for name, value in results.items()))
    return results


if __name__ == "__main__":
    main()
