"""The result store, and the tables' columns and types against docs/results.md."""
import pandas as pd
import pytest

from csg.config import TrainConfig
from csg.store.results import ResultStore
from csg.store.run_record import RUNS_SCHEMA
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
