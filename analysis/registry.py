"""Every analysis by command name, for jobs/analyze.py: a new one is a module declaring its
`Options` dataclass and `main(store, options, start, echo)`, and one line here. The
class-specificity studies are listed in `catalog.STUDIES` (a line there makes one here too)."""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Callable

from analysis import adversarial, blackbox, catalog, localization, mutual_info, report


@dataclass(frozen=True)
class Analysis:
    name: str
    title: str
    options: type | tuple  # the Options dataclass; `studies`: every study's
    main: Callable  # main(store, options, start, echo); StudyError for bad input
    light: bool = False  # seconds of work per run: without a cluster, a few runs need no Ray

    def in_process(self, runs, ray: str = "auto") -> bool:
        """Whether to run without Ray (`--ray off`); `auto`: for a light analysis of at most
        IN_PROCESS_RUNS runs when no cluster is named (RAY_ADDRESS unset), where a local Ray's
        start would cost more than the work."""
        if ray != "auto":
            return ray == "off"
        return self.light and len(runs) <= IN_PROCESS_RUNS and not os.environ.get("RAY_ADDRESS")


IN_PROCESS_RUNS = 2
RAY_CHOICES = ("auto", "on", "off")


def _study(study: catalog.Study) -> Analysis:
    return Analysis(study.name, study.title, study.options,
                    lambda store, options, start=None, echo=print: catalog.main([study.name], store,
                                                                                {study.name: options}, start, echo),
                    light=True)


def _every(store, options: dict, start=None, echo=print) -> dict:
    return catalog.main(list(catalog.STUDIES), store, options, start, echo)


ANALYSES = {analysis.name: analysis for analysis in (
    Analysis("mi", "(re)compute the mi table and MIS of a run from its checkpoint", mutual_info.Options,
             mutual_info.main),
    Analysis("adversarial", "adversarial-sample detection from per-layer features (Table 3)", adversarial.Options,
             adversarial.main),
    Analysis("blackbox", "one-pixel and local-search black-box attacks (Table 4)", blackbox.Options, blackbox.main),
    *map(_study, catalog.STUDIES.values()),
    Analysis("studies", "all four studies at once, each run's features read once (similarity: CSG runs only)",
             tuple(study.options for study in catalog.STUDIES.values()), _every, light=True),
    Analysis("localize", "localization by GradMap, ActivMap and CAM against object masks (Sec. 5.1, Table 2, "
             "Fig. 9)", localization.Options, localization.main),
    Analysis("report", "one self-contained HTML page of every result of some runs", report.Options, report.main),
)}
