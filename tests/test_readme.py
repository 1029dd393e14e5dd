"""The README's commands that need no data set, run as written from an empty working directory:
the digits and digits-scenes trainings, a sweep, `--help`, the attach one-liner, and the
status and pandas lines that read what they wrote (the session fixture `readme_runs` runs
them; tests/helpers.py says how). Only the length of a run is cut, never a flag the README gives."""
import shlex

import pandas as pd
import pytest

from tests.helpers import README_SWEEP_TRIALS, readme_commands_without_data


def test_the_readme_names_the_commands_this_test_runs():
    commands = readme_commands_without_data()
    jobs = [shlex.split(command)[1] for command in commands if command.startswith("python jobs/")]
    assert {"jobs/train_cifar.py", "jobs/tune_cifar.py", "jobs/status.py"} <= set(jobs), commands
    assert any("read_parquet('results/runs')" in command for command in commands)


@pytest.mark.slow
@pytest.mark.timeout(480)
def test_the_readme_commands_that_need_no_data_run_as_written(readme_runs):
    folder, printed = readme_runs
    runs = pd.read_parquet(folder / "results" / "runs")
    trainings = [c for c in printed if c.startswith("python jobs/train_cifar.py") and "--help" not in c]
    # + the sweep's trials, which ASHA may have stopped early
    assert len(runs) == len(trainings) + README_SWEEP_TRIALS
    assert set(runs["status"]) <= {"finished", "stopped"} and "finished" in set(runs["status"])
    status = next(out for command, out in printed.items() if "jobs/status.py" in command)
    assert all(run_id in status for run_id in runs["run_id"].astype(str))
    listing = next(out for command, out in printed.items() if "read_parquet" in command)
    assert listing.count("finished") + listing.count("stopped") == len(runs)
    helped = next(out for command, out in printed.items() if "--help" in command)
    assert "imagefolder-resnet18" in helped and "(default: 60)" in helped
