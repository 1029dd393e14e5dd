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
    # The fast tier (`-m "not slow"`) holds one short Ray run; any other test on Ray is `slow`.
    unmarked = [item.nodeid for item in items if rank(item) != 1 and item.get_closest_marker("slow") is None
                and item.nodeid.split("[")[0] not in FAST_RAY_TESTS]
    if unmarked:
        raise pytest.UsageError(f"tests on Ray not marked slow (@pytest.mark.slow): {', '.join(unmarked)}")


# The fast tier's one Ray run: a 1-epoch training on the session Ray (~20 s with Ray's start).
FAST_RAY_TESTS = {"tests/test_storage.py::test_results_root_may_be_a_filesystem_uri"}


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


@pytest.fixture
def digits_copy(digits_run, tmp_path):
    """digits_run's tables copied for a test that writes (or must be seen not to write):
    (copy, row). Its checkpoints stay the shared run's, which the analyses only read."""
    from tests.helpers import copy_results

    results, row = digits_run
    return copy_results(results, tmp_path / "digits_run"), row


@pytest.fixture(scope="session")
def readme_runs(ray_local, tmp_path_factory):
    """The README's commands that need no data set, run as written from an empty directory:
    (that directory, what each command printed). Its trainings (digits, one's own model, a
    torchvision one, a sweep's trial) are read by other tests too; copy before writing."""
    from tests.helpers import run_readme_commands

    folder = tmp_path_factory.mktemp("readme")
    return folder, run_readme_commands(folder)


@pytest.fixture(scope="session")
def scenes_runs(ray_local, tmp_path_factory):
    """A CSG and an STD run on digits-scenes with its preset, 2 epochs each, the CSG run's second
    training the gate: (results, rows by method). Shared by the preset's test and the
    localization job's; copy before writing."""
    from tests.helpers import job_main

    results = tmp_path_factory.mktemp("scenes_runs")
    train = job_main("train_cifar")
    common = ["--dataset", "digits-scenes", "--epochs", "2", "--period", "2", "--results", str(results)]
    rows = {method: train([*common, "--method", method, "--run-id", method]) for method in ("csg", "std")}
    return results, rows
