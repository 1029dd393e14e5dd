"""cluster/local.sh and `ray job submit` end to end, loopback only."""
import subprocess
import sys
import time
import urllib.error
import urllib.request

import pandas as pd
import psutil
import pytest

from csg.store import checkpoint as ckpt_lib
from csg.testing.local_head import LocalHead, wait_for_job
from tests.helpers import REPO, make_imagefolder

LOOPBACK = {"127.0.0.1", "::1", "::ffff:127.0.0.1"}
pytestmark = pytest.mark.slow

TRAIN_ARGS = ["--preset", "digits-resnet20", "--workers", "1", "--batch-size", "128"]


@pytest.fixture(scope="module")
def local_head():
    """One head for this module's jobs, as cluster/local.sh starts it; 3 logical CPUs on this
    machine's 2 cores, so that three 1-worker jobs run at once."""
    with LocalHead(REPO, cpus=3) as head:
        yield head
    assert not head.processes(), "processes of the head outlived stop"


@pytest.mark.separate_ray
def test_jobs_at_once_on_one_results_root_all_finish_with_every_row_readable(local_head, tmp_path):
    """A `ray job submit` from a working dir (ImageFolder data), a job from the job API and a
    sweep, all at once on one results root."""
    env, dashboard = local_head.env, local_head.dashboard
    assert dashboard in local_head.banner and local_head.gcs_address in local_head.banner
    listening = {
        c.laddr.ip
        for p in local_head.processes()
        for c in p.net_connections(kind="inet") if c.status == psutil.CONN_LISTEN
    }
    assert listening and listening <= LOOPBACK, f"head listens beyond loopback: {listening}"
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(f"{dashboard}/api/jobs/", timeout=10)
    assert refused.value.code == 401, "the head serves a client that sends no token"

    client, results = local_head.jobs(), tmp_path / "results"
    tree = make_imagefolder(tmp_path / "tree")
    submit = subprocess.Popen(
        ["ray", "job", "submit", "--address", dashboard, "--working-dir", str(REPO), "--",
         "python", "jobs/train_imagenet.py", "--data", str(tree), "--workers", "1", "--epochs", "2",
         "--batch-size", "6", "--image-size", "32", "--g-density", "0.5", "--loader-workers", "0",
         "--results", str(results), "--run-id", "tree"],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    beside = [
        local_head.python_job(client, "train_cifar", [*TRAIN_ARGS, "--epochs", "2", "--run-id", "digits",
                                                      "--results", str(results)], f"digits-{tmp_path.name}"),
        local_head.python_job(client, "tune_cifar", ["--dataset", "digits", "--epochs", "2", "--batch-size", "128",
                                                     "--num-samples", "1", "--max-concurrent", "1", "--scheduler",
                                                     "none", "--sweep-id", "sw", "--results", str(results)],
                              f"sweep-{tmp_path.name}"),
    ]
    output, _ = submit.communicate(timeout=400)
    assert submit.returncode == 0 and "succeeded" in output, output[-3000:]
    for job in beside:
        assert wait_for_job(client, job, 400) == "SUCCEEDED", client.get_job_logs(job)[-2000:]

    runs = pd.read_parquet(results / "runs")
    assert len(runs) == 3 and set(runs["status"]) == {"finished"}
    tree_run = runs.set_index("run_id").loc["tree"]  # train_imagenet.py's preset on a tiny tree
    assert tree_run["dataset"] == "imagefolder" and tree_run["preset"] == "imagenet-resnet18"
    assert tree_run["model"] == "resnet18" and tree_run["num_filters"] == 512 and tree_run["batch_size"] == 6
    for table in ("epochs", "gates", "mi"):
        frame = pd.read_parquet(results / table)
        assert set(frame["run_id"].astype(str)) == set(runs["run_id"].astype(str)), table
    assert list(pd.read_parquet(results / "epochs", filters=[("run_id", "==", "tree")])["epoch"]) == [0, 1]
    assert len(pd.read_parquet(results / "tune")) == 1
    stray = [p for p in results.rglob("*") if p.is_file() and p.suffix == ".parquet" and p.name != "part-0.parquet"]
    assert not stray, f"half-written files: {stray}"


@pytest.mark.separate_ray
def test_ray_job_stop_records_interrupted_and_a_resubmit_resumes_each_epoch_once(local_head, tmp_path):
    client, results = local_head.jobs(), tmp_path / "results"
    args = [*TRAIN_ARGS, "--epochs", "6", "--run-id", "st", "--results", str(results)]
    job = local_head.python_job(client, "train_cifar", args, f"stop-{tmp_path.name}")
    part = results / "epochs" / "run_id=st" / "part-0.parquet"
    deadline = time.time() + 240
    # Three rows: an epoch's row is written before its checkpoint is registered, so waiting for
    # epoch 2 gives the first checkpoint a whole epoch to register before the stop.
    while not (part.exists() and len(pd.read_parquet(part)) >= 3):
        status = client.get_job_status(job).value
        assert time.time() < deadline and status in ("PENDING", "RUNNING"), client.get_job_logs(job)[-2000:]
        time.sleep(0.3)
    client.stop_job(job)
    assert wait_for_job(client, job, 120) == "STOPPED"
    row = pd.read_parquet(results / "runs").iloc[0]
    assert row["status"] == "interrupted", client.get_job_logs(job)[-2000:]
    assert "interrupted (SIGTERM)" in client.get_job_logs(job)
    kept = ckpt_lib.read(row["checkpoint"])["epoch"]  # intact: it loads
    assert 0 <= kept < len(pd.read_parquet(part)), kept

    again = local_head.python_job(client, "train_cifar", args, f"again-{tmp_path.name}")
    assert wait_for_job(client, again, 300) == "SUCCEEDED", client.get_job_logs(again)[-2000:]
    assert pd.read_parquet(results / "runs").iloc[0]["status"] == "finished"
    assert pd.read_parquet(results / "epochs")["epoch"].tolist() == list(range(6))


@pytest.mark.separate_ray
def test_soak_short_form_leaves_the_head_as_it_found_it(local_head, tmp_path):
    """bench/soak.py's short form on this module's head, after the jobs above (so the runs of
    a longer soak are those tests' jobs): a sweep with two trials at a time; no placement group,
    actor or worker process left behind, the head's memory within bound, every run's rows present."""
    soak = subprocess.run([sys.executable, str(REPO / "bench" / "soak.py"), "--attach", "--runs", "0",
                           "--trials", "2", "--results", str(tmp_path / "results")],
                          env=local_head.env, capture_output=True, text=True, timeout=600)
    assert soak.returncode == 0, soak.stdout[-3000:] + soak.stderr[-2000:]
    assert soak.stdout.strip().splitlines()[-1].endswith("; OK")
