"""Hang (1) and (2): a local Ray that sits idle for minutes, and a process that starts and stops
Ray instances, must still answer the next call. Each call has a deadline, so a hang shows as a
line naming the call, not as a process that never ends.

    python bench/idle_ray.py                      # 3 rounds of 5 idle minutes: about 17 minutes
    python bench/idle_ray.py --idle-s 30 --rounds 2

Each round sleeps, then asks the GCS for the live nodes (csg.distributed.cluster.alive_nodes), runs a Ray
task, and trains one epoch on digits through csg's own driver (launch.train), which holds a
placement group the way the test suite's runs do. Before the rounds, the process starts and
stops a throwaway local Ray, as the suite's processes did before hang (2).
"""
from __future__ import annotations

import argparse
import tempfile
import time

from csg.cli import summary


def timed(what: str, call, deadline_s: float):
    start = time.time()
    result = call()
    seconds = time.time() - start
    if seconds > deadline_s:
        raise TimeoutError(f"{what} took {seconds:.0f} s (deadline {deadline_s:.0f} s)")
    return result, seconds


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=summary(__doc__))
    parser.add_argument("--idle-s", type=float, default=300, help="idle seconds before each round")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args(argv)

    import ray

    from csg.config import TrainConfig, validate
    from csg.distributed.cluster import alive_nodes, init_ray
    from csg.distributed.driver import train

    init_ray(num_cpus=1, include_dashboard=False)  # a throwaway instance first, as in hang (2)
    ray.shutdown()
    init_ray(num_cpus=2)
    probe = ray.remote(lambda: 1)
    results = tempfile.mkdtemp(prefix="csg-idle-")
    for round_ in range(args.rounds):
        time.sleep(args.idle_s)
        nodes, nodes_s = timed("listing the nodes", alive_nodes, 30)
        _, task_s = timed("a Ray task", lambda: ray.get(probe.remote(), timeout=60), 60)
        cfg = TrainConfig(dataset="digits", model="resnet20", epochs=1, workers=1, results=results, seed=round_)
        row, run_s = timed("a one-epoch run", lambda: train(cfg, validate(cfg), show_progress=False), 300)
        print(f"idle_ray: round {round_ + 1}/{args.rounds} after {args.idle_s:.0f} s idle: {len(nodes)} node(s) "
              f"in {nodes_s:.2f} s, a task in {task_s:.2f} s, a one-epoch run {row['status']} in {run_s:.0f} s",
              flush=True)
    ray.shutdown()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
