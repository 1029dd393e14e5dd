"""Ray Tune sweeps: trials as training runs, the `tune` table, the Pareto front, and resume."""
import os
import signal
import subprocess
import sys
import time
from types import SimpleNamespace

import pandas as pd
import pytest

from analysis.sweep_front import pareto_front
from csg.config import TrainConfig
from csg.distributed.ray_train import scaling_config
from csg.distributed.sweeps import STOP_REASONS, SearchSpace, run_trial, trial_config
from csg.store import run_record
from csg.store.results import ResultStore
from tests.helpers import README_SWEEP_TRIALS, REPO, documented_columns, job_main, written_columns

SWEEP_ARGS = ["--dataset", "digits", "--epochs", "2", "--batch-size", "64"]


@pytest.mark.slow
def test_the_readme_sweep_writes_a_row_per_trial_and_every_run_table(readme_runs):
    """The README's sweep (2 trials here, both at once, of 2 epochs), run by the `readme_runs`
    fixture beside the README's other commands."""
    folder, printed = readme_runs
    results = folder / "results"
    out = next(text for command, text in printed.items() if command.startswith("python jobs/tune_cifar.py"))
    count = README_SWEEP_TRIALS
    assert out.count(" started: period=") == count and out.count(f"/{count} done)") == count  # a line per event
    assert "Trial status" not in out and "epoch 1/" not in out  # no Tune table, no per-run progress
    tune = pd.read_parquet(results / "tune")
    assert len(tune) == count and set(tune["stop_reason"]) <= set(STOP_REASONS)
    configs = tune[["period", "csg_epochs", "lambda1", "lambda2", "g_density"]].apply(tuple, axis=1)
    assert configs.nunique() == count
    assert (tune["csg_epochs"] <= tune["period"]).all()
    assert tune["g_density"].between(0.1, 0.4).all()  # the default range [1/C, 4/C]
    trials = set(tune["run_id"].astype(str))
    for table in ("runs", "epochs", "gates", "mi"):  # the root also holds the README's trainings
        assert trials <= set(pd.read_parquet(results / table)["run_id"].astype(str)), table
    runs = pd.read_parquet(results / "runs").set_index("run_id").loc[sorted(trials)]
    assert set(runs["status"]) <= {"finished", "stopped"}
    assert tune["mis"].notna().all() and tune["final_acc"].notna().all()
    frame = tune.set_index("run_id")
    front = pareto_front(frame)
    assert front["mis"].is_monotonic_increasing and set(front.index) <= set(frame.index)

    def beats(a, b):
        return a["mis"] >= b["mis"] and a["final_acc"] >= b["final_acc"] and tuple(a) != tuple(b)

    scores = frame[["mis", "final_acc"]]
    for index, row in scores.iterrows():  # on the front: no trial beats it; off it: a front trial does
        if index in front.index:
            assert not any(beats(other, row) for _, other in scores.iterrows()), scores
        else:
            assert any(beats(other, row) for _, other in scores.loc[front.index].iterrows()), scores
    assert (results / "figures" / f"tune_{tune['sweep_id'].iloc[0]}.png").is_file()
    assert written_columns(results, "tune") == documented_columns("tune")


def test_pareto_front_keeps_rows_no_other_row_beats_on_both():
    frame = pd.DataFrame({"mis": [0.1, 0.2, 0.3, 0.2, 0.05], "final_acc": [0.9, 0.8, 0.5, 0.7, 0.95]})
    assert pareto_front(frame).index.tolist() == [4, 0, 1, 2]


def test_trial_workers_share_the_trial_gpus():
    cfg = trial_config(TrainConfig(method="std"), workers=2, gpus=1)
    assert (cfg.method, cfg.workers, cfg.gpu, cfg.gpus_per_worker) == ("csg", 2, True, 0.5)
    scaling = scaling_config(cfg)
    assert scaling.num_workers == 2 and scaling.use_gpu and scaling.resources_per_worker == {"CPU": 1, "GPU": 0.5}
    assert not scaling_config(trial_config(TrainConfig(), workers=2, gpus=0)).use_gpu


def test_a_worker_asks_for_its_cpus():
    scaling = scaling_config(TrainConfig(workers=1, cpus_per_worker=2))
    assert scaling.num_workers == 1 and not scaling.use_gpu and scaling.resources_per_worker == {"CPU": 2}


def test_search_space_pairs_csg_epochs_with_periods_that_allow_them():
    assert SearchSpace(period=(1, 3), csg_epochs=(1, 2)).schedules() == [(1, 1), (3, 1), (3, 2)]


@pytest.mark.parametrize("args, message", [
    (["--g-density", "0.01", "0.2"], "--g-density: must lie in"),
    (["--csg-epochs", "5", "--period", "2", "3"], "--csg-epochs: every value exceeds"),
    (["--lambda2", "1", "2", "3"], "expected one value or LOW HIGH"),
    (["--resume"], "--resume: needs --sweep-id"),
    (["--resume", "--sweep-id", "nothing-here"], "--resume: no sweep 'nothing-here'"),
])
def test_bad_sweep_options_are_one_line_errors(tmp_path, capsys, args, message):
    with pytest.raises(SystemExit) as exit_info:
        job_main("tune_cifar")([*SWEEP_ARGS, "--results", str(tmp_path), *args])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert message in err and "\n" not in err
    assert not (tmp_path / "tune").exists()


def test_a_sweep_id_in_use_is_refused_without_resume(tmp_path, capsys):
    (tmp_path / "checkpoints").mkdir()
    (tmp_path / "checkpoints" / "taken.csg-sweep.json").write_text("{}")
    with pytest.raises(SystemExit):
        job_main("tune_cifar")([*SWEEP_ARGS, "--results", str(tmp_path), "--sweep-id", "taken"])
    assert "sweep 'taken' exists" in capsys.readouterr().err


@pytest.mark.parametrize("status, trains", [("finished", False), ("running", True), ("interrupted", True)])
def test_a_resumed_trial_trains_only_when_its_run_has_not_finished(tmp_path, monkeypatch, status, trains):
    """A Ctrl-C that lands after a trial's run wrote its `finished` row, but before Tune heard,
    leaves the trial unfinished in the sweep's state: resumed, it must not train again."""
    import ray.tune.integration.ray_train
    from ray import tune

    import csg.distributed.driver

    cfg = TrainConfig(dataset="digits", results=str(tmp_path))
    run_record.write_run(ResultStore(cfg.results), "s-t1", cfg,
                         {"status": status, "epochs_completed": 3, "final_acc": 0.75})
    calls, reported = [], []
    monkeypatch.setattr(tune, "get_context", lambda: SimpleNamespace(get_trial_id=lambda: "t1"))
    monkeypatch.setattr(tune, "report", reported.append)
    monkeypatch.setattr(ray.tune.integration.ray_train, "TuneReportCallback", lambda: "report to Tune")
    monkeypatch.setattr(csg.distributed.driver, "train", lambda cfg, info, run_id, *a, **k: calls.append(run_id))
    run_trial({"lambda1": 1.0}, cfg.to_dict(), "s")
    assert calls == (["s-t1"] if trains else [])
    assert reported == ([] if trains else [{"epoch": 2, "test_acc": 0.75}])  # the metric Tune checks


@pytest.mark.slow
@pytest.mark.separate_ray
def test_resume_after_an_interruption_does_not_rerun_finished_trials(tmp_path):
    """Two trials one at a time: the sweep is stopped once the first has finished, while the
    second runs; the resume trains the second alone."""
    command = [sys.executable, str(REPO / "jobs" / "tune_cifar.py"), "--dataset", "digits", "--epochs", "1",
               "--batch-size", "128", "--num-samples", "2",
               "--max-concurrent", "1", "--scheduler", "none", "--sweep-id", "s", "--results", str(tmp_path)]
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    sweep = subprocess.Popen(command, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    finished = _wait_for_a_finished_run(tmp_path, sweep, timeout=240)
    sweep.send_signal(signal.SIGINT)  # Ctrl-C: Tune saves the sweep's state and stops
    output, _ = sweep.communicate(timeout=120)
    first = pd.read_parquet(tmp_path / "tune")
    assert "interrupted" in set(first["stop_reason"]), output[-2000:]
    before = {run: _run_files(tmp_path, run) for run in finished}

    resumed = subprocess.run([*command, "--resume"], cwd=REPO, env=env, capture_output=True, text=True, timeout=400)
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    tune = pd.read_parquet(tmp_path / "tune")
    assert len(tune) == 2 and set(tune["stop_reason"]) == {"completed"}
    for run in finished:  # neither trained again nor rewritten
        assert _run_files(tmp_path, run) == before[run]


def _wait_for_a_finished_run(results, process, timeout):
    deadline = time.time() + timeout
    while time.time() < deadline:
        assert process.poll() is None, process.stdout.read()[-3000:]
        if any((results / "runs").rglob("part-0.parquet")):  # the folder appears before its first file
            runs = pd.read_parquet(results / "runs")
            done = runs.loc[runs["status"] == "finished", "run_id"].astype(str).tolist()
            if done:
                return done
        time.sleep(1)
    process.kill()
    raise AssertionError("no trial finished in time")


def _run_files(results, run_id):
    return {table: os.stat(results / table / f"run_id={run_id}" / "part-0.parquet").st_mtime_ns
            for table in ("runs", "epochs", "mi", "gates")}
