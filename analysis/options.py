"""How an analysis declares its options: a frozen dataclass whose fields carry their help
(and, where argparse needs more than the type, `choices` or `required`). jobs/analyze.py turns
each field `some_name` into a flag `--some-name`; no argparse here."""
from __future__ import annotations

from dataclasses import dataclass, field


def option(default=None, help: str = "", **flag):
    """A field of an options dataclass: its default, its help text and any argparse extras."""
    return field(default=default, metadata={"help": help, **flag})


@dataclass(frozen=True)
class Results:
    results: str = option("results", "results root holding the runs")


@dataclass(frozen=True)
class Compared(Results):
    """Runs attacked on one set of images and compared."""

    runs: tuple[str, ...] = option(None, "run ids, typically a CSG and a STD run", required=True)


@dataclass(frozen=True)
class Studied(Results):
    """A class-specificity study: the runs, their checkpoint and the split it reads."""

    runs: tuple[str, ...] = option(None, "run ids (CSG and STD runs of one data set)", required=True)
    checkpoint: str = option("latest", "checkpoint of each run", choices=("latest", "best"))
    split: str = option("test", "split the features come from", choices=("train", "test"))
