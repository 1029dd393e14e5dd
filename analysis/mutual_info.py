"""Filter-class mutual information at scale: the exact fast estimator of `csg.method.mutual_info`,
fanned out over Ray, and the features it reads, extracted from a checkpoint as Ray work.

    M = mi_matrix(features, labels)                  # one process
    M = mi_matrix_ray(features, labels)              # blocks of filters (and classes) as Ray tasks
    feats = extract_features("results/checkpoints/<run>/checkpoint_...", shards=4)
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass

import numpy as np

from analysis.fan_out import fan_out
from analysis.options import Results, option
from analysis.studies import resolve_runs
from csg.method.mutual_info import METHODS, jittered, mi_block, mi_matrix, mis
from csg.store.checkpoint import checkpoint_features, checkpoint_split
from csg.store.run_record import RUNS_SCHEMA, write_mi


@dataclass(frozen=True)
class Options(Results):
    results: str = option("results", "results root holding the run")
    run: str = option(None, "run id", required=True)
    method: str = option("fast", "fast (exact, Ray tasks) or sklearn", choices=METHODS)
    shards: int = option(1, "Ray tasks extracting features")

__all__ = ["METHODS", "mi_matrix", "mis", "mi_matrix_ray", "extract_features"]


def mi_matrix_ray(features, labels, n_classes=None, n_neighbors=3, random_state=0,
                  classes_per_task=None, filters_per_task=None, progress=True) -> np.ndarray:
    """The same (K, C) matrix as `mi_matrix`, computed by Ray tasks over blocks of filters and
    classes. The jittered features go to the object store once; every task reads them there.

    By default the blocks split filters only, about two per worker: one pass over a filter's
    samples serves every class, so a class block would repeat that pass. Classes are split
    only when there are fewer filters than workers."""
    import ray  # here, as in analysis.fan_out: a study run in process never loads it

    labels = np.asarray(labels)
    n_classes = int(labels.max()) + 1 if n_classes is None else n_classes
    noisy = jittered(features, random_state)  # once: the noise every reference call would draw
    k = noisy.shape[1]
    workers = max(1, int(ray.available_resources().get("CPU", 1)))
    filters_per_task = filters_per_task or max(1, math.ceil(k / (2 * workers)))
    classes_per_task = classes_per_task or math.ceil(n_classes / max(1, math.ceil(2 * workers / k)))
    noisy_ref, labels_ref = ray.put(noisy), ray.put(labels)
    blocks = [(f0, min(f0 + filters_per_task, k), c0, min(c0 + classes_per_task, n_classes))
              for f0 in range(0, k, filters_per_task) for c0 in range(0, n_classes, classes_per_task)]
    found = fan_out("MI blocks", {block: (_mi_task, (noisy_ref, labels_ref, block, n_neighbors)) for block in blocks},
                    progress)
    matrix = np.empty((k, n_classes))
    for (f0, f1, c0, c1), values in found.items():
        matrix[f0:f1, c0:c1] = values
    return matrix


def _mi_task(noisy, labels, block, n_neighbors):
    f0, f1, c0, c1 = block
    return mi_block(noisy[:, f0:f1], labels, range(c0, c1), n_neighbors)


def extract_features(checkpoint, split="test", all_layers=False, shards=1, batch_size=256) -> dict:
    """Run a checkpoint's model over its data set; with `shards` > 1, as that many Ray tasks
    over disjoint contiguous slices, concatenated in order."""
    if shards <= 1:
        return checkpoint_features(str(checkpoint), split, all_layers, None, batch_size)
    import ray

    size = len(checkpoint_split(str(checkpoint), split))
    bounds = np.linspace(0, size, shards + 1).astype(int)
    parts = ray.get([
        ray.remote(num_cpus=1)(checkpoint_features).remote(str(checkpoint), split, all_layers, (a, b), batch_size)
        for a, b in zip(bounds[:-1], bounds[1:])
    ])
    return {name: np.concatenate([p[name] for p in parts]) for name in parts[0]}


def main(store, options: Options, start=None, echo=print) -> float:
    """Recompute a run's `mi` table and MIS from its checkpoint (`start()` starts Ray first)."""
    checkpoint = resolve_runs(store, [options.run], option="--run")[0].checkpoint
    row = store.read("runs", options.run)
    if start is not None:
        start()
    begin = time.time()
    extracted = extract_features(checkpoint, shards=options.shards)
    seed, classes = int(row.loc[0, "seed"]), int(row.loc[0, "num_classes"])
    neighbors = int(row.loc[0, "mi_neighbors"])
    if options.method == "fast":
        matrix = mi_matrix_ray(extracted["features"], extracted["labels"], classes, neighbors, seed)
    else:
        matrix = mi_matrix(extracted["features"], extracted["labels"], classes, neighbors, seed, "sklearn")
    write_mi(store, options.run, matrix)
    row["mis"] = mis(matrix)
    store.write("runs", options.run, row, RUNS_SCHEMA)
    echo(f"run {options.run}: MIS {row.loc[0, 'mis']:.4f} ({options.method}, K={matrix.shape[0]}, "
         f"C={matrix.shape[1]}, {time.time() - begin:.1f} s); mi table rewritten")
    return float(row.loc[0, "mis"])
