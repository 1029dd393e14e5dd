"""Driver side of a training run: join or start Ray, record the run, fit, record the result."""
from __future__ import annotations

import logging
import os
import time

import ray

from csg import ray_train, run_record
from csg.config import TrainConfig, resolved_g_density, with_absolute_paths
from csg.data import DatasetInfo
from csg.gate import l1_interval
from csg.results import ResultStore


def init_ray(**local_kwargs) -> None:
    """Join the cluster when RAY_ADDRESS is set (as under `ray job submit`), else start a local Ray.

    Local-only arguments (num_cpus, temp dirs) are passed only when starting a local Ray.
    """
    if ray.is_initialized():
        return
    if os.environ.get("RAY_ADDRESS"):
        ray.init(logging_level=logging.WARNING)
        return
    # The Train controller registers each epoch's report at its next health check (every 2 s
    # by default); on a local Ray that poll, not training, dominated short epochs.
    os.environ.setdefault("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0.2")
    ray.init(logging_level=logging.WARNING, **local_kwargs)


class RunError(RuntimeError):
    """A run that did not finish; the message is one line naming why."""


def root_cause(exc: BaseException) -> str:
    """The first line of the error a worker raised, without Ray's wrapping."""
    for failure in getattr(exc, "worker_failures", {}).values():
        exc = getattr(failure, "cause", None) or failure
        break
    lines = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {lines[-1] if lines else ''}"


def train(cfg: TrainConfig, info: DatasetInfo, run_id: str | None = None) -> dict:
    """Train one validated config; returns its `runs` row as a dict."""
    cfg = with_absolute_paths(cfg)
    run_id = run_id or cfg.run_id or run_record.new_run_id(cfg)
    store = ResultStore(cfg.results)
    low, high = l1_interval(info.num_classes, resolved_g_density(cfg, info.num_classes))
    summary = {
        "status": "running",
        "num_classes": info.num_classes,
        "l1_interval_low": low if cfg.method == "csg" else None,
        "l1_interval_high": high if cfg.method == "csg" else None,
        "started_at": time.strftime("%Y-%m-%dT%H:%M:%S"),
    }
    run_record.write_run(store, run_id, cfg, summary)
    init_ray()
    try:
        result_summary, result = ray_train.fit(cfg, run_id)
    except Exception as exc:
        run_record.write_run(store, run_id, cfg, {**summary, "status": "failed"})
        raise RunError(f"run {run_id} failed: {root_cause(exc)}") from exc
    best = result.get_best_checkpoint(ray_train.SCORE, "max") if result.best_checkpoints else None
    diverged = result_summary.pop("diverged", None)
    summary.update(result_summary)
    summary.update(
        status="diverged" if diverged else "finished",
        checkpoint=result.checkpoint.path if result.checkpoint else None,
        best_checkpoint=best.path if best else None,
        finished_at=time.strftime("%Y-%m-%dT%H:%M:%S"),
    )
    run_record.write_run(store, run_id, cfg, summary)
    if diverged:
        kept = f"last good checkpoint {summary['checkpoint']}" if summary["checkpoint"] else "no checkpoint yet"
        raise RunError(f"run {run_id} diverged: {diverged}; {kept}")
    print(run_record.summary_line(run_id, cfg, summary), flush=True)
    return {"run_id": run_id, **summary}
