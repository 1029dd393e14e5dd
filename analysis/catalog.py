"""The class-specificity studies by name: what each writes and draws, for the job that runs
them and the report that shows them."""
from __future__ import annotations

from dataclasses import dataclass, fields
from pathlib import Path
from types import ModuleType

from analysis import correlation, kmeans, masking, similarity
from analysis.options import Studied

STUDIED = {f.name for f in fields(Studied)}


@dataclass(frozen=True)
class Study:
    """A class-specificity study: its module declares `Options`, `SCHEMAS` (its tables),
    `options` (the checks), `run` (its Ray tasks), `summary` and the figures named here."""

    name: str
    title: str
    module: ModuleType
    figures: dict  # figure name -> plot(tables, labels, out)
    csg_only: bool = False

    @property
    def tables(self) -> tuple[str, ...]:
        return tuple(self.module.SCHEMAS)

    @property
    def options(self) -> type:
        return self.module.Options


STUDIES = {study.name: study for study in (
    Study("masking", "Masking filters related to classes (Sec. 4.2, Fig. 5)", masking, {"masking": masking.plot}),
    Study("similarity", "Feature/gate similarity on TP and FN samples (Appendix C, Fig. 6)", similarity,
          {"similarity": similarity.plot}, csg_only=True),
    Study("correlation", "Filter correlation, r_s and C_IC (Sec. 4.3, Figs. 7 and 8)", correlation,
          {"correlation": correlation.plot, "correlation_ratios": correlation.plot_ratios}),
    Study("kmeans", "k-means centres of the GAP features (Appendix F, Fig. 11)", kmeans, {"kmeans": kmeans.plot}),
)}


def own_options(options) -> dict:
    """A study's options dataclass as the keyword arguments of its `options` check: every field
    but the runs, their checkpoint and split, which every study shares."""
    return {f.name: getattr(options, f.name) for f in fields(options) if f.name not in STUDIED}


def main(names, store, options: dict, start=None, echo=print) -> dict[str, dict]:
    """The `names` studies (each with its options dataclass in `options`) on the same runs:
    refuse bad input with a StudyError, then `start()` Ray and `run_studies`."""
    from analysis.studies import resolve_runs

    first = options[names[0]]
    runs = resolve_runs(store, first.runs, first.checkpoint)
    requests = {name: check(name, runs_for(name, runs) if len(names) > 1 else runs, store,
                            own_options(options[name])) for name in names}
    if start is not None:
        start()
    order = getattr(options.get("similarity"), "order", None)
    return run_studies(store, runs, requests, first.split, Path(first.results) / "figures",
                       {"similarity": {"order": order}}, echo)


def runs_for(name: str, runs) -> list:
    """The runs a study reads: CSG runs only for a study of the gate."""
    return [run for run in runs if run.method == "csg" or not STUDIES[name].csg_only]


def check(name: str, runs, store, given: dict) -> dict:
    """The study's `run` keyword arguments from the command line's values; StudyError if bad."""
    return STUDIES[name].module.options(runs, store, **given)


def run_studies(store, runs, requests: dict[str, dict], split: str = "test", figures_dir=None,
                figure_options: dict[str, dict] | None = None, echo=print, skip_refused=False,
                list_figures=True) -> dict[str, dict]:
    """Run each requested study (name -> checked options) on `runs`, reading every run's arrays
    once: write its tables, print its summary, save its figures under `figures_dir` (and name
    each, with `list_figures`). A study's
    tables are written only once all its tasks have succeeded. A study that refuses the runs
    (a StudyError: e.g. a gate still so dense that masking a class masks every filter) raises,
    or with `skip_refused` is reported in one line and left out."""
    from analysis.studies import StudyError, load_arrays, write_tables

    arrays = load_arrays(runs, split)
    labels = {run.run_id: run.label for run in runs}
    done = {}
    for name, options in requests.items():
        study = STUDIES[name]
        chosen = runs_for(name, runs)
        try:
            tables = study.module.run(chosen, arrays, **options)
        except StudyError as exc:
            if not skip_refused:
                raise
            echo(f"{name}: skipped, {exc}")
            continue
        write_tables(store, tables)
        echo(study.module.summary(tables, labels))
        stem = "_".join(run.run_id for run in chosen)
        for figure, plot in study.figures.items() if figures_dir is not None else ():
            path = Path(figures_dir) / f"{figure}_{stem}.png"
            plot(tables, labels, path, **(figure_options or {}).get(figure, {}))
            if list_figures:
                echo(f"figure: {path}")
        done[name] = tables
    return done
