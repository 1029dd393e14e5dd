"""The README's commands that need no data set, run as written from an empty working directory:
the digits and digits-scenes trainings, a sweep, `--help`, the attach one-liner, and the
status and pandas lines that read what they wrote. A job runs in this process on the session
Ray (its flags parsed exactly as the shell would pass them); a `python -c` line runs as a
process. Only the length of a run is cut (`SHORTER`), never a flag the README gives."""
import contextlib
import io
import os
import re
import shlex
import subprocess
import sys

import pandas as pd
import pytest

from tests.helpers import REPO, job_main

README = (REPO / "README.md").read_text()
COMMANDS = [re.split(r"\s+#", line)[0].strip() for line in re.findall(r"^    (python .+)$", README, flags=re.M)]
NEEDS_NO_DATA = re.compile(r"--(dataset|preset) digits|--help|jobs/status\.py --results results$|"
                           r"read_parquet\('results/runs'\)|csg\.attach")
# Appended to the commands that train for minutes: the same flags, fewer epochs and trials.
SHORTER = {"train_cifar": ["--epochs", "1"], "tune_cifar": ["--epochs", "1", "--num-samples", "1"]}


def runnable() -> list[str]:
    return [command for command in COMMANDS if NEEDS_NO_DATA.search(command) and "quickstart" not in command]


def test_the_readme_names_the_commands_this_test_runs():
    jobs = [shlex.split(command)[1] for command in runnable() if command.startswith("python jobs/")]
    assert {"jobs/train_cifar.py", "jobs/tune_cifar.py", "jobs/status.py"} <= set(jobs), runnable()
    assert any("read_parquet('results/runs')" in command for command in runnable())


@pytest.mark.slow
@pytest.mark.timeout(480)
def test_the_readme_commands_that_need_no_data_run_as_written(ray_local, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    printed = {}
    for command in sorted(runnable(), key=reads_the_runs):  # the trainings first, then what lists them
        words = shlex.split(command)
        if words[1] == "-c":
            done = subprocess.run([sys.executable, *words[1:]], capture_output=True, text=True, timeout=120, env=env)
            assert done.returncode == 0, f"{command}\n{done.stderr[-2000:]}"
            printed[command] = done.stdout
            continue
        name = words[1].removeprefix("jobs/").removesuffix(".py")
        printed[command] = run_job(name, words[2:] if "--help" in words else [*words[2:], *SHORTER.get(name, [])])

    runs = pd.read_parquet(tmp_path / "results" / "runs")
    trainings = [c for c in runnable() if c.startswith("python jobs/train_cifar.py") and "--help" not in c]
    assert len(runs) == len(trainings) + 1 and set(runs["status"]) == {"finished"}  # + the sweep's trial
    status = next(out for command, out in printed.items() if "jobs/status.py" in command)
    assert all(run_id in status for run_id in runs["run_id"].astype(str))
    listing = next(out for command, out in printed.items() if "read_parquet" in command)
    assert listing.count("finished") == len(runs)
    helped = next(out for command, out in printed.items() if "--help" in command)
    assert "imagefolder-resnet18" in helped and "(default: 60)" in helped


def reads_the_runs(command: str) -> bool:
    return "jobs/status.py" in command or "read_parquet" in command


def run_job(name: str, argv: list[str]) -> str:
    """A job's stdout; `--help` must exit 0, any other run return."""
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        if "--help" not in argv:
            job_main(name)(argv)
            return out.getvalue()
        with pytest.raises(SystemExit) as exit_info:
            job_main(name)(argv)
    assert exit_info.value.code == 0
    return out.getvalue()
