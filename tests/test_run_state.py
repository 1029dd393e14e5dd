"""Run leases, stop signals, storage faults and jobs/status.py, without Ray."""
import contextlib
import json
import os
import signal
import subprocess
import threading
import time

import numpy as np
import pandas as pd
import pytest

from csg.config import TrainConfig
from csg.distributed.stop_signals import StopSignals
from csg.store import lease as lease_lib
from csg.store.lease import LeaseHeld, RunLease
from csg.store.results import SCHEMAS, ResultStore, StoreError
from csg.store.run_record import write_epochs, write_run
from tests.helpers import job_main


def _stale_lease(store: ResultStore, run_id: str, owner="host:1", age_s=3600.0, interval_s=10.0):
    folder = store.fs.normalize_path(f"{store.base}/{lease_lib.LEASES}")
    os.makedirs(folder, exist_ok=True)
    record = {"owner": owner, "heartbeat": time.time() - age_s, "interval_s": interval_s, "host": "gone", "pid": 1}
    with open(f"{folder}/{run_id}.json", "w") as file:
        json.dump(record, file)


def test_a_fresh_lease_refuses_another_owner_and_a_stale_one_is_taken_over(tmp_path):
    store = ResultStore(str(tmp_path))
    with RunLease(store, "r1", owner="first", interval_s=0.05):
        first = lease_lib.read(store, "r1")["heartbeat"]
        time.sleep(0.3)
        assert lease_lib.read(store, "r1")["heartbeat"] > first, "the heartbeat does not advance"
        with pytest.raises(LeaseHeld, match=r"run r1 is being trained by first on .*heartbeat \d+ s ago"):
            RunLease(store, "r1", owner="second").acquire()
        with RunLease(store, "r1", owner="first"):  # the same owner (a resumed sweep) re-enters
            pass
    assert lease_lib.read(store, "r1") is None, "a released lease stays behind"

    _stale_lease(store, "r2")  # a driver killed an hour ago
    with RunLease(store, "r2", owner="next"):
        assert lease_lib.read(store, "r2")["owner"] == "next"


def test_of_drivers_racing_for_a_stale_lease_exactly_one_wins(tmp_path):
    store = ResultStore(str(tmp_path))
    _stale_lease(store, "r")
    outcomes, start = [], threading.Barrier(8)

    def contend(i):
        lease = RunLease(store, "r", owner=f"driver-{i}", interval_s=60)
        start.wait()
        try:
            lease.acquire()
            outcomes.append(lease)
        except LeaseHeld:
            outcomes.append(None)

    threads = [threading.Thread(target=contend, args=(i,)) for i in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    winners = [lease for lease in outcomes if lease is not None]
    assert len(outcomes) == 8 and len(winners) == 1
    assert lease_lib.read(store, "r")["owner"] == winners[0].owner
    winners[0].release()


def test_a_takeover_whose_winner_died_before_stamping_does_not_lock_the_run_id(tmp_path):
    store = ResultStore(str(tmp_path))
    _stale_lease(store, "r", interval_s=0.1)
    marker = RunLease(store, "r")._marker(lease_lib.read(store, "r"))
    open(marker, "wb").close()  # the winner's marker, left by a driver killed right after it
    start = time.time()
    with RunLease(store, "r", owner="next"):
        assert lease_lib.read(store, "r")["owner"] == "next"
    assert time.time() - start < 5


def test_sigterm_interrupts_like_ctrl_c_and_the_handlers_come_back():
    before = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    stop = StopSignals()
    with pytest.raises(KeyboardInterrupt), stop:
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(5)  # the handler raises before this ends
    assert stop.received == "SIGTERM"
    assert {s: signal.getsignal(s) for s in before} == before


@contextlib.contextmanager
def _small_filesystem(tmp_path, size="256k"):
    """A tiny tmpfs where the platform lets us mount one (root on Linux), else skip."""
    mount = tmp_path / "mnt"
    mount.mkdir()
    made = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(mount)],
                          capture_output=True, text=True)
    if made.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here ({made.stderr.strip()})")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=True)


def _frame(rows: int) -> pd.DataFrame:
    return pd.DataFrame({"class": range(rows), "filter": range(rows), "value": [0.5] * rows})


def test_a_full_results_root_fails_in_one_line_and_leaves_no_partial_file(tmp_path):
    with _small_filesystem(tmp_path) as mount:
        store = ResultStore(str(mount))
        store.write("gates", "small", _frame(3))
        with pytest.raises(StoreError) as error:
            # random floats do not compress: 1.6 MB of them on a 256 KiB disk
            huge = _frame(200_000).assign(value=np.random.default_rng(0).random(200_000))
            store.write("gates", "huge", huge)
        message = str(error.value)
        assert len(message.splitlines()) == 1
        assert "cannot write table gates of run huge" in message and "No space left on device" in message
        leftovers = [p for p in mount.rglob("*") if p.is_file() and p.name != "part-0.parquet"]
        assert not leftovers, f"partial files left behind: {leftovers}"
        frame = pd.read_parquet(mount / "gates")
        assert list(frame["run_id"].astype(str).unique()) == ["small"] and len(frame) == 3


def test_a_read_only_results_root_keeps_its_rows_and_fails_in_one_line(tmp_path):
    with _small_filesystem(tmp_path) as mount:
        store = ResultStore(str(mount))
        store.write("gates", "kept", _frame(3))
        subprocess.run(["mount", "-o", "remount,ro", str(mount)], check=True)
        with pytest.raises(StoreError, match=r"^cannot write table gates of run kept under .*Read-only file system"):
            store.write("gates", "kept", _frame(5))
        assert len(pd.read_parquet(mount / "gates")) == 3


def test_a_training_job_on_a_read_only_root_exits_in_one_line_before_ray(tmp_path, capsys):
    with _small_filesystem(tmp_path) as mount:
        subprocess.run(["mount", "-o", "remount,ro", str(mount)], check=True)
        with pytest.raises(SystemExit) as exit_info:
            job_main("train_cifar")(["--preset", "digits-resnet20", "--epochs", "1", "--results", str(mount)])
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and len(err.strip().splitlines()) == 1, err
    assert "--results: cannot write under" in err and "Read-only file system" in err


def _run(store: ResultStore, run_id: str, status: str, epochs: int):
    cfg = TrainConfig(dataset="digits", model="resnet20", epochs=10, results=store.root)
    write_run(store, run_id, cfg, {"status": status, "started_at": "2026-11-30T12:00:00"})
    columns = SCHEMAS["epochs"].names
    write_epochs(store, run_id, [{**dict.fromkeys(columns, 0.0), "epoch": e, "path": "std", "skipped_images": 0}
                                 for e in range(epochs)])


def test_status_tells_live_stale_and_ended_runs_apart_and_check_names_a_truncated_file(tmp_path, capsys):
    store = ResultStore(str(tmp_path))
    _run(store, "live", "running", 3)
    _run(store, "killed", "running", 2)
    _run(store, "stopped-by-user", "interrupted", 4)
    _run(store, "done", "finished", 10)
    _stale_lease(store, "killed", age_s=120)
    with RunLease(store, "live", owner="me"):
        states = job_main("status")(["--results", str(tmp_path)])
    got = dict(zip(states["run_id"], zip(states["state"], states["epoch"])))
    assert got == {"live": ("running", 2), "killed": ("stale", 1), "stopped-by-user": ("interrupted", 3),
                   "done": ("finished", 9)}
    assert states.set_index("run_id").loc["killed", "heartbeat_age_s"] >= 120

    victim = tmp_path / "epochs" / "run_id=done" / "part-0.parquet"
    victim.write_bytes(victim.read_bytes()[:40])  # an outside process cut it short
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_info:
        job_main("status")(["--results", str(tmp_path), "--check"])
    out = capsys.readouterr().out
    assert exit_info.value.code == 1
    assert f"unreadable: {victim}" in out and "check: 1 unreadable part file(s)" in out
    assert len(store.read("epochs", "live")) == 3 and len(pd.read_parquet(tmp_path / "runs")) == 4
