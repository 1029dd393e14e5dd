"""Driver side of a training run: join or start Ray, record the run, fit, record the result."""
from __future__ import annotations

import time
from contextlib import nullcontext

from csg import run_record
from csg.cluster import check_relative_paths, check_visible_from_every_node, init_ray
from csg.config import ConfigError, TrainConfig, resolved_g_density, with_absolute_paths
from csg.data import DatasetInfo
from csg.gate import l1_interval
from csg.progress import ProgressFeed, ProgressLine
from csg.results import ResultStore


class RunError(RuntimeError):
    """A run that did not finish; the message is one line naming why."""


def root_cause(exc: BaseException) -> str:
    """The first line of the error a worker raised, without Ray's wrapping."""
    for failure in getattr(exc, "worker_failures", {}).values():
        exc = getattr(failure, "cause", None) or failure
        break
    lines = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {lines[-1] if lines else ''}"


def train(cfg: TrainConfig, info: DatasetInfo, run_id: str | None = None, callbacks=(),
          show_progress: bool = True) -> dict:
    """Train one validated config; returns its `runs` row as a dict. `callbacks` go to Ray Train.
    With `show_progress`, say what is starting, keep a progress line, print the summary.

    Storage problems raise StorageError before anything is written under the results root.
    """
    check_relative_paths({"results": cfg.results, "storage": cfg.storage})
    cfg = with_absolute_paths(cfg)
    init_ray()
    check_visible_from_every_node({"results": cfg.results, "storage": cfg.storage_path})
    from csg import ray_train  # imports Ray, so only after init_ray chose how to start it

    run_id = run_id or cfg.run_id or run_record.new_run_id(cfg)
    store = ResultStore(cfg.results)
    _check_resumable(store, run_id, cfg)
    low, high = l1_interval(info.num_classes, resolved_g_density(cfg, info.num_classes))
    summary = {
        "status": "running",
        "num_classes": info.num_classes,
        "l1_interval_low": low if cfg.method == "csg" else None,
        "l1_interval_high": high if cfg.method == "csg" else None,
        "started_at": time.strftime("%Y-%m-%dT%H:%M:%S"),
    }
    run_record.write_run(store, run_id, cfg, summary)
    if show_progress:
        print(run_record.start_line(run_id, cfg, info), flush=True)
    feed = ProgressFeed(ProgressLine(run_id, cfg.epochs, verbose=cfg.verbose)) if show_progress else nullcontext()
    try:
        with feed:
            result_summary, result = ray_train.fit(cfg, run_id, callbacks, getattr(feed, "queue", None))
    except Exception as exc:
        run_record.write_run(store, run_id, cfg, {**summary, "status": "failed"})
        raise RunError(f"run {run_id} failed: {root_cause(exc)}") from exc
    best = result.get_best_checkpoint(ray_train.SCORE, "max") if result.best_checkpoints else None
    diverged = result_summary.pop("diverged", None)
    summary.update(result_summary)
    summary.update(
        status="diverged" if diverged else "finished",
        checkpoint=_location(result.checkpoint),
        best_checkpoint=_location(best),
        finished_at=time.strftime("%Y-%m-%dT%H:%M:%S"),
    )
    run_record.write_run(store, run_id, cfg, summary)
    if diverged:
        kept = f"last good checkpoint {summary['checkpoint']}" if summary["checkpoint"] else "no checkpoint yet"
        raise RunError(f"run {run_id} diverged: {diverged}; {kept}")
    if show_progress:
        print(run_record.summary_line(run_id, cfg, summary), flush=True)
    return {"run_id": run_id, **summary}


RESUME_KEYS = ("dataset", "model", "method", "scheme", "gate", "num_classes")


def _check_resumable(store: ResultStore, run_id: str, cfg: TrainConfig) -> None:
    """A run id that exists may be resumed, never turned into another model: refuse before
    its `runs` row, tables or checkpoints are touched."""
    if not store.exists("runs", run_id):
        return
    previous = store.read("runs", run_id).iloc[0]
    for key in RESUME_KEYS:
        mine = getattr(cfg, key)
        if mine is not None and previous[key] != mine:
            raise ConfigError(
                f"--run-id: run {run_id} exists with {key}={previous[key]!r}, not {mine!r}; "
                f"choose a new run id to train something else"
            )


def _location(checkpoint) -> str | None:
    """A checkpoint's directory as a path, or as a URI when it is not on the local disk."""
    if checkpoint is None:
        return None
    kind = checkpoint.filesystem.type_name
    return checkpoint.path if kind == "local" else f"{ {'gcs': 'gs'}.get(kind, kind)}://{checkpoint.path}"
