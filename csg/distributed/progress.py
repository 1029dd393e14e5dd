"""What a training job shows while it runs: one progress line per run, printed by the driver.

Rank 0 sends each epoch's numbers to a small queue actor and a thread of the driver prints
them: one line updated in place on a terminal; in a log file (or `ray job logs`) a line at the
first epoch, about every tenth of the run and at the last (the `epochs` table has every epoch).
Worker output reaches the driver line by line with Ray's prefix, so only the driver can
update a line in place.
"""
from __future__ import annotations

import math
import shutil
import sys
import threading
import time


class ProgressLine:
    """Formats and prints one run's progress; `verbose` prints every epoch on its own line."""

    def __init__(self, run_id: str, epochs: int, stream=None, verbose: bool = False):
        self.run_id, self.epochs = run_id, epochs
        self.stream = stream or sys.stdout
        self.in_place = not verbose and self.stream.isatty()
        self.every = 1 if verbose else max(1, round(epochs / 10))
        self.first_seen: tuple[float, int] | None = None
        self.open_line = False
        self._width = 0

    def resumed(self, epoch: int) -> None:
        self._line(f"[{self.run_id}] resuming after epoch {epoch + 1}")

    def epoch(self, row: dict, images_per_s: float) -> None:
        done = row["epoch"] + 1
        text = self.format(row, images_per_s, self._eta(done, row["epoch_time_s"]))
        if self.in_place:
            # A line wider than the terminal wraps, and "\r" then rewrites only its last row.
            text = text[: shutil.get_terminal_size().columns - 1]
            self.stream.write("\r" + text.ljust(self._width))
            self._width = len(text)
            self.open_line = True
            self.stream.flush()
        elif done == 1 or done % self.every == 0 or done == self.epochs:
            self._line(text)

    def format(self, row: dict, images_per_s: float, eta_s: float) -> str:
        prefix = "" if self.in_place else f"[{self.run_id}] "
        parts = [f"{prefix}epoch {row['epoch'] + 1}/{self.epochs} {row['path']:>5}",
                 f"loss {row['loss_total']:.4f}", f"test_acc {row['test_acc']:.4f}"]
        if not math.isnan(row["l1_density"]):
            parts.append(f"l1_density {row['l1_density']:.4f}")
        parts.append(f"{images_per_s:,.0f} img/s")
        if not math.isnan(row.get("data_wait", math.nan)):
            parts.append(f"data_wait {row['data_wait']:.0%}")
        last = row["epoch"] + 1 == self.epochs
        parts.append(f"{row['epoch_time_s']:.1f}s/epoch" if last else f"ETA {_duration(eta_s)}")
        return "  ".join(parts)

    def close(self) -> None:
        if self.open_line:
            self.stream.write("\n")
            self.stream.flush()
            self.open_line = False

    def _eta(self, done: int, epoch_seconds: float) -> float:
        """Remaining epochs at the driver's observed pace (training, evaluation and checkpoint),
        or at the training time of the one epoch seen so far."""
        now = time.monotonic()
        if self.first_seen is None:
            self.first_seen = (now, done)
        start, first = self.first_seen
        per_epoch = (now - start) / (done - first) if done > first else epoch_seconds
        return per_epoch * (self.epochs - done)

    def _line(self, text: str) -> None:
        self.close()
        self.stream.write(text + "\n")
        self.stream.flush()


def _duration(seconds: float) -> str:
    seconds = int(round(seconds))
    if seconds < 60:
        return f"{seconds}s"
    minutes, seconds = divmod(seconds, 60)
    if minutes < 60:
        return f"{minutes}m{seconds:02d}s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m"


class ProgressFeed:
    """The driver's end: a Ray queue the workers put into and a thread that prints from it."""

    def __init__(self, line: ProgressLine):
        import ray
        from ray.util.queue import Queue
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

        self.line = line
        # On the driver's node: a queue on a worker's node would die with that node, and the
        # driver would go silent for the rest of a run that Ray Train recovers.
        here = NodeAffinitySchedulingStrategy(ray.get_runtime_context().get_node_id(), soft=False)
        self.queue = Queue(actor_options={"num_cpus": 0, "scheduling_strategy": here})
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._drain, daemon=True)

    def __enter__(self) -> "ProgressFeed":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self.line.close()
        self.queue.shutdown()

    def _drain(self) -> None:
        from ray.exceptions import RayError
        from ray.util.queue import Empty

        while True:
            try:
                message = self.queue.get(timeout=0.5)
            except Empty:
                if self._stop.is_set():
                    return
                continue
            except RayError:  # the queue is gone: progress stops, the run does not
                return
            kind, *payload = message
            getattr(self.line, kind)(*payload)


def send(queue, kind: str, *payload) -> None:
    """A worker's side: `send(queue, "epoch", row, images_per_s)` or `send(queue, "resumed", epoch)`.
    Progress is a courtesy: a queue that is gone never fails the run."""
    if queue is None:
        return
    from ray.exceptions import RayError

    try:
        queue.put((kind, *payload))
    except RayError:
        pass
