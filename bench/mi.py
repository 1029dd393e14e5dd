"""Benchmark the fast MI matrix against scikit-learn's reference on the same data, one core.

    python bench/mi.py            # prints, last, the line quoted in issue notes
    python bench/mi.py --quick    # smaller sizes, for a smoke run

Features are ReLU-like (many exact zeros) with class-dependent means, like GAP activations.
"""
import argparse
import os
import time

import numpy as np
from threadpoolctl import threadpool_limits

from csg.mutual_info import jittered, mi_block, mi_matrix


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


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="N=2000 and a small ImageNet-scale sample")
    args = parser.parse_args()
    n, k, c = (2000, 16, 10) if args.quick else (10_000, 64, 10)
    big_n, big_k, big_c = (5_000, 4, 20) if args.quick else (50_000, 512, 100)

    features, labels = activations(n, k, c)
    mi_matrix(features[:200, :2], labels[:200], c)  # compile the kernel outside the timings
    fast, fast_s = timed(mi_matrix, features, labels, c, method="fast")
    reference, sklearn_s = timed(mi_matrix, features, labels, c, method="sklearn")
    diff = float(np.abs(fast - reference).max())

    # ImageNet scale: time a sample of filters at C=100, project to all K filters and C=1000.
    big, big_labels = activations(big_n, big_k, 1000, seed=1)
    sample_k = max(1, big_k // 64)
    noisy, prep_s = timed(jittered, big)
    _, block_s = timed(mi_block, noisy[:, :sample_k], big_labels, range(big_c))
    per_cell = block_s / (sample_k * big_c)
    print(f"imagenet-scale: N={big_n} timed K={sample_k} of {big_k}, C={big_c}: {block_s:.2f} s "
          f"({per_cell * 1e3:.2f} ms per filter-class cell); preprocessing all {big_k} filters {prep_s:.2f} s")
    print(f"projected single core, N={big_n} K={big_k} C=1000: {per_cell * big_k * 1000 / 60:.1f} min "
          f"(16 cores: {per_cell * big_k * 1000 / 16 / 60:.1f} min)")
    print(f"mi: N={n} K={k} C={c} sklearn_s={sklearn_s:.2f} fast_s={fast_s:.3f} "
          f"speedup={sklearn_s / fast_s:.0f} max_abs_diff={diff:.2e}")


if __name__ == "__main__":
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    with threadpool_limits(1):
        main()
