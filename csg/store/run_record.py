"""Rows of the four per-run tables (`runs`, `epochs`, `gates`, `mi`) and the summary line."""
from __future__ import annotations

import json
import re
import secrets
import subprocess
import time
from importlib import metadata
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa

from csg.config import TrainConfig, preset_changes
from csg.data import unread_options
from csg.method.gate import classes_without_filters, empty_classes_note, inside_interval
from csg.store.results import RUN_SUMMARY_SCHEMA, SCHEMAS, ResultStore, schema_of_dataclass

SCORE = "test_acc"  # what a run's best checkpoint and a sweep's best trial maximise

# run_id is the partition key, restored by the reader from the directory name.
_CONFIG_SCHEMA = schema_of_dataclass(TrainConfig)
RUNS_SCHEMA = pa.unify_schemas(
    [_CONFIG_SCHEMA.remove(_CONFIG_SCHEMA.get_field_index("run_id")), RUN_SUMMARY_SCHEMA]
)
VERSIONED_PACKAGES = ("csg-ray", "torch", "torchvision", "ray", "scikit-learn", "numpy")


def new_run_id(cfg: TrainConfig) -> str:
    return f"{cfg.dataset}-{model_tag(cfg.model)}-{cfg.method}-{id_suffix()}"


def id_suffix(random_bytes: int = 3) -> str:
    """The end of a generated run or sweep id: the time, so ids sort by start, and a random tail."""
    return f"{time.strftime('%Y%m%d-%H%M%S')}-{secrets.token_hex(random_bytes)}"


def model_tag(spec: str) -> str:
    """A model spec as it may stand in a run or sweep id, a folder name: torchvision:vit_b_16 ->
    vit_b_16, mypackage.nets:small_cnn -> small_cnn."""
    return re.sub(r"[^A-Za-z0-9_.-]", "-", spec.rpartition(":")[2])


def write_epochs(store: ResultStore, run_id: str, history: list[dict]) -> None:
    """A run's rows so far; a column its older rows lack (a checkpoint of an earlier version) is null."""
    columns = SCHEMAS["epochs"].names
    store.write("epochs", run_id, pd.DataFrame(history).reindex(columns=columns))


def write_gates(store: ResultStore, run_id: str, gate: np.ndarray) -> None:
    store.write("gates", run_id, _long_form(gate, "value"))


def write_mi(store: ResultStore, run_id: str, matrix: np.ndarray) -> None:
    """`matrix` is (K, C) as the paper writes M; rows are stored per (class, filter)."""
    store.write("mi", run_id, _long_form(matrix.T, "mi"))


def _long_form(per_class: np.ndarray, value: str) -> pd.DataFrame:
    classes, filters = np.indices(per_class.shape)
    return pd.DataFrame(
        {"class": classes.ravel(), "filter": filters.ravel(), value: per_class.ravel().astype(float)}
    )


def write_final(store: ResultStore, run_id: str, cfg: TrainConfig, features: dict, num_classes: int,
                gate: np.ndarray | None, history: list[dict], g: float) -> dict:
    """The end of a run: its MI matrix (fast, exact) from the test-set GAP features, the `mi`
    and `gates` tables, and the `runs` summary fields they and the epoch history determine."""
    # Here, not at the top: scikit-learn and numba take ~1 s to import, and only rank 0 at a
    # run's end needs them, not the driver, the other ranks or Ray Train's controller.
    from csg.method.mutual_info import mi_matrix, mis

    matrix = mi_matrix(features["features"], features["labels"], num_classes, cfg.mi_neighbors, cfg.seed)
    write_mi(store, run_id, matrix)
    if gate is not None:
        write_gates(store, run_id, gate)
    best = max(history, key=lambda r: r[SCORE])
    return {
        "num_filters": matrix.shape[0],
        "epochs_completed": len(history),
        "final_acc": history[-1]["test_acc"],
        "best_acc": best["test_acc"],
        "best_epoch": best["epoch"],
        "mis": mis(matrix),
        "l1_density": history[-1]["l1_density"],
        "g": g,
        "classes_without_filters": [] if gate is None else classes_without_filters(gate),  # not a column
    }


def write_run(store: ResultStore, run_id: str, cfg: TrainConfig, summary: dict) -> None:
    """One `runs` row: the whole config plus whatever of the summary is known so far."""
    row = {**cfg.to_dict(), "run_id": run_id, "versions": json.dumps(versions())}
    row.update({option: None for option in unread_options(cfg.dataset)})
    row.update(summary)
    frame = pd.DataFrame([{name: row.get(name) for name in RUNS_SCHEMA.names}])
    store.write("runs", run_id, frame, RUNS_SCHEMA)


def read_run(store: ResultStore, run_id: str) -> dict:
    """A run's `runs` row as a dict; empty for a run id never recorded."""
    return store.read("runs", run_id).iloc[0].to_dict() if store.exists("runs", run_id) else {}


def versions() -> dict[str, str]:
    found = {}
    for name in VERSIONED_PACKAGES:
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    revision = _git_revision()
    if revision:
        found["git"] = revision
    return found


def _git_revision() -> str | None:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=Path(__file__).parent,
            capture_output=True, text=True, timeout=5,
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout.strip() or None


def start_line(run_id: str, cfg: TrainConfig, info) -> str:
    """What runs: the run, its recipe (the preset and every option changed from it)."""
    workers = f"{cfg.workers} worker{'s' if cfg.workers > 1 else ''}{' on GPU' if cfg.gpu else ''}"
    line = (f"run {run_id}: {cfg.method.upper()} {cfg.model} on {cfg.dataset} ({info.train_size} training images, "
            f"{info.num_classes} classes), {cfg.epochs} epochs, {workers}")
    if cfg.preset is None:
        return line
    changed = " ".join(_as_flag(name, value) for name, value in preset_changes(cfg).items()
                       if name not in ("results", "run_id"))
    return f"{line}\n  preset {cfg.preset}, changed: {changed or 'nothing'}"


def _as_flag(name: str, value) -> str:
    flag = "--" + name.replace("_", "-")
    if isinstance(value, bool):
        return flag if value else f"--no-{name.replace('_', '-')}"
    return f"{flag} {value}"


def summary_line(run_id: str, cfg: TrainConfig, summary: dict) -> str:
    """The run's last line: each number with what it means (docs/results.md has them all)."""
    line = (
        f"run {run_id} finished: {summary['epochs_completed']} epochs, {summary['wall_time_s']:.0f} s; "
        f"tables under {cfg.results}\n"
        f"  accuracy {summary['final_acc']:.4f} (best {summary['best_acc']:.4f}; higher is better), "
        f"MIS {summary['mis']:.4f} (higher is more class-specific)"
    )
    if cfg.method == "csg":
        low, high = summary["l1_interval_low"], summary["l1_interval_high"]
        reached = inside_interval(summary["l1_density"], low, high)
        line += (f", L1-density {summary['l1_density']:.4f} {'inside' if reached else 'outside'} "
                 f"[1/C, g/(CK)] = [{low:.4g}, {high:.4g}] "
                 f"({'the gate reached its sparsity target' if reached else 'the gate is not yet as sparse as g asks'})")
    note = empty_classes_note(summary.get("classes_without_filters", []))
    return line + (f"\n  {note}" if note else "")


def timestamp() -> str:
    """Local time as every table records it (started_at, finished_at)."""
    return time.strftime("%Y-%m-%dT%H:%M:%S")
