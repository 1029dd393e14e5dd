"""Hang (3) at its root: a Ray Train placement group that outlives its run when a second Ray
runs on the machine, so the next runs or trials wait for CPUs that never come back.

    python bench/pg_leak.py            # Ray started as csg starts it: the group is removed
    python bench/pg_leak.py --plain    # plain ray.init(address="local"): the group leaks

A second local Ray starts in a subprocess. Then a 1-worker TorchTrainer runs inside an actor
(as a Tune trial runs it) and, once its placement group is placed and registered with Ray
Train's PlacementGroupCleaner, the actor is killed, which kills the run's controller the way
Tune ends a trial. The cleaner should then remove the group. The last line says whether it did.
(A run killed before its workers start leaks its group whatever the address: Ray registers the
group with the cleaner only after the worker group has started; Ray issue 62753.)
"""
from __future__ import annotations

import argparse
import logging
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from csg.cli import summary

os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")  # loopback, as csg runs Ray

SECOND_RAY = ("import logging, sys, time, ray; ray.init(address='local', num_cpus=1, include_dashboard=False, "
              "_temp_dir=sys.argv[1], logging_level=logging.WARNING); print('up', flush=True); time.sleep(600)")


def train_forever(config):
    Path(config["started"]).touch()  # the worker group is up: its group is registered
    time.sleep(600)


def running_group(ray, started: Path, timeout: float = 180) -> str:
    """The run's placement group, once its worker runs the training function."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        created = [g for g, v in ray.util.placement_group_table().items() if v["state"] == "CREATED"]
        if created and started.exists():
            return created[0]
        time.sleep(0.5)
    raise TimeoutError("the run never started")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=summary(__doc__))
    parser.add_argument("--plain", action="store_true", help="start Ray without csg's state-API address")
    parser.add_argument("--wait-s", type=float, default=40, help="how long the cleaner gets to remove the group")
    args = parser.parse_args(argv)
    second = subprocess.Popen([sys.executable, "-c", SECOND_RAY, tempfile.mkdtemp(prefix="csg-2nd-", dir="/tmp")],
                              stdout=subprocess.PIPE, text=True)
    assert second.stdout.readline().strip() == "up", "the second Ray did not start"
    try:
        import ray
        from ray.train import RunConfig, ScalingConfig
        from ray.train.torch import TorchTrainer

        from csg.distributed.cluster import init_ray

        if args.plain:
            ray.init(address="local", num_cpus=2, logging_level=logging.WARNING)
        else:
            init_ray(num_cpus=2)

        @ray.remote(num_cpus=0)
        class Trial:
            def run(self, storage: str, started: str):
                TorchTrainer(train_forever, train_loop_config={"started": started},
                             scaling_config=ScalingConfig(num_workers=1),
                             run_config=RunConfig(name="pg-leak", storage_path=storage)).fit()

        folder = Path(tempfile.mkdtemp(prefix="csg-pg-leak-"))
        trial = Trial.remote()
        trial.run.remote(str(folder), str(folder / "started"))
        group = running_group(ray, folder / "started")
        time.sleep(2)
        ray.kill(trial)
        start = time.time()
        while time.time() - start < args.wait_s:
            if ray.util.placement_group_table()[group]["state"] == "REMOVED":
                break
            time.sleep(0.5)
        state = ray.util.placement_group_table()[group]["state"]
        free = ray.available_resources().get("CPU", 0)
        print(f"pg_leak: {'plain ray.init' if args.plain else 'csg init_ray'} with a second Ray running: "
              f"the killed run's placement group is {state} {time.time() - start:.0f} s later; {free:g}/2 CPUs free")
        ray.shutdown()
        return 0 if state == "REMOVED" else 1
    finally:
        second.terminate()
        second.wait(timeout=60)


if __name__ == "__main__":
    sys.exit(main())
