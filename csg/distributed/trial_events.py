"""A sweep's console: one line per trial event (started, finished, stopped early, failed).

Imports Ray Tune, so only `run_sweep` imports it, after Ray was started."""
from __future__ import annotations

from ray.tune import Callback

SHOWN = ("period", "csg_epochs", "lambda1", "lambda2", "g_density", "psi")


class TrialEvents(Callback):
    """Tune's own status table is off unless --verbose; these lines replace it."""

    def __init__(self, epochs: int, say=None):
        self.epochs = epochs
        # Tune pickles its callbacks. `print` pickles by reference to builtins.print, which fails
        # wherever print was replaced (pytest, notebooks); a module function always resolves.
        self.say = say or print_line

    def on_trial_start(self, iteration, trials, trial, **info):
        self.say(f"trial {trial.trial_id} started: {_settings(trial.config)} "
                 f"({_count(trials, 'RUNNING')} running, {_count(trials, 'PENDING')} pending)")

    def on_trial_complete(self, iteration, trials, trial, **info):
        result = trial.last_result or {}
        epochs = result.get("training_iteration", 0)
        how = "finished" if epochs >= self.epochs else f"stopped by the scheduler after {epochs}/{self.epochs} epochs"
        accuracy = f", test_acc {result['test_acc']:.4f}" if "test_acc" in result else ""
        self.say(f"trial {trial.trial_id} {how}{accuracy} ({_done(trials)}/{len(trials)} done)")

    def on_trial_error(self, iteration, trials, trial, **info):
        self.say(f"trial {trial.trial_id} failed; its error is in {trial.local_path} "
                 f"({_done(trials)}/{len(trials)} done)")


def _settings(config: dict) -> str:
    values = dict(config)
    if "schedule" in values:
        values["period"], values["csg_epochs"] = values.pop("schedule")
    return " ".join(f"{name}={_short(values[name])}" for name in SHOWN if name in values)


def _short(value) -> str:
    return f"{value:.3g}" if isinstance(value, float) else str(value)


def _count(trials, status: str) -> int:
    return sum(trial.status == status for trial in trials)


def _done(trials) -> int:
    return sum(trial.status in ("TERMINATED", "ERROR") for trial in trials)


def print_line(line: str) -> None:
    print(line, flush=True)
