"""What one class-specificity study costs once a run's features are extracted, at CIFAR-10
scale (K = 64, 10,000 test images, C = 10) and ImageNet scale (K = 512, 50,000 images,
C = 1000), on synthetic arrays of those shapes, one process.

    python bench/studies.py            # both scales; the last line is the summary
    python bench/studies.py --quick    # CIFAR-10 scale only

Feature extraction (one forward pass over the split, a Ray task per run) is not included: it
is the same pass training ends with. k-means is timed with --kmeans-init restarts (the study's
default is 10; its time grows linearly with them).
"""
from __future__ import annotations

import argparse
import time
import tracemalloc

import numpy as np

from analysis import correlation, kmeans, masking, similarity
from analysis.studies import RunArrays
from csg.cli import summary

SCALES = {"cifar10": dict(n=10_000, k=64, c=10, fan_in=64 * 9),
          "imagenet": dict(n=50_000, k=512, c=1000, fan_in=512 * 9)}


def synthetic(n: int, k: int, c: int, fan_in: int, seed: int = 0) -> RunArrays:
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, c, n)
    gate = np.zeros((c, k))
    gate[rng.integers(0, c, k), np.arange(k)] = 1.0
    features = np.maximum(rng.normal(0, 1, (n, k)) + 2 * gate[labels], 0)
    fc = rng.normal(0, 1, (c, k))
    return RunArrays(features=features, labels=labels, predictions=(features @ fc.T).argmax(1), fc_weight=fc,
                     fc_bias=np.zeros(c), filters=rng.normal(0, 1, (k, fan_in)), gate=gate)


def measured(function, *args):
    tracemalloc.start()
    start = time.perf_counter()
    function(*args)
    seconds = time.perf_counter() - start
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    return seconds, peak / 2 ** 20


def main(argv=None):
    parser = argparse.ArgumentParser(description=summary(__doc__))
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--kmeans-init", type=int, default=1)
    args = parser.parse_args(argv)
    per_scale = []
    for scale, shape in SCALES.items():
        if args.quick and scale != "cifar10":
            continue
        arrays = synthetic(**shape)
        costs = {
            "masking (one mask set)": measured(masking.mask_rows, arrays, "r", (0,), masking.GateRule()),
            "similarity": measured(similarity.similarity_rows, arrays, "r"),
            "correlation": measured(correlation.correlation_tables, arrays, "r",
                                    max(1, round(shape["k"] / shape["c"]))),
            f"kmeans (n_init={args.kmeans_init})": measured(kmeans.kmeans_tables, arrays, "r", args.kmeans_init, 0),
        }
        print(f"{scale}: N={shape['n']} K={shape['k']} C={shape['c']}")
        for name, (seconds, mib) in costs.items():
            print(f"  {name:<24} {seconds:8.2f} s  peak {mib:8.1f} MiB")
        per_scale.append(f"{scale} " + " ".join(f"{name.split()[0]}={seconds:.2f}s"
                                                for name, (seconds, _) in costs.items()))
    print("studies: " + "; ".join(per_scale))


if __name__ == "__main__":
    main()
