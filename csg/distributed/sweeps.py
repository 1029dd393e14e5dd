"""Ray Tune over training runs: every trial is one CSG run (a Ray Train run of its own workers)
writing the usual per-run tables under run id `<sweep id>-<trial id>`; after the sweep every
trial gets a row in the `tune` table.

A trial the scheduler stopped early is finished from its latest checkpoint (MI and gate tables,
`runs` status `stopped`), so every trial has an accuracy and an MIS to compare. An interrupted
sweep resumes from its Tune state under the checkpoint storage: finished trials are not rerun,
unfinished ones continue from their latest checkpoint.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import math
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from csg.config import (
    ConfigError,
    TrainConfig,
    resolved_g_density,
    validate,
    with_absolute_paths,
)
from csg.data import DatasetInfo, describe
from csg.distributed.cluster import (
    check_relative_paths,
    check_visible_from_every_node,
    init_ray,
)
from csg.method.gate import inside_interval
from csg.store import run_record
from csg.store.results import SCHEMAS, ResultStore, filesystem_of

# Options a sweep sets per trial or for the whole sweep, so jobs do not take them as flags.
SEARCHED = ("period", "csg_epochs", "lambda1", "lambda2", "g_density", "psi")
MANAGED = (*SEARCHED, "workers", "gpu", "gpus_per_worker", "run_id", "method")
SWEEP_FLAGS = ("max_concurrent", "workers_per_trial", "gpus_per_trial", "sweep_id", "resume")

STOP_REASONS = ("completed", "early_stopped", "diverged", "error", "interrupted")


@dataclass
class SearchSpace:
    """Values to try: lists are choices; (low, high) pairs are log-uniform ranges (random search)
    or `grid_points` log-spaced values (grid search); low == high fixes the value."""

    period: tuple[int, ...] = (2, 3, 4)
    csg_epochs: tuple[int, ...] = (1, 2)
    lambda1: tuple[float, float] = (0.3, 3.0)
    lambda2: tuple[float, float] = (1e-3, 1.0)
    g_density: tuple[float, float] | None = None  # default: [1/C, min(1, 4/C)]
    psi: tuple[str, ...] = ("l1",)

    def check(self, num_classes: int) -> None:
        if not self.schedules():
            raise ConfigError(f"--csg-epochs: every value exceeds every --period (got {list(self.csg_epochs)} "
                              f"and {list(self.period)})")
        for name, (low, high) in self.ranges(num_classes).items():
            if not 0 < low <= high:
                raise ConfigError(f"--{name.replace('_', '-')}: need 0 < low <= high (got {low} {high})")
        low, high = self.ranges(num_classes)["g_density"]
        if low < 1 / num_classes - 1e-12 or high > 1:
            raise ConfigError(f"--g-density: must lie in [1/C, 1] = [{1 / num_classes:.6g}, 1] (got {low} {high})")

    def schedules(self) -> list[tuple[int, int]]:
        """(period, csg_epochs) pairs with csg_epochs <= period: the conditional part of the space."""
        return [(p, e) for p in self.period for e in self.csg_epochs if 1 <= e <= p]

    def ranges(self, num_classes: int) -> dict[str, tuple[float, float]]:
        density = self.g_density or (1 / num_classes, min(1.0, 4 / num_classes))
        return {"lambda1": self.lambda1, "lambda2": self.lambda2, "g_density": density}

    def param_space(self, num_classes: int, search: str, grid_points: int = 2) -> dict:
        from ray import tune

        ranges = self.ranges(num_classes)
        if search == "grid":
            space = {name: tune.grid_search(_geometric(low, high, grid_points)) for name, (low, high) in ranges.items()}
            return {**space, "schedule": tune.grid_search(self.schedules()), "psi": tune.grid_search(list(self.psi))}
        space = {name: tune.loguniform(low, high) if high > low else low for name, (low, high) in ranges.items()}
        return {**space, "schedule": tune.choice(self.schedules()), "psi": tune.choice(list(self.psi))}


def _geometric(low: float, high: float, points: int) -> list[float]:
    return sorted({float(v) for v in np.geomspace(low, high, points)}) if high > low else [low]


def trial_overrides(config: dict) -> dict:
    """A Tune config as TrainConfig fields (the schedule pair unpacked)."""
    fields = {k: v for k, v in config.items() if k != "schedule"}
    if "schedule" in config:
        fields["period"], fields["csg_epochs"] = (int(v) for v in config["schedule"])
    return fields


def run_trial(config: dict, base: dict, sweep_id: str) -> None:
    """One trial, in its Tune actor: a training run whose epochs report to Tune."""
    from ray import tune
    from ray.tune.integration.ray_train import TuneReportCallback

    from csg.distributed.driver import train

    cfg = TrainConfig.from_saved({**base, **trial_overrides(config)})
    run_id = trial_run_id(sweep_id, tune.get_context().get_trial_id())
    run = run_record.read_run(ResultStore(cfg.results), run_id)
    if run.get("status") == "finished":
        # A Ctrl-C after the run wrote its last row but before Tune heard leaves the trial
        # unfinished in the sweep's state; resumed, it reports the run's last epoch again
        # (Tune requires the metric) and ends, the run's tables untouched.
        tune.report({"epoch": int(run["epochs_completed"]) - 1, run_record.SCORE: float(run["final_acc"])})
        return
    info = describe(cfg.dataset, cfg.data)  # validated by the driver, GPUs included
    # The sweep owns its trials' leases, so a resumed sweep re-enters them at once.
    train(cfg, info, run_id, [TuneReportCallback()], show_progress=False, owner=f"sweep {sweep_id}")


def trial_run_id(sweep_id: str, trial_id: str) -> str:
    return f"{sweep_id}-{trial_id}"


@dataclass
class SweepOptions:
    sweep_id: str = ""
    num_samples: int = 8
    max_concurrent: int = 0  # 0: as many as the cluster's CPUs (or GPUs) fit
    search: str = "random"  # random | grid
    grid_points: int = 2
    scheduler: str = "asha"  # asha | none
    grace_period: int = 0  # 0: a quarter of the epochs
    reduction_factor: int = 3
    resume: bool = False


def add_sweep_arguments(parser: argparse.ArgumentParser):
    """The flags every sweep job shares; returns their group for job-specific ones."""
    group = parser.add_argument_group("sweep")
    group.add_argument("--max-concurrent", type=int, default=0, help="trials at once (0: as many as fit)")
    group.add_argument("--workers-per-trial", type=int, default=1, help="Ray Train workers of each trial")
    group.add_argument("--gpus-per-trial", type=float, default=0, help="GPUs of each trial, split over its workers")
    group.add_argument("--sweep-id", default=None, help="sweep name (default: generated)")
    group.add_argument("--resume", action="store_true",
                       help="continue the interrupted sweep --sweep-id with the options it was started with")
    return group


def value_range(args: dict, name: str) -> tuple[float, float]:
    """Option `name`: one value (fixed) or LOW HIGH, from a command-line list."""
    values = args[name]
    if len(values) not in (1, 2):
        raise ConfigError(f"--{name.replace('_', '-')}: expected one value or LOW HIGH "
                          f"(got {' '.join(map(str, values))})")
    return (values[0], values[-1])


def search_space(args: dict, num_classes: int) -> dict:
    """The Tune param space of a hyper-parameter sweep, from its parsed options."""
    space = SearchSpace(
        period=tuple(args["period"]), csg_epochs=tuple(args["csg_epochs"]), psi=tuple(args["psi"]),
        lambda1=value_range(args, "lambda1"), lambda2=value_range(args, "lambda2"),
        g_density=value_range(args, "g_density") if args["g_density"] else None,
    )
    space.check(num_classes)
    return space.param_space(num_classes, args["search"], args["grid_points"])


def launch_sweep(cfg: TrainConfig, info: DatasetInfo, args: dict, make_space) -> pd.DataFrame:
    """Start a sweep: `make_space(args, C)` gives the Tune param space. The sweep saves its
    config and options next to its Tune state, so that `--resume --sweep-id X` needs nothing else."""
    if args["workers_per_trial"] < 1 or args["gpus_per_trial"] < 0:
        raise ConfigError("--workers-per-trial must be >= 1 and --gpus-per-trial >= 0 "
                          f"(got {args['workers_per_trial']} and {args['gpus_per_trial']})")
    cfg = trial_config(cfg, args["workers_per_trial"], args["gpus_per_trial"])
    info = validate(cfg)
    if args["sweep_id"] and _saved(cfg.storage_path, args["sweep_id"]):
        raise ConfigError(f"--sweep-id: sweep {args['sweep_id']!r} exists under {cfg.storage_path}; "
                          f"continue it with --resume or choose another id")
    args = {**args, "sweep_id": args["sweep_id"]
            or f"{cfg.dataset}-{run_record.model_tag(cfg.model)}-sweep-{run_record.id_suffix(2)}"}
    return _start(cfg, info, args, make_space)


def resume_sweep(storage: str, sweep_id: str | None, make_space) -> pd.DataFrame:
    """Continue the sweep saved as `sweep_id` under `storage`, with the config and options it
    was started with."""
    if not sweep_id:
        raise ConfigError(f"--resume: needs --sweep-id, the sweep to continue ({_saved_listing(storage)})")
    saved = _load_saved(storage, sweep_id)
    cfg = TrainConfig.from_saved(saved["config"])
    return _start(cfg, validate(cfg), {**saved["args"], "resume": True}, make_space)


def _start(cfg: TrainConfig, info: DatasetInfo, args: dict, make_space) -> pd.DataFrame:
    """What a new and a resumed sweep share: the space, the path checks, Ray, then the sweep."""
    param_space = make_space(args, info.num_classes)
    check_relative_paths({"results": cfg.results, "storage": cfg.storage})
    cfg = with_absolute_paths(cfg)
    init_ray()
    check_visible_from_every_node({"results": cfg.results, "storage": cfg.storage_path})
    if not args["resume"]:
        _save(cfg.storage_path, args["sweep_id"], {"config": cfg.to_dict(), "args": args})
    options = SweepOptions(**{f.name: args[f.name] for f in dataclasses.fields(SweepOptions) if f.name in args})
    print(f"sweep {options.sweep_id}: storage {cfg.storage_path}/{options.sweep_id}, tables under {cfg.results}",
          flush=True)
    return run_sweep(cfg, param_space, options)


def trial_config(cfg: TrainConfig, workers: int, gpus: float) -> TrainConfig:
    """The config every trial starts from: CSG, `workers` ranks sharing `gpus` GPUs."""
    return dataclasses.replace(cfg, method="csg", workers=workers, gpu=gpus > 0,
                               gpus_per_worker=gpus / workers if gpus else 1.0)


SAVED_SUFFIX = ".csg-sweep.json"


def _saved_path(storage: str, sweep_id: str) -> tuple:
    filesystem, base = filesystem_of(storage)
    return filesystem, f"{base}/{sweep_id}{SAVED_SUFFIX}"


def _save(storage: str, sweep_id: str, content: dict) -> None:
    filesystem, path = _saved_path(storage, sweep_id)
    filesystem.create_dir(path.rsplit("/", 1)[0], recursive=True)
    with filesystem.open_output_stream(path) as out:
        out.write(json.dumps(content, indent=1).encode())


def _saved(storage: str, sweep_id: str) -> bool:
    from pyarrow import fs as pafs

    filesystem, path = _saved_path(storage, sweep_id)
    return filesystem.get_file_info(path).type == pafs.FileType.File


def saved_sweeps(storage: str) -> list[str]:
    """The ids of the sweeps saved under `storage`, the ones `--resume` can continue."""
    from pyarrow import fs as pafs

    filesystem, base = filesystem_of(storage)
    found = filesystem.get_file_info(pafs.FileSelector(base, allow_not_found=True))
    return sorted(info.base_name[:-len(SAVED_SUFFIX)] for info in found
                  if info.type == pafs.FileType.File and info.base_name.endswith(SAVED_SUFFIX))


def _saved_listing(storage: str) -> str:
    sweeps = saved_sweeps(storage)
    return f"sweeps under {storage}: {', '.join(sweeps)}" if sweeps else f"no sweep is saved under {storage}"


def _load_saved(storage: str, sweep_id: str) -> dict:
    if not _saved(storage, sweep_id):
        raise ConfigError(f"--resume: no sweep {sweep_id!r} ({_saved_listing(storage)})")
    filesystem, path = _saved_path(storage, sweep_id)
    with filesystem.open_input_stream(path) as stream:
        return json.loads(stream.read())


def run_sweep(base: TrainConfig, param_space: dict, options: SweepOptions) -> pd.DataFrame:
    """Run (or resume) the sweep, then write and return its `tune` rows."""
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler
    from ray.tune.search import BasicVariantGenerator

    from csg.distributed.trial_events import TrialEvents

    trainable = tune.with_resources(
        tune.with_parameters(run_trial, base=base.to_dict(), sweep_id=options.sweep_id), {"CPU": 0.01}
    )
    path = f"{base.storage_path.rstrip('/')}/{options.sweep_id}"
    if options.resume and tune.Tuner.can_restore(path):
        tuner = tune.Tuner.restore(path, trainable, resume_unfinished=True, resume_errored=False,
                                   param_space=param_space)
    else:
        scheduler = None
        if options.scheduler == "asha":
            # max_t one past the last epoch: ASHA stops a trial on reaching max_t, and a trial
            # that trains every epoch should end on its own, recording its MI as any run does.
            scheduler = ASHAScheduler(
                time_attr="training_iteration", max_t=base.epochs + 1, reduction_factor=options.reduction_factor,
                grace_period=options.grace_period or max(1, base.epochs // 4),
            )
        tuner = tune.Tuner(
            trainable,
            param_space=param_space,
            tune_config=tune.TuneConfig(
                metric=run_record.SCORE, mode="max", num_samples=options.num_samples, scheduler=scheduler,
                search_alg=BasicVariantGenerator(random_state=base.seed),
                max_concurrent_trials=options.max_concurrent or _fitting_trials(base),
            ),
            run_config=tune.RunConfig(name=options.sweep_id, storage_path=base.storage_path,
                                      verbose=2 if base.verbose else 0, callbacks=[TrialEvents(base.epochs)]),
        )
    grid = tuner.fit()
    # Completed and scheduler-stopped trials end TERMINATED; an interrupted sweep leaves the
    # rest RUNNING, PAUSED or PENDING in its saved state.
    statuses = {trial.trial_id: trial.status for trial in tune.ExperimentAnalysis(path).trials}
    store = ResultStore(base.results)
    rows = [_trial_row(store, base, options.sweep_id, result, statuses) for result in grid]
    frame = pd.DataFrame(rows, columns=["run_id", *SCHEMAS["tune"].names])
    for row in frame.to_dict("records"):
        store.write("tune", row["run_id"], pd.DataFrame([row]))
    return frame


def _fitting_trials(base: TrainConfig) -> int:
    import ray

    resources = ray.cluster_resources()
    kind, need = ("GPU", base.gpus_per_worker) if base.gpu else ("CPU", base.cpus_per_worker)
    return max(1, int(resources.get(kind, 1) // (need * base.workers)))


def _trial_id(result) -> str:
    if result.metrics and "trial_id" in result.metrics:
        return str(result.metrics["trial_id"])
    match = re.search(r"_([0-9a-f]{5}_\d{5})", str(result.path))
    if not match:
        raise RuntimeError(f"cannot tell the trial id of {result.path}")
    return match.group(1)


def _trial_row(store: ResultStore, base: TrainConfig, sweep_id: str, result, statuses: dict) -> dict:
    trial_id = _trial_id(result)
    run_id = trial_run_id(sweep_id, trial_id)
    cfg = dataclasses.replace(base, **trial_overrides(result.config))
    run = run_record.read_run(store, run_id)
    status = run.get("status")
    # Stopped by the scheduler, the trial's run was cut off mid-epoch: its row still says
    # running, or failed if the stop reached it as an error first. Tune saw no error.
    if status in ("running", "failed") and statuses.get(trial_id) == "TERMINATED":
        run = finish_stopped_run(store, cfg, run_id)
        status = run["status"]
    reason = {"finished": "completed", "stopped": "early_stopped", "diverged": "diverged", "failed": "error"}.get(
        status, "error" if statuses.get(trial_id) == "ERROR" or result.error is not None else "interrupted")
    density = run.get("l1_density", math.nan)
    inside = inside_interval(density, run.get("l1_interval_low"), run.get("l1_interval_high"))
    return {
        "run_id": run_id, "sweep_id": sweep_id, "trial_id": trial_id,
        **{name: getattr(cfg, name) for name in ("period", "csg_epochs", "lambda1", "lambda2", "psi", "seed")},
        "g_density": cfg.g_density if cfg.g_density is not None else math.nan,
        **{name: _number(run.get(name)) for name in ("final_acc", "best_acc", "mis", "l1_density")},
        "inside_interval": bool(inside),
        "best_epoch": _integer(run.get("best_epoch")), "epochs_completed": _integer(run.get("epochs_completed")),
        "stop_reason": reason,
    }


def _number(value) -> float:
    return math.nan if value is None or pd.isna(value) else float(value)


def _integer(value):
    return None if value is None or pd.isna(value) else int(value)


def finish_stopped_run(store: ResultStore, cfg: TrainConfig, run_id: str) -> dict:
    """Finish a run Tune ended from outside, from its latest checkpoint: MI and gate tables, and
    its `runs` row with status `stopped` (`finished` if it had trained every epoch). Returns that row."""
    from csg.method.gate import g_from_density
    from csg.store import checkpoint as ckpt_lib

    folder = _latest_checkpoint(cfg.storage_path, run_id)
    state = ckpt_lib.read(folder)
    row = store.read("runs", run_id).iloc[0].to_dict()
    num_classes = int(row["num_classes"])
    gate = ckpt_lib.saved_gate(state)
    features = ckpt_lib.checkpoint_features(folder, state=state)
    g = math.nan if gate is None else g_from_density(
        resolved_g_density(cfg, num_classes), num_classes, features["features"].shape[1])
    summary = {
        # what the run recorded when it started: class count, start time, L1 interval
        **{k: row[k] for k in ("num_classes", "started_at", "l1_interval_low", "l1_interval_high")},
        **run_record.write_final(store, run_id, cfg, features, num_classes, gate, state["history"], g),
        "status": "finished" if len(state["history"]) == cfg.epochs else "stopped", "checkpoint": str(folder),
        "finished_at": run_record.timestamp(),
    }
    run_record.write_run(store, run_id, cfg, summary)
    return {"run_id": run_id, **summary}


def _latest_checkpoint(storage: str, run_name: str) -> Path:
    """A Ray Train run's checkpoint with the highest epoch, as a local directory (downloaded
    when the storage is remote): how a run stopped from outside is picked up again."""
    from pyarrow import fs as pafs
    from ray.train import Checkpoint

    from csg.store.checkpoint import read

    filesystem, base = filesystem_of(storage)
    entries = filesystem.get_file_info(pafs.FileSelector(f"{base}/{run_name}", allow_not_found=True))
    folders = [e.path for e in entries if e.type == pafs.FileType.Directory and e.base_name.startswith("checkpoint_")]
    if not folders:
        raise FileNotFoundError(f"no checkpoint of run {run_name} under {storage}")
    local = [Path(f) if isinstance(filesystem, pafs.LocalFileSystem)
             else Path(Checkpoint(f, filesystem).to_directory()) for f in folders]
    return max(local, key=lambda folder: read(folder)["epoch"])
