"""Train a STD and a CSG ResNet-20 on the embedded digits data, compare them like Table 1,
run the four class-specificity studies on both and write one HTML report.

    python jobs/quickstart.py                      # results/, results/figures/*.png, results/report.html
    python jobs/quickstart.py --results /tmp/qs --epochs 30

Needs no download and no cluster (it starts a local Ray); a few minutes on 2 CPU cores.
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

import pandas as pd

from analysis.catalog import STUDIES, check, run_studies, runs_for
from analysis.compare import legend, table1
from analysis.figures import as_matrix, plot_gate, plot_mi_pair
from analysis.gate_stats import balance_line
from analysis.report import write_report
from analysis.studies import resolve_runs
from csg.cli import OneLineParser, run_or_exit, summary
from csg.config import PRESETS, ConfigError, TrainConfig, validate
from csg.distributed.driver import train
from csg.store.results import ResultStore


def get_args_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(description=summary(__doc__))
    parser.add_argument("--results", default="results", help="results root")
    parser.add_argument("--epochs", type=int, default=PRESETS["digits-resnet20"]["epochs"],
                        help="epochs per run")
    parser.add_argument("--workers", type=int, default=1, help="Ray Train workers per run")
    parser.add_argument("--seed", type=int, default=0, help="seed of both runs")
    return parser


def main(argv=None) -> pd.DataFrame:
    parser = get_args_parser()
    args = parser.parse_args(argv)
    configs = {
        method: TrainConfig(**{**PRESETS["digits-resnet20"], "preset": "digits-resnet20", "method": method, "epochs": args.epochs,
                               "workers": args.workers, "seed": args.seed, "results": args.results})
        for method in ("std", "csg")
    }
    try:
        infos = {method: validate(cfg) for method, cfg in configs.items()}
    except ConfigError as exc:
        parser.error(str(exc))

    start = time.time()
    run_ids = {}
    for method, cfg in configs.items():
        run_ids[method] = run_or_exit(parser, train, cfg, infos[method])["run_id"]

    store = ResultStore(args.results)
    runs = pd.concat([store.read("runs", run_ids[m]) for m in ("csg", "std")], ignore_index=True)
    figures = Path(args.results) / "figures"
    plot_gate(as_matrix(store.read("gates", run_ids["csg"]), "value"), figures / "quickstart_gate.png")
    plot_mi_pair(
        {m.upper(): (as_matrix(store.read("mi", run_ids[m]), "mi").T, float(runs.loc[runs["method"] == m, "mis"].iloc[0]))
         for m in ("csg", "std")},
        figures / "quickstart_mi.png",
    )
    table = table1(runs)
    print(f"trained in {time.time() - start:.0f} s; runs {run_ids['csg']} and {run_ids['std']}")
    print(table.to_string(index=False))
    print("\n".join(legend(runs, {run_ids["csg"]: "CSG"})))
    print(f"CSG gate, {balance_line(as_matrix(store.read('gates', run_ids['csg']), 'value'))}")

    print("quickstart: the class-specificity studies on both runs", flush=True)
    studied = resolve_runs(store, [run_ids["csg"], run_ids["std"]])
    defaults = {"masking": {"mask_sets": ["0", "0,5"]}}
    requests = {name: check(name, runs_for(name, studied), store, defaults.get(name, {})) for name in STUDIES}
    run_studies(store, studied, requests, figures_dir=figures, skip_refused=True, list_figures=False)
    report = write_report(store, studied, Path(args.results) / "report.html", args.results)
    print(f"quickstart finished in {time.time() - start:.0f} s")
    print(f"tables: {args.results}/   figures: {figures}/")
    print(f"report: {report}  (open it in a browser)")
    return table


if __name__ == "__main__":
    main()
