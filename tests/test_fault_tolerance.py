"""Node loss: a run resumes from its latest checkpoint on a spare node and ends where an
uninterrupted run with the same seed ends."""
import json
import os
import subprocess
import sys
import tempfile

import pytest

from tests.helpers import REPO


@pytest.mark.slow
@pytest.mark.timeout(480)  # the script's own limit is 300 s
@pytest.mark.separate_ray
def test_node_loss_resumes_and_matches_the_uninterrupted_gate(tmp_path):
    temp = tempfile.mkdtemp(prefix="csg-nl-", dir="/tmp")  # short: Ray socket paths
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    done = subprocess.run(
        [sys.executable, str(REPO / "tests" / "node_loss.py"), str(tmp_path), temp],
        env=env, capture_output=True, text=True, timeout=300, cwd=REPO,
    )
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-4000:]
    # The report's line, wherever it falls among the lines a dying raylet's log monitor relays.
    report = json.loads(next(line for line in done.stdout.splitlines() if line.startswith('{"killed"')))
    # A results root that one node cannot see is refused, naming that node.
    assert report["refused"] and report["blind_node"] in report["refused"] and "shared mount" in report["refused"]
    assert report["killed"] is not None and report["killed"]["after_epochs"] >= 2
    assert report["status"] == "finished"
    assert report["epochs"] == list(range(3))  # each epoch exactly once
    # The driver's progress queue lives on the driver's node: it outlives the lost node.
    assert report["last_progress"] and "epoch 3/3" in report["last_progress"][0], report
    assert "Exception in thread" not in done.stderr, done.stderr[-3000:]
    # Same seed, same shards, restored optimizer and RNG state, CPU/gloo: bit-identical.
    assert report["gate_identical"], report
