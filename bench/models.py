"""Each model family through csg.attach: the layer it gates, K, the time attach takes, and an
STD step against a CSG step on the same batch.

    python bench/models.py                                  # the families of the tests, 32 px, this CPU
    python bench/models.py --models torchvision:resnet152 --image-size 224 --device cuda

Steps are the engine's (forward, backward, optimizer, projection); each figure is the median
over `--steps` steps after one untimed one. One line per model, then the summary line.
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch

from csg.cli import summary
from csg.config import TrainConfig
from csg.method import engine
from csg.method.gate import ClassSpecificGate
from csg.method.models import build_model

FAMILIES = ("resnet20", "torchvision:resnet18", "torchvision:vgg11_bn", "torchvision:densenet121",
            "torchvision:mobilenet_v3_small", "torchvision:efficientnet_b0", "torchvision:regnet_y_400mf",
            "torchvision:convnext_tiny", "torchvision:resnet152")


def step_ms(model, gate, path: str, batch, device, steps: int) -> float:
    cfg = TrainConfig(method="std" if gate is None else "csg", lr=0.01, epochs=10)
    optimizer = engine.build_optimizers(model, gate, cfg)[path]
    loss = engine.CSGLoss.of(cfg, float(model.num_filters))
    times = []
    for step in range(steps + 1):
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        engine.train_one_epoch(model, gate, [batch], path, optimizer, loss, device)
        if device.type == "cuda":
            torch.cuda.synchronize()
        if step:
            times.append(time.perf_counter() - start)
    return 1000 * statistics.median(times)


def main(argv=None):
    parser = argparse.ArgumentParser(description=summary(__doc__))
    parser.add_argument("--models", nargs="+", default=list(FAMILIES), help="model specs")
    parser.add_argument("--image-size", type=int, default=32)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--classes", type=int, default=10)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    generator = torch.Generator().manual_seed(0)
    batch = (torch.rand(args.batch_size, 3, args.image_size, args.image_size, generator=generator),
             torch.randint(0, args.classes, (args.batch_size,), generator=generator))
    ratios, slowest_attach = [], (0.0, "")
    for spec in args.models:
        torch.manual_seed(0)
        start = time.perf_counter()
        model = build_model(spec, args.classes)
        built = time.perf_counter() - start
        found = _attach_seconds(spec, args.classes)
        slowest_attach = max(slowest_attach, (found, spec))
        model.to(device)
        gate = ClassSpecificGate(args.classes, model.num_filters).to(device)
        std = step_ms(model, None, "std", batch, device, args.steps)
        csg = step_ms(model, gate, "csg", batch, device, args.steps)
        ratios.append(csg / std)
        print(f"{spec}: layer {model.layer!r}, K = {model.num_filters}, conv of the filters "
              f"{model.producer or '-'}, linear head {'yes' if model.linear_head is not None else 'no'}; "
              f"built in {built:.2f} s (attach {found:.2f} s); step at {args.image_size} px, batch "
              f"{args.batch_size}: STD {std:.0f} ms, CSG {csg:.0f} ms ({csg / std:.2f}x)", flush=True)
    print(f"models: n={len(args.models)} csg_over_std_median={statistics.median(ratios):.3f} "
          f"slowest_attach_s={slowest_attach[0]:.3f} ({slowest_attach[1]})")


def _attach_seconds(spec: str, classes: int) -> float:
    """attach's share of a build: the one forward pass that finds the layer."""
    from csg.method.attach import attach
    from csg.method.models import model_factory

    net = model_factory(spec)(classes, 3)
    start = time.perf_counter()
    attach(net, classes, quiet=True)
    return time.perf_counter() - start


if __name__ == "__main__":
    main()
