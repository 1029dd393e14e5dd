import os

import pytest

# Faster failure detection by the Train controller; must be set before Ray starts.
os.environ.setdefault("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0.2")
# A one-machine Ray on loopback, as the jobs start it (read when `ray` is first imported).
os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
# A run whose workers cannot be placed fails after 10 minutes rather than 30 (jobs inherit it).
os.environ.setdefault("CSG_RESOURCE_WAIT_S", "600")


def pytest_collection_modifyitems(items):
    """Order, for speed only: tests that start Ray instances of their own (a `ray start` head,
    a multi-node ray.cluster_utils.Cluster) first, before the session Ray exists, so that two
    Rays seldom share this machine's cores; then tests without Ray; then the session Ray's.
    The suite passes in any order (`-p random_order`): the hangs this order once avoided came
    from a placement group leaked while two Rays ran (csg.distributed.cluster.init_ray), and a run that
    cannot be placed now fails after CSG_RESOURCE_WAIT_S instead of waiting."""
    def rank(item):
        if item.get_closest_marker("separate_ray") is not None:
            return 0
        return 2 if "ray_local" in item.fixturenames else 1

    items.sort(key=rank)


@pytest.fixture(scope="session")
def ray_local(tmp_path_factory):
    """One local Ray for the whole session (2 cores here: keep worker counts at 2), started as
    the jobs start theirs."""
    import ray

    from csg.distributed.cluster import init_ray

    init_ray(num_cpus=2, _temp_dir=str(tmp_path_factory.mktemp("ray")))
    yield ray
    ray.shutdown()


@pytest.fixture(scope="session")
def digits_run(ray_local, tmp_path_factory):
    """One 2-worker CSG run on digits, shared by the tests that read its tables."""
    from tests.helpers import DIGITS_ARGS, job_main

    results = tmp_path_factory.mktemp("digits_run")
    row = job_main("train_cifar")([*DIGITS_ARGS, "--results", str(results), "--run-id", "plain"])
    return results, row
