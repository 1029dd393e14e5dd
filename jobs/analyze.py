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

Each subcommand's flags are the fields of its analysis's `Options` dataclass (analysis/registry.py).
In `studies`, an option several studies declare (--seed) sets it for each of them, and
--<study>-<option> (--kmeans-seed) sets it for one.
"""
from __future__ import annotations

import argparse
import dataclasses
import types
import typing
from collections import Counter

from analysis.catalog import STUDIED, STUDIES
from analysis.fan_out import in_process
from analysis.registry import ANALYSES, RAY_CHOICES
from analysis.studies import StudyError
from csg.cli import OneLineParser, summary
from csg.distributed.cluster import init_ray
from csg.store.results import ResultStore


def add_options(parser: argparse.ArgumentParser, options: type, prefix: str = "", skip=()) -> None:
    """Each field of the `options` dataclass as a flag `--<prefix><field-name>` (dest
    `<prefix>_<field>`): its type, default, help and any `choices` or `required` in its metadata;
    a tuple field takes one or more values, a bool field is a switch."""
    hints = typing.get_type_hints(options)
    for f in dataclasses.fields(options):
        if f.name in skip:
            continue
        kind = hints[f.name]
        if typing.get_origin(kind) in (typing.Union, types.UnionType):  # X | None
            kind = next(t for t in typing.get_args(kind) if t is not type(None))
        flag = {key: value for key, value in f.metadata.items() if key != "help"}
        if typing.get_origin(kind) is tuple:
            flag.update(nargs="+", type=typing.get_args(kind)[0])
        elif kind is bool:
            flag.update(action="store_true")
        else:
            flag.update(type=kind)
        default = list(f.default) if isinstance(f.default, tuple) else f.default
        name = f"{prefix}-{f.name}" if prefix else f.name
        parser.add_argument("--" + name.replace("_", "-"), dest=name.replace("-", "_"), default=default,
                            help=f.metadata["help"], **flag)


def parsed(options: type, args, prefix: str = "") -> object:
    """The `options` dataclass from the parsed flags (a per-study flag, when given, wins)."""
    def value(name):
        own = getattr(args, f"{prefix}_{name}", None) if prefix else None
        got = getattr(args, name) if own is None else own
        return tuple(got) if isinstance(got, list) else got

    return options(**{f.name: value(f.name) for f in dataclasses.fields(options)})


def add_every_study(parser, options: tuple[type, ...]) -> None:
    """`studies`: every study's options once; one a study shares with another also per study."""
    names = Counter(f.name for cls in options for f in dataclasses.fields(cls))
    added = set()
    for cls in options:
        add_options(parser, cls, skip=added)
        added |= {f.name for f in dataclasses.fields(cls)}
    for study, cls in zip(STUDIES, options):
        for f in [f for f in dataclasses.fields(cls) if names[f.name] > 1 and f.name not in STUDIED]:
            parser.add_argument(f"--{study}-{f.name.replace('_', '-')}", dest=f"{study}_{f.name}",
                                type=type(f.default), help=f"{study} alone, instead of --{f.name.replace('_', '-')}: "
                                                            f"{f.metadata['help']}")


def get_args_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(description=summary(__doc__))
    commands = parser.add_subparsers(dest="command", required=True)
    for analysis in ANALYSES.values():
        sub = commands.add_parser(analysis.name, help=analysis.title)
        if isinstance(analysis.options, tuple):
            add_every_study(sub, analysis.options)
        else:
            add_options(sub, analysis.options)
        sub.add_argument("--ray", choices=RAY_CHOICES, default="auto",
                         help="Ray tasks (on), or every task in this process (off); auto: off for one or two "
                              "runs of a study without RAY_ADDRESS, where starting Ray costs more than the work")
    return parser


def main(argv=None):
    parser = get_args_parser()
    args = parser.parse_args(argv)
    analysis = ANALYSES[args.command]
    if isinstance(analysis.options, tuple):
        options = {study: parsed(cls, args, study) for study, cls in zip(STUDIES, analysis.options)}
    else:
        options = parsed(analysis.options, args)
    try:
        if analysis.in_process(getattr(args, "runs", None) or (), args.ray):
            with in_process():
                return analysis.main(ResultStore(args.results), options)
        return analysis.main(ResultStore(args.results), options, init_ray)
    except StudyError as exc:
        parser.error(str(exc))


if __name__ == "__main__":
    main()
