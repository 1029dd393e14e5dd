"""Where a run executes: start a loopback-only local Ray or join a cluster, and check that
the results and checkpoint roots are storage every node can reach."""
from __future__ import annotations

import logging
import os
import sys
import uuid
from pathlib import Path

# Ray resolves 127.0.0.1 to the machine's outward address unless told the cluster is one
# machine; this switch (read when `ray` is first imported) keeps every server on loopback.
_SINGLE_MACHINE = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"


class StorageError(ValueError):
    """A results or checkpoint root that some node of the cluster cannot reach."""


def joining_cluster() -> bool:
    return bool(os.environ.get("RAY_ADDRESS"))


def init_ray(**local_kwargs) -> None:
    """Join the cluster when RAY_ADDRESS is set (as under `ray job submit`), else start a new
    local Ray that listens on 127.0.0.1 only: never one a `ray start` left on this machine,
    whose address file outlives it when it is killed. Local-only arguments apply to a local
    start alone."""
    if not joining_cluster() and "ray" not in sys.modules:
        os.environ.setdefault(_SINGLE_MACHINE, "0")
    import ray

    if ray.is_initialized():
        return
    if joining_cluster():
        ray.init(logging_level=logging.WARNING)
        return
    # The Train controller registers each epoch's report at its next health check (every 2 s
    # by default); on a local Ray that poll, not training, dominated short epochs.
    os.environ.setdefault("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0.2")
    # Ray Train's node-drain watcher serves clusters of preemptible nodes; on one machine it
    # only logs a core-worker error at every run's start.
    os.environ.setdefault("RAY_TRAIN_ENABLE_PREEMPTION_WATCHER", "0")
    ray.init(address="local", logging_level=logging.WARNING, **local_kwargs)


def check_relative_paths(options: dict[str, str | None]) -> None:
    """Inside a Ray job the working directory is a temporary copy: a relative path would
    put results there and lose them when the job's files are cleaned up."""
    if not joining_cluster():
        return
    for option, path in options.items():
        if path and "://" not in path and not Path(path).is_absolute():
            raise StorageError(
                f"--{option}: relative path {path!r} inside a Ray job lands in the job's temporary "
                f"working dir; give an absolute path on shared storage or a URI (s3://, gs://)"
            )


def check_visible_from_every_node(options: dict[str, str]) -> None:
    """On a cluster this process joined (RAY_ADDRESS), write a marker under each local root and
    make every node look for it; a root some node cannot see is an error, not silently
    scattered results. A Ray started here by `init_ray` is this one machine: nothing to check."""
    if not joining_cluster():
        return
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    nodes = [n["NodeID"] for n in ray.nodes() if n["Alive"]]
    local = {option: path for option, path in options.items() if "://" not in path}
    if len(nodes) < 2 or not local:
        return
    probe = ray.remote(num_cpus=0)(_marker_exists)
    for option, path in local.items():
        Path(path).mkdir(parents=True, exist_ok=True)
        marker = Path(path) / f".csg-probe-{uuid.uuid4().hex}"
        marker.touch()
        try:
            seen = ray.get([
                probe.options(scheduling_strategy=NodeAffinitySchedulingStrategy(node, soft=False)).remote(str(marker))
                for node in nodes
            ])
        finally:
            marker.unlink()
        blind = [node[:8] for node, ok in zip(nodes, seen) if not ok]
        if blind:
            raise StorageError(
                f"--{option}: {path} is local to this machine; node(s) {', '.join(blind)} cannot see it. "
                f"On a multi-node cluster use a shared mount or a URI (s3://, gs://)"
            )


def _marker_exists(path: str) -> bool:
    return os.path.exists(path)
