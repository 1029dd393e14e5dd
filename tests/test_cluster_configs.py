"""The cloud and Kubernetes configs: valid, install as the README does, expose nothing."""
import re
import shlex

import pytest
import yaml

from tests.helpers import REPO

CLUSTER = REPO / "cluster"


def readme_install() -> str:
    """The README's set-up line: the first that creates the virtual environment."""
    lines = (REPO / "README.md").read_text().splitlines()
    return next(line.strip() for line in lines if line.strip().startswith("python3 -m venv "))


def _strings(node):
    if isinstance(node, dict):
        for key, value in node.items():
            yield str(key)
            yield from _strings(value)
    elif isinstance(node, list):
        for item in node:
            yield from _strings(item)
    else:
        yield str(node)


@pytest.mark.parametrize("name", ["aws-gpu.yaml", "kuberay-rayjob.yaml", "Dockerfile"])
def test_nothing_is_opened_to_the_world(name):
    text = (CLUSTER / name).read_text()
    assert "0.0.0.0/0" not in text and "::/0" not in text
    assert "LoadBalancer" not in text and "NodePort" not in text


def test_aws_launcher_config_is_valid_and_installs_as_the_readme():
    from ray.autoscaler._private.util import prepare_config, validate_config

    config = prepare_config(yaml.safe_load((CLUSTER / "aws-gpu.yaml").read_text()))
    validate_config(config)
    assert readme_install().startswith("python3 -m venv .venv")
    assert any(readme_install() in command for command in config["setup_commands"])
    head = " ".join(config["head_start_ray_commands"])
    assert "--dashboard-host=127.0.0.1" in head
    rules = config["provider"]["security_group"]["IpPermissions"]
    assert all(r["CidrIp"] != "0.0.0.0/0" for rule in rules for r in rule["IpRanges"])
    workers = config["available_node_types"]["gpu_worker"]
    assert workers["node_config"]["InstanceType"].startswith(("g", "p")) and workers["max_workers"] >= 1
    assert "." in config["file_mounts"].values()


def test_kuberay_rayjob_runs_an_existing_entrypoint():
    job = yaml.safe_load((CLUSTER / "kuberay-rayjob.yaml").read_text())
    assert job["apiVersion"] == "ray.io/v1" and job["kind"] == "RayJob"
    argv = shlex.split(job["spec"]["entrypoint"])
    assert argv[0] == "python" and (REPO / argv[1]).is_file() and argv[1] == "jobs/train_imagenet.py"
    assert "--results" in argv and not argv[argv.index("--results") + 1].startswith(".")
    cluster = job["spec"]["rayClusterSpec"]
    assert cluster["rayVersion"] == "2.60.0"
    assert cluster["headGroupSpec"].get("serviceType", "ClusterIP") == "ClusterIP"
    gpus = cluster["workerGroupSpecs"][0]["template"]["spec"]["containers"][0]["resources"]["limits"]
    assert gpus["nvidia.com/gpu"] == "1"
    assert all("0.0.0.0/0" not in s for s in _strings(job))


def test_dockerfile_installs_as_the_readme():
    run = re.search(r"^RUN (.+)$", (CLUSTER / "Dockerfile").read_text(), flags=re.M).group(1)
    pip_steps = readme_install().split(" && ", 2)[2]  # after creating and activating the venv
    assert run == pip_steps
