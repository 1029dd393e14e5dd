"""Analyses of finished runs, written to the run's result tables.

    python jobs/analyze.py mi --results results --run RUN_ID                  # fast, exact, Ray-parallel
    python jobs/analyze.py mi --results results --run RUN_ID --method sklearn # the reference loop
"""
from __future__ import annotations

import argparse
import time

from csg.cli import OneLineParser
from csg.cluster import init_ray
from csg.mutual_info import METHODS
from csg.results import ResultStore
from csg.run_record import RUNS_SCHEMA, write_mi


def get_args_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    mi = commands.add_parser("mi", help="(re)compute the mi table and MIS of a run from its checkpoint",
                             formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    mi.add_argument("--results", default="results", help="results root holding the run")
    mi.add_argument("--run", required=True, help="run id")
    mi.add_argument("--method", choices=METHODS, default="fast", help="fast (exact, Ray tasks) or sklearn")
    mi.add_argument("--shards", type=int, default=1, help="Ray tasks extracting features")
    return parser


def main(argv=None) -> float:
    parser = get_args_parser()
    args = parser.parse_args(argv)
    store = ResultStore(args.results)
    if not store.exists("runs", args.run):
        parser.error(f"--run: no run {args.run!r} under {args.results}/runs")
    row = store.read("runs", args.run)
    checkpoint = row.loc[0, "checkpoint"]
    if not isinstance(checkpoint, str):
        parser.error(f"--run: run {args.run} has no checkpoint (status {row.loc[0, 'status']})")
    init_ray()
    from analysis.mutual_info import extract_features, mi_matrix, mi_matrix_ray, mis

    start = time.time()
    extracted = extract_features(checkpoint, shards=args.shards)
    seed, classes = int(row.loc[0, "seed"]), int(row.loc[0, "num_classes"])
    neighbors = int(row.loc[0, "mi_neighbors"])
    if args.method == "fast":
        matrix = mi_matrix_ray(extracted["features"], extracted["labels"], classes, neighbors, seed)
    else:
        matrix = mi_matrix(extracted["features"], extracted["labels"], classes, neighbors, seed, "sklearn")
    write_mi(store, args.run, matrix)
    row["mis"] = mis(matrix)
    store.write("runs", args.run, row, RUNS_SCHEMA)
    print(f"run {args.run}: MIS {row.loc[0, 'mis']:.4f} ({args.method}, K={matrix.shape[0]}, "
          f"C={matrix.shape[1]}, {time.time() - start:.1f} s); mi table rewritten")
    return float(row.loc[0, "mis"])


if __name__ == "__main__":
    main()
