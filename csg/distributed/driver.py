"""Driver side of a training run: join or start Ray, record the run, fit, record the result."""
from __future__ import annotations

from contextlib import nullcontext

from csg.config import ConfigError, TrainConfig, resolved_g_density, with_absolute_paths
from csg.data import DatasetInfo
from csg.distributed.cluster import (
    StorageError,
    check_relative_paths,
    check_visible_from_every_node,
    init_ray,
)
from csg.distributed.progress import ProgressFeed, ProgressLine
from csg.distributed.ray_data import check_cpus_left, check_ingest
from csg.distributed.stop_signals import StopSignals
from csg.method.gate import l1_interval
from csg.store import checkpoint as ckpt_lib
from csg.store import run_record
from csg.store.lease import LeaseHeld, RunLease
from csg.store.results import ResultStore, first_line


class RunError(RuntimeError):
    """A run that did not finish; the message is one line naming why."""


class RunInterrupted(RunError):
    """A run stopped by Ctrl-C or `ray job stop`, recorded `interrupted`; it resumes by id."""


def root_cause(exc: BaseException) -> str:
    """The first line of the error a worker raised, without Ray's wrapping."""
    for failure in getattr(exc, "worker_failures", {}).values():
        exc = getattr(failure, "cause", None) or failure
        break
    lines = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {lines[-1] if lines else ''}"


def train(cfg: TrainConfig, info: DatasetInfo, run_id: str | None = None, callbacks=(),
          show_progress: bool = True, owner: str | None = None) -> dict:
    """Train one validated config; returns its `runs` row as a dict. `callbacks` go to Ray Train.
    With `show_progress`, say what is starting, keep a progress line, print the summary.

    The run id's lease (csg.store.lease) is held throughout, under `owner` (default: this driver),
    so no other driver trains the same id at once. Storage problems raise StorageError before
    any table is written; Ctrl-C or `ray job stop` record the run `interrupted` and raise
    RunInterrupted.
    """
    check_relative_paths({"results": cfg.results, "storage": cfg.storage})
    check_ingest(cfg)
    cfg = with_absolute_paths(cfg)
    run_id = run_id or cfg.run_id or run_record.new_run_id(cfg)
    store = ResultStore(cfg.results)
    _check_resumable(store, run_id, cfg)
    lease = RunLease(store, run_id, owner)
    try:
        lease.acquire()
    except LeaseHeld as exc:
        raise ConfigError(str(exc)) from None
    except OSError as exc:
        raise StorageError(f"--results: cannot write under {cfg.results}: {first_line(exc)}") from None
    try:
        init_ray()
        check_cpus_left(cfg)
        check_visible_from_every_node({"results": cfg.results, "storage": cfg.storage_path})
        return _train_leased(cfg, info, run_id, store, callbacks, show_progress)
    finally:
        lease.release()


def _train_leased(cfg: TrainConfig, info: DatasetInfo, run_id: str, store: ResultStore, callbacks,
                  show_progress: bool) -> dict:
    from csg.distributed import (
        ray_train,  # imports Ray, so only after init_ray chose how to start it
    )

    low, high = l1_interval(info.num_classes, resolved_g_density(cfg, info.num_classes))
    summary = {
        "status": "running",
        "num_classes": info.num_classes,
        "l1_interval_low": low if cfg.method == "csg" else None,
        "l1_interval_high": high if cfg.method == "csg" else None,
        "started_at": run_record.timestamp(),
    }
    run_record.write_run(store, run_id, cfg, summary)
    if show_progress:
        print(run_record.start_line(run_id, cfg, info), flush=True)
    feed = ProgressFeed(ProgressLine(run_id, cfg.epochs, verbose=cfg.verbose)) if show_progress else nullcontext()
    stop = StopSignals()
    try:
        with stop, feed:
            result_summary, result = ray_train.fit(cfg, run_id, callbacks, getattr(feed, "queue", None))
    except (KeyboardInterrupt, SystemExit) as exc:
        raise _interrupted(store, run_id, cfg, summary, stop.received or "SIGINT") from exc
    except Exception as exc:
        run_record.write_run(store, run_id, cfg, {**summary, "status": "failed"})
        raise RunError(f"run {run_id} failed: {ray_train.unplaced(exc, cfg) or root_cause(exc)}") from exc
    best = result.get_best_checkpoint(run_record.SCORE, "max") if result.best_checkpoints else None
    diverged = result_summary.pop("diverged", None)
    summary.update(result_summary)
    summary.update(
        status="diverged" if diverged else "finished",
        checkpoint=_location(result.checkpoint),
        best_checkpoint=_location(best),
        finished_at=run_record.timestamp(),
    )
    run_record.write_run(store, run_id, cfg, summary)
    if diverged:
        kept = f"last good checkpoint {summary['checkpoint']}" if summary["checkpoint"] else "no checkpoint yet"
        raise RunError(f"run {run_id} diverged: {diverged}; {kept}")
    if show_progress:
        print(run_record.summary_line(run_id, cfg, summary), flush=True)
    return {"run_id": run_id, **summary}


def _interrupted(store: ResultStore, run_id: str, cfg: TrainConfig, summary: dict, signal_name: str):
    """Record a run stopped from outside as `interrupted` at its last registered checkpoint."""
    latest = ckpt_lib.latest_registered(cfg.storage_path, run_id)
    epochs = len(store.read("epochs", run_id)) if store.exists("epochs", run_id) else 0
    run_record.write_run(store, run_id, cfg, {
        **summary, "status": "interrupted", "epochs_completed": epochs,
        "checkpoint": latest[0] if latest else None, "finished_at": run_record.timestamp(),
    })
    kept = f"checkpoint after epoch {latest[1] + 1} kept" if latest else "no checkpoint yet"
    return RunInterrupted(f"run {run_id} interrupted ({signal_name}) after {epochs} of {cfg.epochs} epochs; "
                          f"{kept}; rerun with --run-id {run_id} to resume")


RESUME_KEYS = ("dataset", "model", "method", "scheme", "gate", "num_classes")


def _check_resumable(store: ResultStore, run_id: str, cfg: TrainConfig) -> None:
    """A run id that exists may be resumed, never turned into another model: refuse before
    its `runs` row, tables or checkpoints are touched."""
    previous = run_record.read_run(store, run_id)
    if not previous:
        return
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
