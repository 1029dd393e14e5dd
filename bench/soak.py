"""A long-lived head under everyday use: short training jobs one after another with idle gaps,
then a sweep with two trials at a time; afterwards nothing may be left holding the cluster.

    python bench/soak.py                                   # 20 runs, 20 s gaps, a 6-trial sweep
    python bench/soak.py --runs 3 --gap-s 1 --trials 2     # a short form
    CSG_RAY_PORT=... python bench/soak.py --attach ...     # on a head cluster/local.sh started

It starts its own loopback head (cluster/local.sh, 2 CPUs), or with --attach uses the one the
CSG_RAY_* settings in the environment name, and submits every job with Ray's job
API, as users do. Before, after the first run and at the end, it reads the head's placement
groups that are not removed, its live actors, its worker processes and the resident memory of
the head's own processes (GCS, raylet, dashboard, agents), from one driver that stays connected
through the idle gaps. An actor counts as leaked if it was not there after the first run (Ray
starts some once per cluster). The last line is the summary; the exit status is 1 if anything
leaked, a job failed, a run's rows are missing, or the head grew past --memory-bound-mb.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from collections import Counter
from contextlib import nullcontext
from pathlib import Path

import pandas as pd
import psutil

from csg.cli import summary
from csg.distributed.cluster import alive_nodes
from csg.testing.local_head import LocalHead, wait_for_job

CHECKOUT = Path(__file__).resolve().parents[1]  # the cluster/local.sh and jobs/ it runs
TRAIN_ARGS = ["--preset", "digits-resnet20", "--workers", "1", "--epochs", "2", "--batch-size", "128"]
SWEEP_ARGS = ["--dataset", "digits", "--epochs", "2", "--batch-size", "128", "--max-concurrent", "2",
              "--scheduler", "none"]


def snapshot(head: LocalHead) -> dict:
    """What holds the cluster now: placement groups not removed, live actors, worker processes,
    and the resident memory of the head's own processes (neither workers nor job drivers).
    The GCS call that once hung after idling goes first, with a deadline."""
    import ray
    from ray.util.state import list_actors

    alive_nodes()
    groups = [g for g in ray.util.placement_group_table().values() if g["state"] != "REMOVED"]
    # The state API's address named: left to guess, it fails when another Ray runs here.
    actors = list_actors(address=head.dashboard, filters=[("state", "=", "ALIVE")], limit=10_000, timeout=30)
    processes = {p.pid: _cmdline(p) for p in head.processes()}
    workers = [pid for pid, cmd in processes.items() if cmd.startswith("ray::") or "default_worker.py" in cmd]
    own = [pid for pid, cmd in processes.items() if pid not in workers and "/jobs/" not in cmd]
    return {
        "placement_groups": len(groups),
        "actors": sorted(a.class_name for a in actors),
        "workers": len(workers),
        "head_rss_mb": sum(_rss(pid) for pid in own) / 2**20,
    }


def _cmdline(process) -> str:
    try:
        return " ".join(process.cmdline())
    except Exception:  # noqa: BLE001 - gone between listing and reading
        return ""


def _rss(pid: int) -> int:
    try:
        return psutil.Process(pid).memory_info().rss
    except Exception:  # noqa: BLE001
        return 0


def settle(head: LocalHead, baseline: dict, timeout: float = 60) -> dict:
    """Ray kills idle workers after a second or so; wait (bounded) for the count to come back."""
    deadline = time.time() + timeout
    while True:
        now = snapshot(head)
        if time.time() > deadline or (now["workers"] <= baseline["workers"] and not now["placement_groups"]):
            return now
        time.sleep(1)


def soak(head: LocalHead, runs: int, gap_s: float, trials: int, results: Path, job_timeout_s: float = 600,
         memory_bound_mb: float = 300) -> tuple[str, list[str]]:
    """Drive `head` through the soak; returns the summary line and the problems found."""
    import ray

    start = time.time()
    ray.init(address=head.gcs_address, logging_level="ERROR")
    client = head.jobs()
    before = snapshot(head)
    print(f"soak: before: {json.dumps(before)}", flush=True)
    failures, warm = [], before
    for i in range(runs):
        run_id = f"soak-{i:02d}"
        job = head.python_job(client, "train_cifar", [*TRAIN_ARGS, "--seed", str(i), "--results", str(results),
                                                      "--run-id", run_id], submission_id=f"{run_id}-{int(start)}")
        status = wait_for_job(client, job, job_timeout_s)
        if status != "SUCCEEDED":
            failures.append(f"{run_id}: {status}: {client.get_job_logs(job).strip()[-300:]}")
        print(f"soak: run {i + 1}/{runs} {status} ({time.time() - start:.0f} s)", flush=True)
        if i == 0:
            warm = settle(head, before)  # Ray's once-per-cluster actors exist from here on
        time.sleep(gap_s)
    if trials:
        sweep = head.python_job(client, "tune_cifar", [*SWEEP_ARGS, "--num-samples", str(trials), "--sweep-id",
                                                       "soak-sweep", "--results", str(results)],
                                submission_id=f"soak-sweep-{int(start)}")
        status = wait_for_job(client, sweep, job_timeout_s * 2)
        if status != "SUCCEEDED":
            failures.append(f"sweep: {status}: {client.get_job_logs(sweep).strip()[-300:]}")
        print(f"soak: sweep of {trials} trials {status} ({time.time() - start:.0f} s)", flush=True)
    after = settle(head, before)
    ray.shutdown()

    runs_table = pd.read_parquet(results / "runs") if (results / "runs").exists() else pd.DataFrame(columns=["status"])
    finished = int((runs_table["status"] == "finished").sum())
    leaked_actors = sorted((Counter(after["actors"]) - Counter(warm["actors"])).elements())
    growth = after["head_rss_mb"] - before["head_rss_mb"]
    problems = failures + [
        *([f"{after['placement_groups']} placement group(s) left"] if after["placement_groups"] else []),
        *([f"actors left: {', '.join(leaked_actors)}"] if leaked_actors else []),
        *([f"{after['workers'] - before['workers']} more worker processes"] if after["workers"] > before["workers"] else []),
        *([f"head grew {growth:.0f} MB (bound {memory_bound_mb:.0f})"] if growth > memory_bound_mb else []),
        *([f"{finished}/{runs + trials} runs finished"] if finished != runs + trials else []),
        *([] if _every_epoch_once(results, runs_table) else ["a run's epoch rows are missing or repeated"]),
    ]
    last_line = (f"soak: {runs} runs + {trials}-trial sweep in {time.time() - start:.0f} s; runs finished "
                 f"{finished}/{runs + trials}; placement groups {before['placement_groups']}->{after['placement_groups']}; "
                 f"actors {len(before['actors'])}->{len(warm['actors'])} (first run)->{len(after['actors'])}; "
                 f"workers {before['workers']}->{after['workers']}; "
                 f"head RSS {before['head_rss_mb']:.0f}->{after['head_rss_mb']:.0f} MB (+{growth:.0f}, bound "
                 f"{memory_bound_mb:.0f}); {'OK' if not problems else 'FAILED'}")
    return last_line, problems


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=summary(__doc__))
    parser.add_argument("--runs", type=int, default=20, help="training jobs, one after another")
    parser.add_argument("--gap-s", type=float, default=20, help="idle seconds between jobs")
    parser.add_argument("--trials", type=int, default=6, help="trials of the closing sweep (2 at a time)")
    parser.add_argument("--job-timeout-s", type=float, default=600, help="longest a job may take")
    parser.add_argument("--memory-bound-mb", type=float, default=300,
                        help="most the head's own processes may grow in resident memory")
    parser.add_argument("--results", default=None, help="results root (default: a temporary folder)")
    parser.add_argument("--attach", action="store_true",
                        help="use the head of the CSG_RAY_* settings in the environment; leave it running")
    args = parser.parse_args(argv)
    results = Path(args.results or tempfile.mkdtemp(prefix="csg-soak-")).absolute()
    # Both are read when Ray is imported: the head authenticates by token, and listens on
    # loopback, which Ray would otherwise translate to the machine's outward address.
    os.environ["RAY_AUTH_MODE"] = "token"
    os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
    with nullcontext(LocalHead(CHECKOUT, env=dict(os.environ))) if args.attach else LocalHead(CHECKOUT, cpus=2) as head:
        last_line, problems = soak(head, args.runs, args.gap_s, args.trials, results, args.job_timeout_s,
                                   args.memory_bound_mb)
    for problem in problems:
        print(f"soak: PROBLEM {problem}")
    print(last_line)
    return 1 if problems else 0


def _every_epoch_once(results: Path, runs: pd.DataFrame) -> bool:
    """Each run has epoch rows 0, 1, ... each exactly once."""
    if not len(runs):
        return True  # nothing to check; a missing run shows in the count of finished ones
    epochs = pd.read_parquet(results / "epochs").astype({"run_id": str})
    in_order = epochs.groupby("run_id")["epoch"].agg(lambda e: sorted(e) == list(range(len(e))))
    return bool(in_order.all()) and set(in_order.index) == set(runs["run_id"].astype(str))


if __name__ == "__main__":
    sys.exit(main())
