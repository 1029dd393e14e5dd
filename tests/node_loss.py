"""Node-loss scenario, run in its own process (it needs its own multi-node Ray).

A 0-CPU head plus three 1-CPU nodes on this machine. An uninterrupted 2-worker CSG run gives
the reference gate; then the same run again, and once it has checkpointed two epochs, the
node that holds one of its workers is removed (SIGKILL of that node's raylet and everything
under it). Prints one JSON line describing what happened.
"""
import contextlib
import io
import json
import os
import sys
import threading
import time

import numpy as np
import pandas as pd
import psutil
import ray
from ray.cluster_utils import Cluster

import csg.distributed.cluster
from csg.config import PRESETS, TrainConfig, validate
from csg.distributed.cluster import StorageError, check_visible_from_every_node
from csg.distributed.driver import train
from csg.store.results import ResultStore

EPOCHS = 3  # the node goes after 2 checkpointed epochs; 1 is left to resume


def main(results: str, temp_dir: str) -> None:
    # Cluster writes its address to Ray's default temp dir whatever temp_dir says; on a machine
    # that never ran Ray that directory is missing.
    os.makedirs(os.path.dirname(ray._private.utils.get_ray_address_file(None)), exist_ok=True)
    # The GCS declares a silent node dead after 3 missed 0.5 s health checks, not Ray's 5 of 3 s:
    # the run waits on that verdict before its workers can be placed again.
    health = {"health_check_period_ms": 500, "health_check_timeout_ms": 500, "health_check_failure_threshold": 3}
    cluster = Cluster(initialize_head=True,
                      head_node_args={"num_cpus": 0, "temp_dir": temp_dir, "_system_config": health})
    nodes = [cluster.add_node(num_cpus=1) for _ in range(3)]
    os.environ["RAY_ADDRESS"] = cluster.address  # joined, as a job on a cluster would be
    ray.init(address=cluster.address)
    cfg = TrainConfig(**{**PRESETS["digits-resnet20"], "workers": 2, "epochs": EPOCHS, "period": 2,
                         "lambda2": 0.2, "seed": 3, "batch_size": 32, "results": results,
                         "max_failures": 1})
    info = validate(cfg)
    blind_node = nodes[0].node_id
    try:
        with _pretend_blind(blind_node):
            check_visible_from_every_node({"results": results})
        refused = None
    except StorageError as exc:
        refused = str(exc)
    train(cfg, info, run_id="plain")  # the real check passes: every node shares this disk

    printed = io.StringIO()
    outcome, store = {}, ResultStore(results)
    def train_killed():
        with contextlib.redirect_stdout(printed):
            outcome.update(train(cfg, info, run_id="killed"))

    thread = threading.Thread(target=train_killed)
    thread.start()
    killed = None
    while thread.is_alive():
        if killed is None and store.exists("epochs", "killed") and len(store.read("epochs", "killed")) >= 2:
            killed = _remove_node_of_a_worker(cluster, nodes, store)
        time.sleep(0.05)
    thread.join()

    gates = {run: pd.read_parquet(f"{results}/gates/run_id={run}")["value"].to_numpy() for run in ("plain", "killed")}
    epochs = pd.read_parquet(f"{results}/epochs/run_id=killed")
    print(json.dumps({
        "killed": killed,
        "status": outcome.get("status"),
        "epochs": epochs["epoch"].tolist(),
        "gate_max_abs_diff": float(np.abs(gates["plain"] - gates["killed"]).max()),
        "gate_identical": bool(np.array_equal(gates["plain"], gates["killed"])),
        "blind_node": blind_node[:8],
        "refused": refused,
        "last_progress": [line for line in printed.getvalue().splitlines() if "[killed] epoch" in line][-1:],
    }))
    ray.shutdown()
    cluster.shutdown()


@contextlib.contextmanager
def _pretend_blind(node_id: str):
    """Make one node unable to see any marker, as if the results root were not shared."""
    original = csg.distributed.cluster._marker_exists

    def marker_exists(path):
        return ray.get_runtime_context().get_node_id() != node_id and os.path.exists(path)

    csg.distributed.cluster._marker_exists = marker_exists
    try:
        yield
    finally:
        csg.distributed.cluster._marker_exists = original


def _remove_node_of_a_worker(cluster, nodes, store) -> dict:
    """Find a training worker's raylet among the added nodes and remove that node."""
    workers = [p for p in psutil.process_iter(["cmdline"]) if "RayTrainWorker" in " ".join(p.info["cmdline"] or [])]
    raylets = {node.all_processes["raylet"][0].process.pid: node for node in nodes}
    for worker in workers:
        for parent in worker.parents():
            if parent.pid in raylets:
                node = raylets[parent.pid]
                epochs_done = len(store.read("epochs", "killed"))
                cluster.remove_node(node, allow_graceful=False)
                return {"node_raylet_pid": parent.pid, "worker_pid": worker.pid, "after_epochs": epochs_done}
    raise RuntimeError("no training worker found under the added nodes")


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
