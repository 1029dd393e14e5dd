"""Where a run executes: start a loopback-only local Ray or join a cluster, and check that
the results and checkpoint roots are storage every node can reach."""
from __future__ import annotations

import logging
import os
import re
import socket
import sys
import uuid
from pathlib import Path

# Ray resolves 127.0.0.1 to the machine's outward address unless told the cluster is one
# machine; this switch (read when `ray` is first imported) keeps every server on loopback.
_SINGLE_MACHINE = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"
_LOOPBACK = re.compile(r"^(\w+://)?(127\.\d+\.\d+\.\d+|localhost)(:|$)")


class StorageError(ValueError):
    """A results or checkpoint root that some node of the cluster cannot reach."""


def joining_cluster() -> bool:
    return bool(os.environ.get("RAY_ADDRESS"))


def init_ray(**local_kwargs) -> None:
    """Join the cluster when RAY_ADDRESS is set (as under `ray job submit`), else start a new
    local Ray that listens on 127.0.0.1 only: never one a `ray start` left on this machine,
    whose address file outlives it when it is killed. Local-only arguments apply to a local
    start alone."""
    address = os.environ.get("RAY_ADDRESS", "")
    if "ray" not in sys.modules and (not address or _LOOPBACK.search(address)):
        # A loopback head (cluster/local.sh) is this one machine too: without the switch Ray
        # would look for its GCS at the machine's outward address and never find it.
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
    dashboard_port = free_port()
    ray.init(address="local", logging_level=logging.WARNING, dashboard_port=dashboard_port,
             runtime_env={"env_vars": {STATE_API_ADDRESS: f"http://127.0.0.1:{dashboard_port}"}}, **local_kwargs)


# Ray Train's PlacementGroupCleaner (a detached actor per run) asks the state API whether the
# run's controller lives, without an address. Ray then guesses the cluster from the running
# processes; with a second Ray on the machine it raises "Found multiple active Ray instances",
# the cleaner's thread dies, and when a Tune trial ends abruptly its placement group is never
# removed: its CPUs stay held and the next trials wait. Ray 2.60 catches only state-API errors
# there (Ray PR 65447, open, catches this one). Naming this Ray's dashboard to every worker
# (the cleaner takes its controller's environment, the controller the job's) removes the guess.
STATE_API_ADDRESS = "RAY_API_SERVER_ADDRESS"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


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

    nodes = alive_nodes()
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


GCS_TIMEOUT_S = 30.0


class ClusterUnresponsive(RuntimeError):
    """Ray's control store (GCS) did not answer in time; the message is one line."""


def alive_nodes(timeout_s: float = GCS_TIMEOUT_S) -> list[str]:
    """The ids of the cluster's live nodes, or ClusterUnresponsive after `timeout_s`.
    `ray.nodes()` goes through Ray's global-state accessor, which waits on the GCS with no
    deadline and takes none (Ray issues 20158 and 20899, open in 2.60): a GCS that is up but
    not answering hangs the caller forever. This asks the same question with a deadline."""
    from ray._private.worker import global_worker
    from ray.core.generated.gcs_pb2 import GcsNodeInfo
    from ray.exceptions import RpcError

    try:
        infos = global_worker.gcs_client.get_all_node_info(
            timeout=timeout_s, state_filter=GcsNodeInfo.GcsNodeState.ALIVE)
    except RpcError as exc:
        raise ClusterUnresponsive(
            f"Ray's GCS at {global_worker.gcs_client.address} did not list the cluster's nodes within "
            f"{timeout_s:.0f} s ({exc.rpc_code}); check the head with `ray status`, restart it if it stays silent"
        ) from None
    return [node_id.hex() for node_id in infos]


def _marker_exists(path: str) -> bool:
    return os.path.exists(path)
