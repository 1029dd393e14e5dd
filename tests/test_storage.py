"""Results and checkpoints on pyarrow filesystem URIs; paths that would lose results."""
import pandas as pd
import pytest

from tests.helpers import job_main


@pytest.mark.timeout(240)  # the fast tier's one Ray run (tests/conftest.py: FAST_RAY_TESTS)
def test_results_root_may_be_a_filesystem_uri(ray_local, tmp_path):
    uri = f"file://{tmp_path}/shared"
    row = job_main("train_cifar")(["--preset", "digits-resnet20", "--epochs", "1", "--results", uri])
    assert row["status"] == "finished"
    assert len(pd.read_parquet(f"{uri}/epochs")) == 1
    assert row["checkpoint"].startswith(str(tmp_path / "shared" / "checkpoints"))


def test_relative_results_inside_a_ray_job_is_refused_before_writing(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("RAY_ADDRESS", "127.0.0.1:1")  # as under `ray job submit`; never reached
    with pytest.raises(SystemExit) as exit_info:
        job_main("train_cifar")(["--preset", "digits-resnet20", "--epochs", "1", "--results", "results"])
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and len(err.strip().splitlines()) == 1
    assert "--results: relative path 'results' inside a Ray job" in err
    assert not (tmp_path / "results").exists()
