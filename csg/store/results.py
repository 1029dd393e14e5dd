"""The Parquet result store: one file per run per table, hive-partitioned by run id.

    <root>/<table>/run_id=<id>/part-0.parquet

`pd.read_parquet("<root>/<table>")` returns every run (with `run_id` as a categorical
column restored from the directory name). Writes go to a temporary name and are renamed
into place, so a reader never sees half a file and a rerun of the same id replaces rows
instead of duplicating them. The root may be a local path or a pyarrow filesystem URI.
"""
from __future__ import annotations

import uuid

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
from pyarrow import fs as pafs

# The tables the library writes; every table but `runs` has a fixed schema (`runs` is one row of
# config + summary fields). The analyses register theirs with `register_schemas`.
SCHEMAS: dict[str, pa.Schema] = {
    "epochs": pa.schema(
        [
            ("epoch", pa.int64()),
            ("path", pa.string()),
            ("lr_std", pa.float64()),
            ("lr_csg", pa.float64()),
            ("loss_total", pa.float64()),
            ("loss_ce_std", pa.float64()),
            ("loss_ce_csg", pa.float64()),
            ("loss_sparsity", pa.float64()),
            ("train_acc", pa.float64()),
            ("test_acc", pa.float64()),
            ("l1_density", pa.float64()),
            ("epoch_time_s", pa.float64()),
            ("data_wait", pa.float64()),
            ("skipped_images", pa.int64()),
        ]
    ),
    "gates": pa.schema(
        [("class", pa.int64()), ("filter", pa.int64()), ("value", pa.float64())]
    ),
    "mi": pa.schema([("class", pa.int64()), ("filter", pa.int64()), ("mi", pa.float64())]),
    "tune": pa.schema(
        [
            ("sweep_id", pa.string()),
            ("trial_id", pa.string()),
            ("period", pa.int64()),
            ("csg_epochs", pa.int64()),
            ("lambda1", pa.float64()),
            ("lambda2", pa.float64()),
            ("g_density", pa.float64()),
            ("psi", pa.string()),
            ("seed", pa.int64()),
            ("final_acc", pa.float64()),
            ("best_acc", pa.float64()),
            ("mis", pa.float64()),
            ("l1_density", pa.float64()),
            ("inside_interval", pa.bool_()),
            ("best_epoch", pa.int64()),
            ("epochs_completed", pa.int64()),
            ("stop_reason", pa.string()),
        ]
    ),
}

def register_schemas(schemas: dict[str, pa.Schema]) -> dict[str, pa.Schema]:
    """Make `write` validate more tables (an analysis module registers the tables it writes
    when it is imported); a name registered again must come with the same schema."""
    for table, schema in schemas.items():
        if not SCHEMAS.setdefault(table, schema).equals(schema):
            raise ValueError(f"table {table!r} is registered already with another schema")
    return schemas


RUN_SUMMARY_SCHEMA = pa.schema(
    [
        ("status", pa.string()),
        ("num_filters", pa.int64()),
        ("epochs_completed", pa.int64()),
        ("final_acc", pa.float64()),
        ("best_acc", pa.float64()),
        ("best_epoch", pa.int64()),
        ("mis", pa.float64()),
        ("l1_density", pa.float64()),
        ("l1_interval_low", pa.float64()),
        ("l1_interval_high", pa.float64()),
        ("g", pa.float64()),
        ("wall_time_s", pa.float64()),
        ("checkpoint", pa.string()),
        ("best_checkpoint", pa.string()),
        ("started_at", pa.string()),
        ("finished_at", pa.string()),
        ("versions", pa.string()),
    ]
)


def filesystem_of(root: str) -> tuple[pafs.FileSystem, str]:
    if "://" in root:
        return pafs.FileSystem.from_uri(root)
    return pafs.LocalFileSystem(), str(pafs.LocalFileSystem().normalize_path(_absolute(root)))


def _absolute(path: str) -> str:
    from pathlib import Path

    return str(Path(path).absolute())


class StoreError(OSError):
    """A write the results root refused (read-only, full, gone); the message is one line."""


class ResultStore:
    def __init__(self, root: str):
        self.root = root
        self.fs, self.base = filesystem_of(root)

    def table_path(self, table: str) -> str:
        return f"{self.base}/{table}"

    def write(self, table: str, run_id: str, frame: pd.DataFrame, schema: pa.Schema | None = None):
        """Replace the rows of `run_id` in `table` atomically. A write that fails (a full or
        read-only root) leaves the previous part file as it was and no temporary file behind."""
        schema = schema or SCHEMAS.get(table)
        if schema is None:
            raise KeyError(f"no schema for table {table!r}: pass one, or register it with register_schemas")
        arrow = pa.Table.from_pandas(frame.drop(columns="run_id", errors="ignore"),
                                     schema=schema, preserve_index=False)
        folder = f"{self.table_path(table)}/run_id={run_id}"
        tmp = f"{folder}/.tmp-{uuid.uuid4().hex}.parquet"
        try:
            self.fs.create_dir(folder, recursive=True)
            pq.write_table(arrow, tmp, filesystem=self.fs)
            self.fs.move(tmp, f"{folder}/part-0.parquet")
        except OSError as exc:
            self._discard(tmp)
            raise StoreError(f"cannot write table {table} of run {run_id} under {self.root}: {first_line(exc)}; "
                             f"rows written before are intact") from exc

    def _discard(self, path: str) -> None:
        try:
            self.fs.delete_file(path)
        except OSError:
            pass  # never created, or the root refuses even this: readers skip dot files anyway

    def read(self, table: str, run_id: str | None = None) -> pd.DataFrame:
        """One run's rows, or the whole table. A run's part file may be replaced while it is read
        (a run rewrites its epochs every epoch): it is opened once, so the read sees one version."""
        path = self.table_path(table)
        if run_id is not None:
            with self.fs.open_input_file(f"{path}/run_id={run_id}/part-0.parquet") as file:
                frame = pq.read_table(file).to_pandas()
            frame.insert(0, "run_id", run_id)
            return frame
        return pq.read_table(path, filesystem=self.fs, partitioning="hive").to_pandas()

    def has_table(self, table: str) -> bool:
        return self.fs.get_file_info(self.table_path(table)).type == pafs.FileType.Directory

    def exists(self, table: str, run_id: str) -> bool:
        info = self.fs.get_file_info(f"{self.table_path(table)}/run_id={run_id}/part-0.parquet")
        return info.type == pafs.FileType.File


def first_line(exc: BaseException) -> str:
    """An OS error as its reason alone (pyarrow repeats the errno in a second line)."""
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0]


def schema_of_dataclass(cls) -> pa.Schema:
    """Arrow schema for a config dataclass: its fields become `runs` columns, nullable."""
    import dataclasses
    import typing

    arrow_of = {str: pa.string(), int: pa.int64(), float: pa.float64(), bool: pa.bool_()}
    hints = typing.get_type_hints(cls)
    fields = []
    for f in dataclasses.fields(cls):
        hint = hints[f.name]
        base = next((t for t in typing.get_args(hint) if t is not type(None)), hint)
        fields.append((f.name, arrow_of[base]))
    return pa.schema(fields)
