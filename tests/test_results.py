"""The result store, and the tables' columns and types against docs/results.md."""
import numpy as np
import pandas as pd
import pyarrow as pa
import pytest

from csg.config import TrainConfig
from csg.store.results import ResultStore
from csg.store.run_record import RUNS_SCHEMA, write_epochs, write_run
from tests.helpers import documented_columns, written_columns


def test_rerun_replaces_rows_and_reader_sees_every_run(tmp_path):
    store = ResultStore(str(tmp_path))
    rows = pd.DataFrame({"class": [0, 1], "filter": [3, 4], "mi": [0.1, 0.2]})
    store.write("mi", "a", rows)
    store.write("mi", "b", rows)
    store.write("mi", "a", rows.iloc[:1])
    table = pd.read_parquet(tmp_path / "mi")
    assert sorted(table["run_id"].astype(str)) == ["a", "b", "b"]
    assert not list(tmp_path.rglob(".tmp-*"))


def test_write_refuses_wrong_columns_and_keeps_old_rows(tmp_path):
    store = ResultStore(str(tmp_path))
    store.write("gates", "a", pd.DataFrame({"class": [0], "filter": [0], "value": [1.0]}))
    with pytest.raises(KeyError):
        store.write("gates", "a", pd.DataFrame({"klass": [0]}))
    assert len(store.read("gates", "a")) == 1


@pytest.mark.parametrize("table", ["epochs", "gates", "mi", "runs"])
@pytest.mark.slow
def test_tables_have_the_documented_columns_and_types(digits_run, table):
    results, _ = digits_run
    documented = documented_columns(table)
    actual = written_columns(results, table)
    if table == "runs":
        options = [f for f in RUNS_SCHEMA.names if f in TrainConfig.__dataclass_fields__]
        assert list(actual)[: len(options)] == options
        actual = {k: v for k, v in actual.items() if k not in options}
    assert actual == documented
    assert "run_id" in pd.read_parquet(results / table).columns


def test_a_read_while_the_run_rewrites_its_rows_sees_one_version(tmp_path):
    """A run rewrites its epochs every epoch while drivers poll them; a read opening the part
    file twice once met two versions of it ("Page was smaller than expected")."""
    import threading

    store = ResultStore(str(tmp_path))
    schema = pa.schema([("epoch", pa.int64()), ("x", pa.float64())])
    store.write("t", "r", pd.DataFrame({"epoch": [0], "x": [0.0]}), schema)
    stop = threading.Event()

    def rewrite():
        n = 1
        while not stop.is_set():
            store.write("t", "r", pd.DataFrame({"epoch": range(n), "x": np.random.rand(n)}), schema)
            n = n % 50 + 1

    writer = threading.Thread(target=rewrite)
    writer.start()
    try:
        lengths = [len(store.read("t", "r")) for _ in range(300)]
    finally:
        stop.set()
        writer.join()
    assert set(lengths) <= set(range(1, 51)) and len(set(lengths)) > 1


@pytest.mark.parametrize("dataset, null", [("digits", {"data", "image_size", "augment", "skip_bad_images"}),
                                           ("cifar10", {"image_size", "augment", "skip_bad_images"}),
                                           ("imagefolder", set())])
def test_a_run_records_the_data_options_its_data_set_ignores_as_null(dataset, null, tmp_path):
    store = ResultStore(str(tmp_path))
    write_run(store, "r", TrainConfig(dataset=dataset, data="/d", image_size=64, augment="crop"), {"status": "x"})
    row = store.read("runs", "r").iloc[0]
    assert {name for name in ("data", "image_size", "augment", "skip_bad_images") if pd.isna(row[name])} == null
    assert row["epochs"] == TrainConfig().epochs  # the options every data set reads stay


def test_rows_from_a_checkpoint_of_an_earlier_version_keep_a_null_data_wait(tmp_path):
    """A run resumed from a checkpoint written before the `data_wait` column: its old rows say
    nothing about the wait, the new ones do."""
    old = {"epoch": 0, "path": "std", "lr_std": 0.1, "lr_csg": 0.1, "loss_total": 1.0, "loss_ce_std": 1.0,
           "loss_ce_csg": float("nan"), "loss_sparsity": float("nan"), "train_acc": 0.5, "test_acc": 0.5,
           "l1_density": 1.0, "epoch_time_s": 2.0, "skipped_images": 0}
    store = ResultStore(str(tmp_path))
    write_epochs(store, "r", [old, {**old, "epoch": 1, "data_wait": 0.25}])
    waits = store.read("epochs", "r")["data_wait"].tolist()
    assert np.isnan(waits[0]) and waits[1] == 0.25
