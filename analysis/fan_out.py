"""The one fan-out helper: functions run as Ray tasks, with a progress line as they finish."""
from __future__ import annotations

import sys
import time


def fan_out(name: str, calls: dict, progress=True, num_gpus: float = 0, on_result=None) -> dict:
    """Run `calls` (key -> (function, args)) as Ray tasks; key -> result, in the order of
    `calls`. A progress line on stderr per finished task, or with `on_result` a call
    `on_result(key, result, done, total)` instead. A StudyError raised in a task is raised
    here as itself. Arguments may be object refs (of `ray.put` or of other tasks)."""
    import ray

    from analysis.studies import StudyError

    remote = {function: ray.remote(num_cpus=1, num_gpus=num_gpus)(function) for function, _ in calls.values()}
    refs = {remote[function].remote(*args): key for key, (function, args) in calls.items()}
    results, pending, start = {}, list(refs), time.time()
    while pending:
        ready, pending = ray.wait(pending, num_returns=1)
        key = refs[ready[0]]
        try:
            results[key] = ray.get(ready[0])
        except ray.exceptions.RayTaskError as exc:
            if isinstance(exc.cause, StudyError):
                raise exc.cause from None
            raise
        if on_result is not None:
            on_result(key, results[key], len(results), len(refs))
        elif progress:
            sys.stderr.write(f"\r{name}: {len(results)}/{len(refs)} tasks ({time.time() - start:.1f} s)")
    if progress and on_result is None:
        sys.stderr.write("\n")
    return {key: results[key] for key in calls}


def gpus_per_task() -> int:
    """1 when the cluster has a GPU (a task then takes one), else 0."""
    import ray

    return 1 if ray.cluster_resources().get("GPU", 0) else 0
