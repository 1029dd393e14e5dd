"""Who is training a run id right now: a lease file per run that its driver re-stamps.

    <results>/_leases/<run_id>.json   {"owner", "heartbeat", "interval_s", "host", "pid"}

A lease whose heartbeat is older than STALE_AFTER intervals belongs to a driver that died
(SIGKILL, a lost node): the next driver takes it over. A fresh lease of another owner is
refused, so two drivers never train one run id at once, and a crash never locks an id for
good. The `_` prefix keeps the folder out of every table's path.
"""
from __future__ import annotations

import json
import os
import socket
import threading
import time
import uuid

from pyarrow import fs as pafs

from csg.store.results import ResultStore

LEASES = "_leases"
HEARTBEAT_S = float(os.environ.get("CSG_HEARTBEAT_S", "10"))
STALE_AFTER = 3  # missed heartbeats


class LeaseHeld(RuntimeError):
    """The run id is being trained by another live driver."""


def default_owner() -> str:
    """A Ray job's submission id when there is one, else host and pid: unique per driver."""
    return os.environ.get("RAY_JOB_SUBMISSION_ID") or f"{socket.gethostname()}:{os.getpid()}"


def is_fresh(lease: dict, now: float | None = None) -> bool:
    return (now or time.time()) - lease["heartbeat"] <= STALE_AFTER * lease["interval_s"]


def read(store: ResultStore, run_id: str) -> dict | None:
    try:
        with store.fs.open_input_stream(_path(store, run_id)) as stream:
            return json.loads(stream.read())
    except (FileNotFoundError, json.JSONDecodeError):
        return None  # absent, or caught between truncate and write on a store without rename


def read_all(store: ResultStore) -> dict[str, dict]:
    entries = store.fs.get_file_info(pafs.FileSelector(f"{store.base}/{LEASES}", allow_not_found=True))
    found = {}
    for entry in entries:
        if entry.base_name.endswith(".json") and not entry.base_name.startswith("."):
            run_id = entry.base_name[: -len(".json")]
            lease = read(store, run_id)
            if lease is not None:
                found[run_id] = lease
    return found


def _path(store: ResultStore, run_id: str) -> str:
    return f"{store.base}/{LEASES}/{run_id}.json"


class RunLease:
    """Hold the lease of `run_id` for the life of a `with` block, re-stamping it every
    `interval_s` from a daemon thread; released (deleted) on the way out.

    A lease already held by the same `owner` is taken back: a resumed sweep re-enters the
    trials it owns without waiting for their leases to go stale.
    """

    def __init__(self, store: ResultStore, run_id: str, owner: str | None = None,
                 interval_s: float = HEARTBEAT_S):
        self.store, self.run_id = store, run_id
        self.owner = owner or default_owner()
        self.interval_s = interval_s
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def __enter__(self) -> RunLease:
        self.acquire()
        return self

    def __exit__(self, *exc) -> None:
        self.release()

    def acquire(self) -> None:
        """Take the lease (LeaseHeld if another live driver has it) and start the heartbeat."""
        self.store.fs.create_dir(f"{self.store.base}/{LEASES}", recursive=True)
        self._claim()
        self._thread = threading.Thread(target=self._beat, name=f"lease-{self.run_id}", daemon=True)
        self._thread.start()

    def release(self) -> None:
        self._stop.set()
        self._thread.join()
        current = read(self.store, self.run_id)
        if current is not None and current["owner"] == self.owner:
            self.store.fs.delete_file(_path(self.store, self.run_id))

    def _claim(self) -> None:
        """Take an absent lease with an exclusive create. A stale one (or our own) is replaced
        by whoever first creates its takeover marker, named after the heartbeat judged stale,
        so of several drivers racing for it exactly one wins and the others then find the
        winner's fresh lease."""
        waiting_since = time.time()
        while True:
            held = read(self.store, self.run_id)
            if held is None:
                if self._create_exclusive(_path(self.store, self.run_id), self._record()):
                    return
            elif held["owner"] != self.owner and is_fresh(held):
                age = time.time() - held["heartbeat"]
                raise LeaseHeld(
                    f"--run-id: run {self.run_id} is being trained by {held['owner']} on {held['host']} "
                    f"(heartbeat {age:.0f} s ago); wait for it to end, stop it, or choose a new run id"
                )
            elif self._create_exclusive(self._marker(held), b""):
                self._stamp()
                return
            elif time.time() - waiting_since > STALE_AFTER * held["interval_s"]:
                # The takeover's winner died before stamping: its marker must not lock the id.
                self.store.fs.delete_file(self._marker(held))
                waiting_since = time.time()
            time.sleep(0.05)  # another driver is between its create and its write: look again

    def _marker(self, lease: dict) -> str:
        return f"{self.store.base}/{LEASES}/.{self.run_id}-{lease['heartbeat']!r}.takeover"

    def _record(self) -> bytes:
        return json.dumps({"owner": self.owner, "heartbeat": time.time(), "interval_s": self.interval_s,
                           "host": socket.gethostname(), "pid": os.getpid()}).encode()

    def _create_exclusive(self, path: str, content: bytes) -> bool:
        """Create `path` unless it exists: atomic on a local or mounted root."""
        if isinstance(self.store.fs, pafs.LocalFileSystem):
            try:
                descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL)
            except FileExistsError:
                return False
            with os.fdopen(descriptor, "wb") as file:
                file.write(content)
            return True
        # Object stores have no exclusive create: check, then write. Two drivers that start in
        # the same instant on an s3:// or gs:// root can both pass; anywhere else only one can.
        if self.store.fs.get_file_info(path).type != pafs.FileType.NotFound:
            return False
        with self.store.fs.open_output_stream(path) as stream:
            stream.write(content)
        return True

    def _stamp(self) -> None:
        tmp = f"{self.store.base}/{LEASES}/.{self.run_id}-{uuid.uuid4().hex}"
        with self.store.fs.open_output_stream(tmp) as stream:
            stream.write(self._record())
        self.store.fs.move(tmp, _path(self.store, self.run_id))

    def _beat(self) -> None:
        while not self._stop.wait(self.interval_s):
            current = read(self.store, self.run_id)
            if current is not None and current["owner"] != self.owner:
                return  # judged stale and taken over: never stamp over the new owner
            try:
                self._stamp()
            except OSError:
                continue  # a full or flaky disk: the next beat tries again; staleness tells the rest
