"""A loopback Ray head from a checkout's cluster/local.sh on free ports, for the soak benchmark
and the tests: start it, submit jobs to it, look at its processes, stop it. It runs a checkout's
scripts, so its caller names the checkout (an installed package has no cluster/ or jobs/)."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil

from csg.distributed.cluster import free_port

TERMINAL = {"SUCCEEDED", "FAILED", "STOPPED"}


class LocalHead:
    """`with LocalHead(checkout, cpus=2) as head:` a head of its own (temp dir, ports), stopped
    on exit. `LocalHead(checkout, env=os.environ)` stands for the head cluster/local.sh started with the
    CSG_RAY_* settings in `env`, without starting or stopping it."""

    def __init__(self, checkout: Path, cpus: int = 2, env: dict | None = None):
        self.checkout = Path(checkout)
        if not (self.checkout / "cluster" / "local.sh").is_file():
            raise FileNotFoundError(f"no cluster/local.sh in {self.checkout}: LocalHead needs a csg-ray checkout")
        if env is not None:
            self.env = {**env, "RAY_AUTH_MODE": "token"}
            return
        # A short temp dir: Ray's unix socket paths must stay under ~107 characters.
        folder = Path(tempfile.mkdtemp(prefix="csg-head-", dir="/tmp"))
        self.env = {
            **os.environ,
            "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
            "CSG_RAY_TEMP": str(folder / "ray"),
            "CSG_RAY_PORT": str(free_port()),
            "CSG_RAY_DASHBOARD_PORT": str(free_port()),
            "CSG_RAY_CLIENT_PORT": str(free_port()),
            "CSG_RAY_AGENT_PORT": str(free_port()),
            "CSG_RAY_CPUS": str(cpus),
            "RAY_AUTH_MODE": "token",
        }
        self.env.pop("RAY_ADDRESS", None)
        self.banner = ""

    @property
    def dashboard(self) -> str:
        return f"http://127.0.0.1:{self.env['CSG_RAY_DASHBOARD_PORT']}"

    @property
    def gcs_address(self) -> str:
        return f"127.0.0.1:{self.env['CSG_RAY_PORT']}"

    def __enter__(self) -> LocalHead:
        started = self._script("start", timeout=120)
        if started.returncode != 0:
            raise RuntimeError(f"cluster/local.sh start failed: {started.stderr.strip()[-500:]}")
        self.banner = started.stdout
        return self

    def __exit__(self, *exc) -> None:
        stopped = self._script("stop", timeout=60)
        shutil.rmtree(Path(self.env["CSG_RAY_TEMP"]).parent, ignore_errors=True)
        if stopped.returncode != 0:
            raise RuntimeError(f"cluster/local.sh stop failed: {stopped.stderr.strip()[-500:]}")

    def _script(self, command: str, timeout: float) -> subprocess.CompletedProcess:
        return subprocess.run(["bash", str(self.checkout / "cluster" / "local.sh"), command], env=self.env, capture_output=True, text=True,
                              timeout=timeout)

    def processes(self) -> list[psutil.Process]:
        """Live processes of the head and everything they started (workers, job drivers)."""
        temp = self.env["CSG_RAY_TEMP"]
        roots = [p for p in psutil.process_iter(["cmdline", "status"])
                 if temp in " ".join(p.info["cmdline"] or []) and p.info["status"] != psutil.STATUS_ZOMBIE]
        found = {p.pid: p for p in roots}
        for root in roots:
            try:
                found.update({c.pid: c for c in root.children(recursive=True) if _alive(c)})
            except psutil.NoSuchProcess:
                continue
        return list(found.values())

    def jobs(self):
        """A JobSubmissionClient for this head, with the token the head authenticates by
        (`ray start` keeps it in ~/.ray/auth_token); a process whose Ray config was read
        before RAY_AUTH_MODE=token would otherwise send none."""
        from ray.job_submission import JobSubmissionClient

        token = os.environ.get("RAY_AUTH_TOKEN") or (Path.home() / ".ray" / "auth_token").read_text().strip()
        return JobSubmissionClient(self.dashboard, headers={"authorization": f"Bearer {token}"})

    def python_job(self, client, script: str, args: list[str], submission_id: str) -> str:
        """Submit `python jobs/<script>.py ARGS` to run from this checkout, with this interpreter."""
        entrypoint = " ".join([sys.executable, str(self.checkout / "jobs" / f"{script}.py"), *args])
        return client.submit_job(entrypoint=entrypoint, submission_id=submission_id)


def wait_for_job(client, submission_id: str, timeout: float) -> str:
    """The job's terminal status (SUCCEEDED, FAILED, STOPPED); TimeoutError past `timeout`."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        status = str(client.get_job_status(submission_id).value)
        if status in TERMINAL:
            return status
        time.sleep(0.5)
    raise TimeoutError(f"job {submission_id} not done within {timeout:.0f} s")


def _alive(process: psutil.Process) -> bool:
    try:
        return process.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False
