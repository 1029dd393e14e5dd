"""The one fan-out helper: functions run as Ray tasks, with a progress line as they finish, or,
inside `in_process()`, as plain calls in this process."""
from __future__ import annotations

import contextlib
import contextvars
import sys
import time

_IN_PROCESS = contextvars.ContextVar("in_process", default=False)


@contextlib.contextmanager
def in_process():
    """Within: `fan_out` and `submit` call their functions here, in turn, without Ray. For
    small work on one machine, where starting a local Ray (~10 s) costs more than the work."""
    token = _IN_PROCESS.set(True)
    try:
        yield
    finally:
        _IN_PROCESS.reset(token)


def submit(function, *args, num_gpus: float = 0):
    """`function(*args)` as a Ray task: its object ref; in process, its result."""
    if _IN_PROCESS.get():
        return function(*args)
    import ray

    return ray.remote(num_cpus=1, num_gpus=num_gpus)(function).remote(*args)


def fan_out(name: str, calls: dict, progress=True, num_gpus: float = 0, on_result=None) -> dict:
    """Run `calls` (key -> (function, args)) as Ray tasks; key -> result, in the order of
    `calls`. With `progress`, a line on stderr: on a terminal, rewritten as each task finishes
    and erased at the end, where the caller's results follow; in a log, one line at the end.
    With `on_result`, a call `on_result(key, result, done, total)` instead. A StudyError raised
    in a task is raised here as itself. Arguments may be object refs (of `ray.put`, `submit` or
    other tasks)."""
    results, start = {}, time.time()
    terminal = progress and on_result is None and sys.stderr.isatty()

    def line() -> str:
        return f"{name}: {len(results)}/{len(calls)} tasks ({time.time() - start:.1f} s)"

    def finished(key, result):
        results[key] = result
        if on_result is not None:
            on_result(key, result, len(results), len(calls))
        elif terminal:
            sys.stderr.write(f"\r{line()}")
            sys.stderr.flush()

    if _IN_PROCESS.get():
        for key, (function, args) in calls.items():
            finished(key, function(*args))
    else:
        _gather(calls, num_gpus, finished)
    if terminal:
        sys.stderr.write("\r" + " " * len(line()) + "\r")
    elif progress and on_result is None:
        sys.stderr.write(line() + "\n")
    return {key: results[key] for key in calls}


def _gather(calls: dict, num_gpus: float, finished) -> None:
    import ray

    from analysis.studies import StudyError

    remote = {function: ray.remote(num_cpus=1, num_gpus=num_gpus)(function) for function, _ in calls.values()}
    refs = {remote[function].remote(*args): key for key, (function, args) in calls.items()}
    pending = list(refs)
    while pending:
        ready, pending = ray.wait(pending, num_returns=1)
        try:
            result = ray.get(ready[0])
        except ray.exceptions.RayTaskError as exc:
            if isinstance(exc.cause, StudyError):
                raise exc.cause from None
            raise
        finished(refs[ready[0]], result)


def gpus_per_task() -> int:
    """1 when the cluster has a GPU (a task then takes one), else 0; in process, 0 (a task
    then uses this process's device)."""
    if _IN_PROCESS.get():
        return 0
    import ray

    return 1 if ray.cluster_resources().get("GPU", 0) else 0
