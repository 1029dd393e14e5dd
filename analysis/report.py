"""One self-contained HTML page with every result of a set of runs (a CSG and an STD run,
typically): Table 1 and the configurations, training curves, Fig. 4, each class-specificity
study, localization, and the adversarial, black-box, gate-statistics and sweep results that concern them.

Built from the results root alone: it reads tables and draws them, recomputes nothing, so it
can be rebuilt anywhere the root is readable. Figures are inlined PNGs; the page loads nothing
from anywhere, so it opens from disk in any browser. A study not yet run is one line: the
command that runs it.
"""
from __future__ import annotations

import base64
import html
import io
import time
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import numpy as np
import pandas as pd

from analysis import figures, gate_stats, published
from analysis.catalog import STUDIES
from analysis.compare import legend, table1
from analysis.options import Compared, option
from analysis.studies import Run, read_tables, resolve_runs
from csg.store.results import ResultStore

STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1100px; color: #222; }
h1 { font-size: 1.5em; } h2 { border-bottom: 1px solid #ccc; padding-bottom: .2em; margin-top: 2em; }
table { border-collapse: collapse; margin: .6em 0; font-size: .85em; }
th, td { border: 1px solid #ccc; padding: .2em .5em; text-align: right; }
th { background: #f3f3f3; } img { max-width: 100%; display: block; margin: .6em 0; }
pre, code { background: #f6f6f6; } pre { padding: .6em; overflow-x: auto; font-size: .85em; }
.missing { color: #7a4b00; } nav a { margin-right: .8em; }
"""


def image(plot, *args, alt: str = "figure") -> str:
    """A figure drawn by `plot(*args, out)` as an inlined PNG."""
    buffer = io.BytesIO()
    plot(*args, buffer)
    data = base64.b64encode(buffer.getvalue()).decode("ascii")
    return f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{data}">'


def table_html(frame: pd.DataFrame, name: str, digits: int = 4) -> str:
    return frame.to_html(index=False, classes=name, border=0, na_rep="-",
                         float_format=lambda x: f"{x:.{digits}f}")


def missing(command: str) -> str:
    return f'<p class="missing">Not run yet: <code>{html.escape(command)}</code></p>'


def section(anchor: str, title: str, body: str) -> tuple[str, str, str]:
    return anchor, title, f'<section id="{anchor}"><h2>{html.escape(title)}</h2>{body}</section>'


class Report:
    """The tables of some runs under one results root, and the page's sections drawn from them."""

    def __init__(self, store: ResultStore, runs: list[Run], root_text: str):
        self.store, self.runs, self.root = store, runs, root_text
        self.ids = [run.run_id for run in runs]
        self.labels = {run.run_id: run.label for run in runs}
        self.rows = pd.concat([store.read("runs", run_id) for run_id in self.ids], ignore_index=True)

    def command(self, name: str, runs=None) -> str:
        ids = " ".join(runs or self.ids)
        return f"python jobs/analyze.py {name} --results {self.root} --runs {ids}"

    def gate(self, run_id: str) -> np.ndarray | None:
        if not self.store.exists("gates", run_id):
            return None
        return gate_stats.gate_matrix(self.store.read("gates", run_id))

    def overview(self):
        body = table_html(table1(self.rows), "table1")
        body += "".join(f"<p class=\"legend\">{html.escape(line)}</p>" for line in legend(self.rows, self.labels))
        lines = [f"<li>{html.escape(self.labels[run_id])}: {html.escape(gate_stats.balance_line(gate))}</li>"
                 for run_id in self.ids if (gate := self.gate(run_id)) is not None]
        if lines:
            body += "<p>How the gate shares the filters among classes:</p><ul>" + "".join(lines) + "</ul>"
        config = self.rows.set_index("run_id").T.astype(str)
        config.columns = [self.labels[str(c)] for c in config.columns]
        body += f"<details><summary>Configuration of each run</summary>{config.to_html(classes='config')}</details>"
        return section("overview", "Table 1 and configurations", body)

    def training(self):
        epochs = read_tables(self.store, ["epochs"], self.ids).get("epochs")
        if epochs is None:
            return section("training", "Training curves", "<p>No epochs recorded.</p>")
        return section("training", "Training curves (CSG epochs shaded)",
                       image(figures.plot_curves, epochs, self.labels, alt="training curves"))

    def fig4(self):
        body = ""
        gates = {run_id: gate for run_id in self.ids if (gate := self.gate(run_id)) is not None}
        for run_id, gate in gates.items():
            body += image(partial(figures.plot_gate, title=f"(a) gate G of {self.labels[run_id]}"), gate,
                          alt="gate matrix")
        mi = {run_id: gate_stats.gate_matrix(self.store.read("mi", run_id).rename(columns={"mi": "value"}))
              for run_id in self.ids if self.store.exists("mi", run_id)}
        if mi:
            mis = self.rows.set_index("run_id")["mis"]
            panels = {self.labels[r]: (m.T, float(mis.loc[r])) for r, m in mi.items()}
            body += image(figures.plot_mi_pair, panels, alt="MI matrices")
        for run_id in gates.keys() & mi.keys():
            body += image(figures.plot_overlay, gates[run_id], mi[run_id], self.labels[run_id],
                          alt="gate and MI overlaid")
            agree = int((gates[run_id].argmax(axis=0) == mi[run_id].argmax(axis=0)).sum())
            body += (f"<p>{html.escape(self.labels[run_id])}: {agree} of {gates[run_id].shape[1]} filters have "
                     f"their largest MI with the class their gate serves most (chance: about 1 in "
                     f"{gates[run_id].shape[0]}).</p>")
        return section("fig4", "Fig. 4: gate (a), MI matrices (b1, b2), both overlaid (c)",
                       body or "<p>No gate or MI table.</p>")

    def study(self, name: str):
        study = STUDIES[name]
        runs = [run.run_id for run in self.runs if run.method == "csg" or not study.csg_only]
        tables = read_tables(self.store, study.tables, runs)
        if not runs:
            return section(name, study.title, "<p>Needs a CSG run.</p>")
        if set(tables) != set(study.tables):
            return section(name, study.title, missing(self.command(name, runs)))
        done = [run_id for run_id in runs if (tables[study.tables[0]]["run_id"].astype(str) == run_id).any()]
        body = f"<pre>{html.escape(study.module.summary(tables, self.labels))}</pre>"
        body += "".join(image(plot, tables, self.labels, alt=figure) for figure, plot in study.figures.items())
        if hasattr(study.module, "headline"):
            body += table_html(study.module.headline(tables, self.labels), f"{name}-table")
        if len(done) < len(runs):
            body += missing(self.command(name, [r for r in runs if r not in done]))
        return section(name, study.title, body)

    def localization(self):
        from analysis.localization_metrics import table2
        from analysis.localization_plots import plot_filter_iou

        title = "Localization (Sec. 5.1, Table 2, Fig. 9)"
        tables = read_tables(self.store, ["localization", "localization_filters"], self.ids)
        datasets = set(self.rows["dataset"])
        if "localization" not in tables and not datasets & {"digits-scenes", "imagefolder"}:
            return section("localization", title, f"<p>Needs object masks, which {', '.join(sorted(datasets))} "
                                                  f"lacks: train on digits-scenes or an ImageFolder tree with "
                                                  f"masks/ (see docs/training.md, Data).</p>")
        if "localization" not in tables:
            return section("localization", title, missing(self.command("localize")))
        done = [r for r in self.ids if (tables["localization"]["run_id"].astype(str) == r).any()]
        body = table_html(table2(tables["localization"], self.labels).reset_index(), "localization-table")
        if "localization_filters" in tables:
            body += image(plot_filter_iou, tables["localization_filters"], self.labels, alt="filter Avg-IoU")
        cams = Path(self.store.root) / "figures" / f"localization_cam_{'_'.join(done)}.png"
        if cams.is_file():
            data = base64.b64encode(cams.read_bytes()).decode("ascii")
            body += f'<img alt="CAMs (Fig. 9)" src="data:image/png;base64,{data}">'
        if len(done) < len(self.ids):
            body += missing(self.command("localize", [r for r in self.ids if r not in done]))
        return section("localization", title, body)

    def adversarial(self):
        from analysis.adversarial import table3

        frame = read_tables(self.store, ["adversarial"], self.ids).get("adversarial")
        if frame is None:
            return section("adversarial", "Adversarial-sample detection (Table 3)",
                           missing(self.command("adversarial")))
        table = table3(frame, self.labels).reset_index()
        return section("adversarial", "Adversarial-sample detection: mean detector error rate, % (Table 3)",
                       table_html(table, "adversarial-table", 2))

    def blackbox(self):
        from analysis.blackbox import table4

        frame = read_tables(self.store, ["blackbox"], self.ids).get("blackbox")
        if frame is None:
            return section("blackbox", "Black-box attacks (Table 4)", missing(self.command("blackbox")))
        table = table4(frame, self.labels).reset_index()
        return section("blackbox", "Black-box attacks: success rate on correctly classified images, % (Table 4)",
                       table_html(table, "blackbox-table", 2))

    def same_configuration(self, table: str) -> pd.DataFrame | None:
        """Rows of `table` from runs of this report's data set and model (seed and sweep runs)."""
        if not self.store.has_table(table):
            return None
        rows = self.store.read(table)
        runs = self.store.read("runs")[["run_id", "dataset", "model"]].astype({"run_id": str})
        mine = self.rows[["dataset", "model"]].drop_duplicates()
        related = set(runs.merge(mine, on=["dataset", "model"])["run_id"])
        rows = rows[rows["run_id"].astype(str).isin(related)]
        return rows if len(rows) else None

    def seeds(self):
        dataset, model = self.rows.loc[0, "dataset"], self.rows.loc[0, "model"]
        stats = self.same_configuration("gate_stats")
        title = f"Gate statistics over seeds, {dataset} {model} (Appendix E)"
        if stats is None:
            return section("gate_stats", title, missing(
                f"python jobs/seeds_cifar.py --dataset {dataset} --model {model} --seeds 5 --results {self.root}"))
        per_class, m2_mean, m2_std = gate_stats.summarize(stats)
        body = (f"<p>{stats['run_id'].nunique()} runs; m2 (filters shared) {m2_mean:.2f} ± {m2_std:.2f}</p>"
                + table_html(per_class, "gate-stats-table", 2) + image(gate_stats.plot_histogram, stats, alt="m1, m2"))
        return section("gate_stats", title, body)

    def sweeps(self):
        dataset, model = self.rows.loc[0, "dataset"], self.rows.loc[0, "model"]
        tune = self.same_configuration("tune")
        title = f"Sweeps of the CSG hyper-parameters, {dataset} {model}"
        if tune is None:
            return section("tune", title, missing(
                f"python jobs/tune_cifar.py --dataset {dataset} --model {model} --results {self.root}"))
        shown = tune.sort_values("mis", ascending=False).drop(columns=["run_id"])
        return section("tune", title, table_html(shown, "tune-table"))

    def beside_paper(self, anchor: str, body: str) -> str:
        """The section with the paper's published figures for the experiment the runs repeat."""
        lines = "".join(f'<p class="paper">{html.escape(line)}</p>' for line in published.beside(anchor, self.rows))
        return body.removesuffix("</section>") + lines + "</section>"

    def html(self) -> str:
        parts = [self.overview(), self.training(), self.fig4(), *(self.study(name) for name in STUDIES),
                 self.localization(), self.adversarial(), self.blackbox(), self.seeds(), self.sweeps()]
        parts = [(anchor, title, self.beside_paper(anchor, body)) for anchor, title, body in parts]
        nav = "".join(f'<a href="#{anchor}">{html.escape(title.split(" (")[0].split(":")[0])}</a>'
                      for anchor, title, _ in parts)
        title = "csg-ray report: " + ", ".join(self.labels[r] for r in self.ids)
        return (f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>'
                f"<style>{STYLE}</style></head><body><h1>{html.escape(title)}</h1>"
                f"<p>Results root <code>{html.escape(self.root)}</code>; written {time.strftime('%Y-%m-%d %H:%M')}"
                f" from its tables alone.</p><nav>{nav}</nav>"
                + "".join(body for _, _, body in parts) + "</body></html>")


def write_report(store: ResultStore, runs: list[Run], out, root_text: str) -> Path:
    """Write the page atomically (a reader never sees half of it)."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp")
    tmp.write_text(Report(store, runs, root_text).html(), encoding="utf-8")
    tmp.replace(out)
    return out


@dataclass(frozen=True)
class Options(Compared):
    out: str | None = option(None, "HTML file (default: <results>/report_<runs>.html)")


def main(store: ResultStore, options: Options, start=None, echo=print) -> Path:
    """The page of `options.runs` (no Ray: it reads tables only)."""
    runs = resolve_runs(store, options.runs)
    out = Path(options.out or Path(options.results) / f"report_{'_'.join(options.runs)}.html")
    write_report(store, runs, out, options.results)
    echo(f"report: {out}")
    return out
