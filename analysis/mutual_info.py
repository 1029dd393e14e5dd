"""Filter-class mutual information at scale: the exact fast estimator of `csg.method.mutual_info`,
fanned out over Ray, and the features it reads, extracted from a checkpoint as Ray work.

    M = mi_matrix(features, labels)                  # one process
    M = mi_matrix_ray(features, labels)              # blocks of filters (and classes) as Ray tasks
    feats = extract_features("results/checkpoints/<run>/checkpoint_...", shards=4)
"""
from __future__ import annotations

import math
import sys
import time

import numpy as np
import ray

from csg.method.mutual_info import METHODS, jittered, mi_block, mi_matrix, mis
from csg.store.checkpoint import checkpoint_features, checkpoint_split

__all__ = ["METHODS", "mi_matrix", "mis", "mi_matrix_ray", "extract_features"]


def mi_matrix_ray(features, labels, n_classes=None, n_neighbors=3, random_state=0,
                  classes_per_task=None, filters_per_task=None, progress=True) -> np.ndarray:
    """The same (K, C) matrix as `mi_matrix`, computed by Ray tasks over blocks of filters and
    classes. The jittered features go to the object store once; every task reads them there.

    By default the blocks split filters only, about two per worker: one pass over a filter's
    samples serves every class, so a class block would repeat that pass. Classes are split
    only when there are fewer filters than workers."""
    labels = np.asarray(labels)
    n_classes = int(labels.max()) + 1 if n_classes is None else n_classes
    noisy = jittered(features, random_state)  # once: the noise every reference call would draw
    k = noisy.shape[1]
    workers = max(1, int(ray.available_resources().get("CPU", 1)))
    filters_per_task = filters_per_task or max(1, math.ceil(k / (2 * workers)))
    classes_per_task = classes_per_task or math.ceil(n_classes / max(1, math.ceil(2 * workers / k)))
    noisy_ref, labels_ref = ray.put(noisy), ray.put(labels)
    tasks = {}
    for f0 in range(0, k, filters_per_task):
        for c0 in range(0, n_classes, classes_per_task):
            block = (f0, min(f0 + filters_per_task, k), c0, min(c0 + classes_per_task, n_classes))
            tasks[_mi_task.remote(noisy_ref, labels_ref, block, n_neighbors)] = block
    matrix = np.empty((k, n_classes))
    pending, done, start = list(tasks), 0, time.time()
    while pending:
        ready, pending = ray.wait(pending, num_returns=1)
        f0, f1, c0, c1 = tasks[ready[0]]
        matrix[f0:f1, c0:c1] = ray.get(ready[0])
        done += 1
        if progress:
            sys.stderr.write(f"\rMI blocks {done}/{len(tasks)} ({time.time() - start:.0f} s)")
    if progress:
        sys.stderr.write("\n")
    return matrix


@ray.remote(num_cpus=1)
def _mi_task(noisy, labels, block, n_neighbors):
    f0, f1, c0, c1 = block
    return mi_block(noisy[:, f0:f1], labels, range(c0, c1), n_neighbors)


def extract_features(checkpoint, split="test", all_layers=False, shards=1, batch_size=256) -> dict:
    """Run a checkpoint's model over its data set; with `shards` > 1, as that many Ray tasks
    over disjoint contiguous slices, concatenated in order."""
    if shards <= 1:
        return checkpoint_features(str(checkpoint), split, all_layers, None, batch_size)
    size = len(checkpoint_split(str(checkpoint), split))
    bounds = np.linspace(0, size, shards + 1).astype(int)
    parts = ray.get([
        ray.remote(num_cpus=1)(checkpoint_features).remote(str(checkpoint), split, all_layers, (a, b), batch_size)
        for a, b in zip(bounds[:-1], bounds[1:])
    ])
    return {name: np.concatenate([p[name] for p in parts]) for name in parts[0]}
