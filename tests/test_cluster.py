"""cluster/local.sh and `ray job submit` end to end, loopback only."""
import os
import shutil
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

import pandas as pd
import psutil
import pytest

from tests.helpers import REPO, make_imagefolder

LOOPBACK = {"127.0.0.1", "::1", "::ffff:127.0.0.1"}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def local_head():
    # A short temp dir: Ray's unix socket paths must stay under ~107 characters.
    temp = Path(tempfile.mkdtemp(prefix="csg-head-", dir="/tmp"))
    env = {
        **os.environ,
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
        "CSG_RAY_TEMP": str(temp / "ray"),
        "CSG_RAY_PORT": str(_free_port()),
        "CSG_RAY_DASHBOARD_PORT": str(_free_port()),
        "CSG_RAY_CLIENT_PORT": str(_free_port()),
        "CSG_RAY_AGENT_PORT": str(_free_port()),
        "CSG_RAY_CPUS": "2",
    }
    env.pop("RAY_ADDRESS", None)
    script = str(REPO / "cluster" / "local.sh")
    started = subprocess.run(["bash", script, "start"], env=env, capture_output=True, text=True, timeout=120)
    assert started.returncode == 0, started.stderr
    try:
        yield env, started.stdout
    finally:
        stopped = subprocess.run(["bash", script, "stop"], env=env, capture_output=True, text=True, timeout=60)
        assert stopped.returncode == 0, stopped.stderr
        assert not _head_processes(env["CSG_RAY_TEMP"]), "processes of the head outlived stop"
        shutil.rmtree(temp, ignore_errors=True)


def _head_processes(temp_dir: str) -> list[psutil.Process]:
    """Live processes of the head; a zombie has exited already (its parent has yet to reap it)."""
    roots = [p for p in psutil.process_iter(["cmdline", "status"])
             if temp_dir in " ".join(p.info["cmdline"] or []) and p.info["status"] != psutil.STATUS_ZOMBIE]
    children = [c for p in roots for c in p.children(recursive=True)]
    return roots + [c for c in children if _alive(c)]


def _alive(process: psutil.Process) -> bool:
    try:
        return process.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


@pytest.mark.separate_ray
def test_job_submit_trains_on_an_imagefolder_tree(local_head, tmp_path):
    env, banner = local_head
    dashboard = f"http://127.0.0.1:{env['CSG_RAY_DASHBOARD_PORT']}"
    assert dashboard in banner and f"127.0.0.1:{env['CSG_RAY_PORT']}" in banner
    listening = {
        c.laddr.ip
        for p in _head_processes(env["CSG_RAY_TEMP"])
        for c in p.net_connections(kind="inet") if c.status == psutil.CONN_LISTEN
    }
    assert listening and listening <= LOOPBACK, f"head listens beyond loopback: {listening}"

    tree = make_imagefolder(tmp_path / "tree")
    results = tmp_path / "results"
    submit = subprocess.run(
        ["ray", "job", "submit", "--address", dashboard, "--working-dir", str(REPO), "--",
         "python", "jobs/train_imagenet.py", "--data", str(tree), "--workers", "2", "--epochs", "2",
         "--batch-size", "6", "--image-size", "32", "--g-density", "0.5", "--loader-workers", "0",
         "--results", str(results)],
        env={**env, "RAY_AUTH_MODE": "token"}, capture_output=True, text=True, timeout=170,
    )
    assert submit.returncode == 0, submit.stdout[-3000:] + submit.stderr[-2000:]
    assert "succeeded" in submit.stdout + submit.stderr
    runs = pd.read_parquet(results / "runs")
    assert runs.loc[0, "status"] == "finished" and runs.loc[0, "workers"] == 2
    assert list(pd.read_parquet(results / "epochs")["epoch"]) == [0, 1]
