"""`--fixed-gate-from DIR`: the fixed gate of Appendix E sized from the gate statistics of
earlier runs (DIR's `gate_stats` table, written by jobs/seeds_cifar.py)."""
from __future__ import annotations

import dataclasses

from csg.config import ConfigError, TrainConfig
from csg.store.results import ResultStore


def with_fixed_gate_from(cfg: TrainConfig) -> tuple[TrainConfig, int | None]:
    """(the config with gate=fixed, m1 = the mean number of filters a class monopolizes and m2 =
    the mean number shared, rounded; the class count those statistics cover), or (cfg, None)
    without --fixed-gate-from. `config.validate` checks that count against the data set's."""
    if cfg.fixed_gate_from is None:
        return cfg, None
    store = ResultStore(cfg.fixed_gate_from)
    if not store.has_table("gate_stats"):
        raise ConfigError(f"--fixed-gate-from: needs a gate_stats table there (written by jobs/seeds_cifar.py) "
                          f"(got {cfg.fixed_gate_from})")
    stats = store.read("gate_stats")
    per_run = stats.groupby("run_id", observed=True)
    m1 = round(float(stats["monopolized"].mean()))
    m2 = round(float(per_run["shared"].first().mean()))
    return dataclasses.replace(cfg, gate="fixed", m1=max(m1, 1), m2=m2), int(stats["class"].nunique())
