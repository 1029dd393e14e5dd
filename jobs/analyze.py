"""Analyses of finished runs, written to the run's result tables.

    python jobs/analyze.py mi --results results --run RUN_ID                  # fast, exact, Ray-parallel
    python jobs/analyze.py mi --results results --run RUN_ID --method sklearn # the reference loop
    python jobs/analyze.py adversarial --results results --runs CSG_RUN STD_RUN   # Table 3
    python jobs/analyze.py blackbox --results results --runs CSG_RUN STD_RUN      # Table 4
    python jobs/analyze.py masking --results results --runs CSG_RUN STD_RUN --mask-sets 0 0,5  # Fig. 5
    python jobs/analyze.py similarity --results results --runs CSG_RUN            # Fig. 6
    python jobs/analyze.py correlation --results results --runs CSG_RUN STD_RUN   # Figs. 7, 8
    python jobs/analyze.py kmeans --results results --runs CSG_RUN STD_RUN        # Fig. 11
    python jobs/analyze.py studies --results results --runs CSG_RUN STD_RUN       # those four at once
    python jobs/analyze.py localize --results results --runs CSG_RUN STD_RUN      # Table 2, Fig. 9
    python jobs/analyze.py report --results results --runs CSG_RUN STD_RUN        # one HTML page
"""
from __future__ import annotations

import argparse
import time
from dataclasses import replace
from pathlib import Path

import pandas as pd

from analysis.adversarial import ATTACK_DEFAULTS, WHITE_BOX
from analysis.blackbox import BLACK_BOX, LOCAL_SEARCH_DEFAULTS
from analysis.catalog import STUDIES, check, run_studies, runs_for
from analysis.kmeans import DEFAULT_N_INIT
from analysis.masking import DEFAULT_FRACTION, DEFAULT_TAU, RULES
from analysis.saliency import (
    AUTHORS,
    CHANNEL_REDUCTIONS,
    METHODS,
    SCORINGS,
    TEXT,
    GradMapSettings,
)
from analysis.studies import Run, StudyError, resolve_runs
from csg.cli import OneLineParser
from csg.distributed.cluster import init_ray
from csg.method.mutual_info import METHODS as MI_METHODS
from csg.store.results import ResultStore
from csg.store.run_record import RUNS_SCHEMA, write_mi


def get_args_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    mi = commands.add_parser("mi", help="(re)compute the mi table and MIS of a run from its checkpoint",
                             formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    mi.add_argument("--results", default="results", help="results root holding the run")
    mi.add_argument("--run", required=True, help="run id")
    mi.add_argument("--method", choices=MI_METHODS, default="fast", help="fast (exact, Ray tasks) or sklearn")
    mi.add_argument("--shards", type=int, default=1, help="Ray tasks extracting features")
    adv = _comparison(commands, "adversarial", "adversarial-sample detection from per-layer features (Table 3)",
                      WHITE_BOX)
    adv.add_argument("--eps", type=float, default=ATTACK_DEFAULTS["fgsm"]["eps"], help="FGSM and PGD L-inf budget")
    adv.add_argument("--pgd-steps", type=int, default=ATTACK_DEFAULTS["pgd"]["steps"], help="PGD iterations")
    adv.add_argument("--pgd-alpha", type=float, default=ATTACK_DEFAULTS["pgd"]["alpha"], help="PGD step size")
    adv.add_argument("--cw-steps", type=int, default=ATTACK_DEFAULTS["cw"]["steps"], help="CW iterations")
    adv.add_argument("--cw-c", type=float, default=ATTACK_DEFAULTS["cw"]["c"], help="CW loss weight c")
    adv.add_argument("--cw-lr", type=float, default=ATTACK_DEFAULTS["cw"]["lr"], help="CW learning rate")
    adv.add_argument("--train-per-class", type=int, nargs="+", default=[500, 1000, 2000],
                     help="detector training sizes, images per class (each image: clean and adversarial)")
    adv.add_argument("--test-per-class", type=int, default=100, help="detector test images per class")
    adv.add_argument("--repeats", type=int, default=5, help="detectors per size, on different draws")
    adv.add_argument("--split", choices=("train", "test"), default="train", help="split the images come from")
    adv.add_argument("--seed", type=int, default=0, help="seed of the image draws, targets and forests")
    adv.add_argument("--batch-size", type=int, default=256, help="images per attack batch")
    box = _comparison(commands, "blackbox", "one-pixel and local-search black-box attacks (Table 4)", BLACK_BOX)
    box.add_argument("--images", type=int, default=100, help="test images attacked (a fixed sample, every run)")
    box.add_argument("--pixels", type=int, default=1, help="one-pixel: pixels changed")
    box.add_argument("--de-steps", type=int, default=10, help="one-pixel: differential-evolution iterations")
    box.add_argument("--popsize", type=int, default=10, help="one-pixel: population size multiplier")
    for name, default in LOCAL_SEARCH_DEFAULTS.items():
        box.add_argument(f"--ls-{name.replace('_', '-')}", type=type(default), default=default,
                         help=f"local search: {LOCAL_SEARCH_HELP[name]}")
    box.add_argument("--seed", type=int, default=0, help="seed of the image sample and the attacks")
    for name, study in STUDIES.items():
        STUDY_FLAGS[name](_study(commands, name, study.title))
    every = _study(commands, "studies", "all four studies at once, each run's features read once (similarity: "
                                        "CSG runs only)")
    for add_flags in (masking_flags, similarity_flags, correlation_flags):
        add_flags(every)
    kmeans_flags(every, seed=False)  # masking's --seed serves both
    localize_flags(_study(commands, "localize", "localization by GradMap, ActivMap and CAM against object masks "
                                                "(Sec. 5.1, Table 2, Fig. 9)"))
    report = commands.add_parser("report", help="one self-contained HTML page of every result of some runs",
                                 formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    report.add_argument("--results", default="results", help="results root holding the runs")
    report.add_argument("--runs", nargs="+", required=True, help="run ids, typically a CSG and a STD run")
    report.add_argument("--out", help="HTML file (default: <results>/report_<runs>.html)")
    return parser


def _comparison(commands, name: str, help_text: str, attacks) -> argparse.ArgumentParser:
    """A subcommand that attacks several runs and compares them."""
    parser = commands.add_parser(name, help=help_text, formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--results", default="results", help="results root holding the runs")
    parser.add_argument("--runs", nargs="+", required=True, help="run ids, typically a CSG and a STD run")
    parser.add_argument("--attacks", nargs="+", choices=attacks, default=list(attacks), help="attacks to run")
    return parser


LOCAL_SEARCH_HELP = {
    "rounds": "rounds at most", "per_round": "pixels changed per round", "radius": "half-width of the "
    "neighbourhood searched next", "p": "probe value p*sign(pixel), in [-1, 1] units", "r": "factor applied to a chosen pixel (wrapped into range)",
    "initial_fraction": "share of pixels probed in the first round", "max_pixels": "pixels changed at most",
}


def _study(commands, name: str, help_text: str) -> argparse.ArgumentParser:
    """A class-specificity study: the runs, their checkpoint and the split it reads."""
    parser = commands.add_parser(name, help=help_text, formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--results", default="results", help="results root holding the runs")
    parser.add_argument("--runs", nargs="+", required=True, help="run ids (CSG and STD runs of one data set)")
    parser.add_argument("--checkpoint", choices=("latest", "best"), default="latest", help="checkpoint of each run")
    parser.add_argument("--split", choices=("train", "test"), default="test", help="split the features come from")
    return parser


def masking_flags(parser):
    parser.add_argument("--mask-sets", nargs="+", default=["0", "0,5"], help="class sets masked together, e.g. 0 0,5")
    parser.add_argument("--rule", choices=RULES, help="filters related to a class (default: gate for CSG, "
                                                      "activation for STD runs)")
    parser.add_argument("--tau", type=float, default=DEFAULT_TAU, help="gate rule: G[c, k] > tau")
    parser.add_argument("--fraction", type=float, default=DEFAULT_FRACTION, help="activation rule: share of filters")
    parser.add_argument("--seed", type=int, default=0, help="seed of the random draws")


def similarity_flags(parser):
    parser.add_argument("--order", type=int, nargs="+", help="class order of the similarity figure (every class once)")


def correlation_flags(parser):
    parser.add_argument("--m1", type=int, help="size of the groups A_c (default: gate_stats m1, else round(K/C))")


def kmeans_flags(parser, seed=True):
    parser.add_argument("--n-init", type=int, default=DEFAULT_N_INIT, help="k-means restarts")
    if seed:
        parser.add_argument("--seed", type=int, default=0, help="seed of the random draws")


def localize_flags(parser):
    parser.add_argument("--methods", nargs="+", choices=METHODS, default=list(METHODS), help="techniques scored")
    parser.add_argument("--sigma", type=float, help=f"GradMap blur sigma, pixels at 128 px, scaled to the image size "
                                                     f"(text: {TEXT.sigma:g})")
    parser.add_argument("--channels", choices=CHANNEL_REDUCTIONS, help=f"GradMap colour-channel reduction "
                                                                       f"(default {TEXT.channels})")
    parser.add_argument("--scoring", choices=SCORINGS, help=f"GradMap: every filter with its focus class, or each "
                                                            f"image with its class's top filters (default {TEXT.scoring})")
    parser.add_argument("--top-filters", type=int, help=f"with --scoring top-filters: filters per class "
                                                        f"(default {TEXT.top_filters})")
    parser.add_argument("--authors-settings", action="store_true",
                        help=f"GradMap as the authors' code: sigma {AUTHORS.sigma:g} (kernel +-1 sigma), "
                             f"{AUTHORS.channels} channels, {AUTHORS.scoring} {AUTHORS.top_filters}")
    parser.add_argument("--shards", type=int, default=2, help="Ray tasks per (run, method), each a slice of images")
    parser.add_argument("--filter-block", type=int, default=512, help="GradMap filters per Ray task")
    parser.add_argument("--batch-size", type=int, default=64, help="images per batch in a task")
    parser.add_argument("--per-class", type=int, help="score at most this many images of each class (the first "
                                                      "ones; default: all)")
    parser.add_argument("--examples", type=int, default=3, help="images per class in the figures")


STUDY_FLAGS = {"masking": masking_flags, "similarity": similarity_flags, "correlation": correlation_flags,
               "kmeans": kmeans_flags}
STUDY_OPTIONS = {"masking": ("mask_sets", "rule", "tau", "fraction", "seed"), "similarity": ("order",),
                 "correlation": ("m1",), "kmeans": ("n_init", "seed")}


def main(argv=None):
    parser = get_args_parser()
    args = parser.parse_args(argv)
    if args.command in (*STUDIES, "studies"):
        return study_main(parser, args)
    return {"mi": mi_main, "adversarial": adversarial_main, "blackbox": blackbox_main,
            "localize": localize_main, "report": report_main}[args.command](parser, args)


def resolved(parser, store: ResultStore, run_ids, which="latest", option="--runs") -> list[Run]:
    try:
        return resolve_runs(store, run_ids, which, option)
    except StudyError as exc:
        parser.error(str(exc))


def study_main(parser, args) -> dict:
    """Validate, then run one study or all of them (a Ray task per run reads its arrays once,
    then each study's tasks run); bad input exits 2 before anything is written."""
    store = ResultStore(args.results)
    runs = resolved(parser, store, args.runs, args.checkpoint)
    names = list(STUDIES) if args.command == "studies" else [args.command]
    try:
        requests = {name: check(name, runs_for(name, runs) if len(names) > 1 else runs, store,
                                {option: getattr(args, option) for option in STUDY_OPTIONS[name]})
                    for name in names}
        init_ray()
        return run_studies(store, runs, requests, args.split, Path(args.results) / "figures",
                           {"similarity": {"order": getattr(args, "order", None)}})
    except StudyError as exc:
        parser.error(str(exc))


def gradmap_settings(parser, args) -> GradMapSettings:
    given = {name: getattr(args, name) for name in ("sigma", "channels", "scoring", "top_filters")
             if getattr(args, name) is not None}
    if args.authors_settings and given:
        parser.error(f"--authors-settings sets GradMap's options; drop --{next(iter(given)).replace('_', '-')}")
    settings = AUTHORS if args.authors_settings else replace(TEXT, **given)
    if settings.sigma < 0 or settings.top_filters < 1:
        parser.error("--sigma must be >= 0 and --top-filters >= 1")
    return settings


def localize_main(parser, args):
    from analysis.localization import localize
    from analysis.localization_metrics import table2
    from analysis.localization_plots import draw
    from analysis.studies import write_tables

    store = ResultStore(args.results)
    runs = resolved(parser, store, args.runs, args.checkpoint)
    settings = gradmap_settings(parser, args)
    per_class = 1 if args.per_class is None else args.per_class
    if min(args.shards, args.filter_block, args.batch_size, args.examples, per_class) < 1:
        parser.error("--shards, --filter-block, --batch-size, --per-class and --examples must be >= 1")
    init_ray()
    try:
        found = localize(runs, args.methods, args.split, settings, args.shards, args.filter_block, args.batch_size,
                         args.per_class)
    except StudyError as exc:
        parser.error(str(exc))
    write_tables(store, found.tables)
    labels = {run.run_id: run.label for run in runs}
    print(f"\nlocalization of {len(found.scored)} images of the {args.split} split, as Table 2 (GradMap: {settings})")
    print(table2(found.tables["localization"], labels).to_string(float_format="{:.4f}".format))
    for (run_id, method), seconds in found.seconds.items():
        print(f"{labels[run_id]} {method}: {seconds:.1f} s in tasks, {1000 * seconds / len(found.scored):.2f} ms "
              f"per image")
    draw(runs, found, args.split, Path(args.results) / "figures", args.examples)
    return found


def report_main(parser, args) -> Path:
    from analysis.report import write_report

    store = ResultStore(args.results)
    runs = resolved(parser, store, args.runs)
    out = Path(args.out or Path(args.results) / f"report_{'_'.join(args.runs)}.html")
    write_report(store, runs, out, args.results)
    print(f"report: {out}")
    return out


def runs_to_compare(parser, store: ResultStore, run_ids) -> dict[str, tuple[str, pd.Series]]:
    """Run id -> (checkpoint, `runs` row) for runs attacked on one set of images: same data."""
    return {run.run_id: (run.checkpoint, store.read("runs", run.run_id).iloc[0])
            for run in resolved(parser, store, run_ids)}


def column_names(found: dict) -> dict[str, str]:
    return {run: f"{row['method'].upper()} {run}" for run, (_, row) in found.items()}


def adversarial_main(parser, args) -> pd.DataFrame:
    from analysis.adversarial import run_detection, table3

    store = ResultStore(args.results)
    found = runs_to_compare(parser, store, args.runs)
    if min(args.train_per_class) < 1 or args.test_per_class < 1 or args.repeats < 1:
        parser.error("--train-per-class, --test-per-class and --repeats must be >= 1")
    options = {"fgsm": {"eps": args.eps}, "pgd": {"eps": args.eps, "alpha": args.pgd_alpha, "steps": args.pgd_steps},
               "cw": {"c": args.cw_c, "steps": args.cw_steps, "lr": args.cw_lr}}
    init_ray()
    try:
        frame = run_detection({run: checkpoint for run, (checkpoint, _) in found.items()}, args.attacks, options,
                              args.train_per_class, args.test_per_class, args.repeats, args.split, args.seed,
                              args.batch_size, progress=lambda line: print(line, flush=True))
    except ValueError as exc:  # too few images for the sizes asked
        parser.error(f"--train-per-class/--test-per-class: {exc}")
    for run, rows in frame.groupby("run_id", sort=False):
        store.write("adversarial", run, rows)
    print("\nmean detector error rate (%), as Table 3; attack success rate in the adversarial table")
    print(table3(frame, column_names(found)).to_string(float_format="{:.2f}".format))
    return frame


def blackbox_main(parser, args) -> pd.DataFrame:
    import numpy as np

    from analysis.blackbox import attack_sample, blackbox_row
    from csg.store.checkpoint import checkpoint_split

    store = ResultStore(args.results)
    found = runs_to_compare(parser, store, args.runs)
    size = len(checkpoint_split(next(iter(found.values()))[0], "test"))
    if not 1 <= args.images <= size:
        parser.error(f"--images: must be between 1 and the test set's {size} (got {args.images})")
    indices = np.sort(np.random.default_rng(args.seed).choice(size, args.images, replace=False))
    options = {"onepixel": {"pixels": args.pixels, "steps": args.de_steps, "popsize": args.popsize},
               "localsearch": {name: getattr(args, f"ls_{name}") for name in LOCAL_SEARCH_DEFAULTS}}
    init_ray()
    import ray

    task = ray.remote(num_cpus=1)(attack_sample)
    refs = {task.remote(checkpoint, name, indices, options[name], args.seed): (run, name)
            for run, (checkpoint, _) in found.items() for name in args.attacks}
    rows, pending = [], list(refs)
    while pending:
        ready, pending = ray.wait(pending, num_returns=1)
        run, name = refs[ready[0]]
        rows.append({"run_id": run, "attack": name, **blackbox_row(ray.get(ready[0]))})
        print(f"{run} {name}: success {rows[-1]['success_rate']:.3f} on {rows[-1]['n_images']} images", flush=True)
    frame = pd.DataFrame(rows)
    for run, run_rows in frame.groupby("run_id", sort=False):
        store.write("blackbox", run, run_rows)
    table = frame.pivot_table(index="attack", columns="run_id", values="success_rate", observed=True) * 100
    print("\nattack success rate (%) on correctly classified images, as Table 4")
    print(table.rename(columns=column_names(found)).to_string(float_format="{:.2f}".format))
    return frame


def mi_main(parser, args) -> float:
    store = ResultStore(args.results)
    checkpoint = resolved(parser, store, [args.run], option="--run")[0].checkpoint
    row = store.read("runs", args.run)
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
