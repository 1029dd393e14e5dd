"""Benchmark the fast MI matrix against scikit-learn's reference on the same data, one core.

The fast method is timed as the best of three runs (it takes a fraction of a second, so one
run is at the mercy of the machine); the reference, at about 15 s, once.

    python bench/mi.py            # prints, last, the line quoted in issue notes
    python bench/mi.py --quick    # smaller sizes, for a smoke run

Features are ReLU-like (many exact zeros) with class-dependent means, like GAP activations.
"""
import argparse
import os
import time

import numpy as np
from threadpoolctl import threadpool_limits

from csg.cli import summary
from csg.method.mutual_info import mi_matrix


def activations(n, k, c, seed=0):
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, c, n)
    centers = rng.normal(0, 1, (c, k))
    features = np.maximum(rng.normal(0, 1, (n, k)) + centers[labels], 0).astype(np.float32)
    return features, labels


def timed(fn, *args, **kwargs):
    start = time.perf_counter()
    out = fn(*args, **kwargs)
    return out, time.perf_counter() - start


def main(argv=None):
    parser = argparse.ArgumentParser(description=summary(__doc__))
    parser.add_argument("--quick", action="store_true", help="N=2000 and a small ImageNet-scale sample")
    args = parser.parse_args(argv)
    n, k, c = (2000, 16, 10) if args.quick else (10_000, 64, 10)
    big_n, big_k = (5_000, 32) if args.quick else (50_000, 512)

    features, labels = activations(n, k, c)
    mi_matrix(features[:200, :2], labels[:200], c)  # compile the kernel outside the timings
    runs = [timed(mi_matrix, features, labels, c, method="fast") for _ in range(3)]
    fast, fast_s = min(runs, key=lambda run: run[1])
    reference, sklearn_s = timed(mi_matrix, features, labels, c, method="sklearn")
    diff = float(np.abs(fast - reference).max())

    # ImageNet scale: every filter at C=100, then a sample of filters at C=1000, projected to all.
    big, big_labels = activations(big_n, big_k, 100, seed=1)
    _, c100_s = timed(mi_matrix, big, big_labels, 100)
    sample_k = max(1, big_k // 32)
    sample, sample_labels = activations(big_n, sample_k, 1000, seed=2)
    _, sample_s = timed(mi_matrix, sample, sample_labels, 1000)
    projected_s = sample_s * big_k / sample_k
    print(f"imagenet-scale: N={big_n} K={big_k} C=100: {c100_s:.1f} s; "
          f"K={sample_k} C=1000: {sample_s:.2f} s ({sample_s / sample_k * 1e3:.0f} ms per filter)")
    print(f"projected single core, N={big_n} K={big_k} C=1000: {projected_s / 60:.1f} min "
          f"(16 cores: {projected_s / 16 / 60:.2f} min)")
    print(f"mi: N={n} K={k} C={c} sklearn_s={sklearn_s:.2f} fast_s={fast_s:.3f} "
          f"speedup={sklearn_s / fast_s:.0f} max_abs_diff={diff:.2e}")


if __name__ == "__main__":
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    with threadpool_limits(1):
        main()
