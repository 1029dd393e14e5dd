"""What localization costs per image, per method, for a model at an image size: the scoring
step of `analyze.py localize` (maps, segmentation, IoU) on random images and masks, one
process, after one warm-up batch.

    python bench/localize.py                                     # ResNet-152, 128 and 224 px, CPU
    python bench/localize.py --model resnet20 --sizes 32 --channels 1
    python bench/localize.py --device cuda                       # the same on a GPU

GradMap costs one backward per filter per batch, so it is timed on `--filters` filters and
scaled to every filter (the text's scoring) and to 30 per class (the authors' top filters:
a batch needs the union of its classes' top sets, 30 x C filters at most, 30 if the batch is
one class). The per-filter backward is the same whichever filter it is, so the scaling is linear.
"""
from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from analysis.localization import score
from analysis.saliency import CAM, TEXT, ActivMap, GradMap
from csg.cli import summary
from csg.method.models import build_model


def batches(count: int, size: int, channels: int, classes: int, batch: int, seed: int = 0):
    generator = torch.Generator().manual_seed(seed)
    for start in range(0, count, batch):
        n = min(batch, count - start)
        images = torch.rand(n, channels, size, size, generator=generator)
        labels = torch.randint(0, classes, (n,), generator=generator)
        masks = torch.rand(n, size, size, generator=generator) > 0.5
        yield images, labels, masks, torch.arange(start, start + n)


def per_image_seconds(model, method, filters, size, args, thresholds=None) -> float:
    data = list(batches(args.images + args.batch, size, args.channels, args.classes, args.batch))
    score(model, method, data[:1], filters, args.classes, thresholds, device=args.device)  # warm-up
    if args.device == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    score(model, method, data[1:], filters, args.classes, thresholds, device=args.device)
    if args.device == "cuda":
        torch.cuda.synchronize()
    return (time.perf_counter() - start) / sum(len(b[1]) for b in data[1:])


def main(argv=None):
    parser = argparse.ArgumentParser(description=summary(__doc__))
    parser.add_argument("--model", default="resnet152")
    parser.add_argument("--sizes", type=int, nargs="+", default=[128, 224])
    parser.add_argument("--channels", type=int, default=3)
    parser.add_argument("--classes", type=int, default=6)
    parser.add_argument("--images", type=int, default=8, help="images timed (after a warm-up batch)")
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--filters", type=int, default=4, help="GradMap filters timed")
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args(argv)
    torch.manual_seed(0)
    model = build_model(args.model, args.classes, args.channels, (0.5,) * args.channels, (0.25,) * args.channels)
    model = model.to(args.device).eval()
    k = model.num_filters
    thresholds = torch.full((k,), 0.5)
    per_size = []
    for size in args.sizes:
        cam = per_image_seconds(model, CAM(), [], size, args)
        activ = per_image_seconds(model, ActivMap(), np.arange(k), size, args, thresholds)
        grad = per_image_seconds(model, GradMap(TEXT), np.arange(args.filters), size, args) / args.filters
        top = 30 * min(args.classes, args.batch)
        print(f"{args.model} at {size} px on {args.device}: CAM {1000 * cam:.1f} ms/image, ActivMap (all {k} "
              f"filters) {1000 * activ:.1f} ms/image, GradMap {1000 * grad:.1f} ms per image and filter: "
              f"{grad * k:.1f} s/image for all {k} filters, {grad * 30:.2f}-{grad * top:.1f} s/image for the "
              f"authors' 30 per class (batches of one class - of {min(args.classes, args.batch)})", flush=True)
        per_size.append(f"{size}px cam_ms={1000 * cam:.1f} activmap_ms={1000 * activ:.1f} "
                        f"gradmap_ms_per_filter={1000 * grad:.1f}")
    print(f"localize {args.model} {args.device}: " + " | ".join(per_size))


if __name__ == "__main__":
    main()
