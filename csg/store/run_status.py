"""The true state of every run under a results root, and a check of every part file.

A `runs` row says `running` from the moment its driver starts; only the run's lease (csg.store.lease)
tells a live driver from one killed outright. So the state shown here is the row's status,
except: `running` with a fresh heartbeat is running, `running` without one is `stale` (its
driver died; rerunning its id resumes it and rewrites the row).
"""
from __future__ import annotations

import math
import time

import pandas as pd
import pyarrow.parquet as pq
from pyarrow import fs as pafs

from csg.store import checkpoint as ckpt_lib
from csg.store import lease as lease_lib
from csg.store.results import ResultStore, first_line

COLUMNS = ["run_id", "state", "epoch", "epochs", "heartbeat_age_s", "checkpoint", "started_at", "finished_at"]


def part_files(store: ResultStore) -> list[str]:
    """Every table's part files: <root>/<table>/run_id=<id>/part-0.parquet."""
    entries = store.fs.get_file_info(pafs.FileSelector(store.base, recursive=True, allow_not_found=True))
    return sorted(e.path for e in entries if e.type == pafs.FileType.File and e.base_name == "part-0.parquet"
                  and not e.path[len(store.base):].lstrip("/").startswith(("_", ".", "checkpoints/")))


def unreadable_parts(store: ResultStore) -> dict[str, str]:
    """{path: reason} for each part file that does not read back whole (truncated, overwritten)."""
    bad = {}
    for path in part_files(store):
        try:
            pq.read_table(path, filesystem=store.fs)
        except Exception as exc:  # pyarrow raises ArrowInvalid, OSError or ArrowException subclasses
            bad[path] = first_line(exc)
    return bad


def run_states(store: ResultStore, now: float | None = None) -> pd.DataFrame:
    """One row per run: its state, last epoch, heartbeat age and latest checkpoint. Runs whose
    `runs` part file cannot be read are left out (unreadable_parts names them)."""
    now = now or time.time()
    leases = lease_lib.read_all(store)
    rows = []
    for run_id in _run_ids(store):
        try:
            run = store.read("runs", run_id).iloc[0]
        except Exception:  # noqa: BLE001 - reported by unreadable_parts, not here
            continue
        lease = leases.get(run_id)
        fresh = lease is not None and lease_lib.is_fresh(lease, now)
        state = "running" if fresh else ("stale" if run["status"] == "running" else run["status"])
        storage = run["storage"] if pd.notna(run["storage"]) else f"{store.root.rstrip('/')}/checkpoints"
        latest = ckpt_lib.latest_registered(storage, run_id)
        rows.append({
            "run_id": run_id, "state": state, "epoch": _last_epoch(store, run_id), "epochs": run["epochs"],
            "heartbeat_age_s": round(now - lease["heartbeat"], 1) if lease else math.nan,
            "checkpoint": latest[0] if latest else None,
            "started_at": run["started_at"], "finished_at": run["finished_at"],
        })
    return pd.DataFrame(rows, columns=COLUMNS)


def _run_ids(store: ResultStore) -> list[str]:
    entries = store.fs.get_file_info(pafs.FileSelector(store.table_path("runs"), allow_not_found=True))
    return sorted(e.base_name.split("=", 1)[1] for e in entries
                  if e.type == pafs.FileType.Directory and e.base_name.startswith("run_id="))


def _last_epoch(store: ResultStore, run_id: str) -> int | None:
    try:
        epochs = store.read("epochs", run_id)["epoch"]
    except Exception:  # noqa: BLE001 - none yet, or unreadable (reported by unreadable_parts)
        return None
    return int(epochs.max()) if len(epochs) else None
