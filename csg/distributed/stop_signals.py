"""Ctrl-C and `ray job stop` end a run as `interrupted`, never as a row that says `running`."""
from __future__ import annotations

import signal
import threading


class StopSignals:
    """For the life of a `with` block: route SIGTERM (what `ray job stop` sends) to the SIGINT
    handler in force - Ray Train's graceful abort inside `fit`, KeyboardInterrupt outside it -
    remember which signal came, and put both handlers back afterwards (Ray Train leaves its
    handler installed after `fit`, where a later Ctrl-C would abort a controller long gone).
    Signals reach the main thread only; elsewhere (a Tune trial) this does nothing."""

    def __init__(self):
        self.received: str | None = None
        self._saved: dict = {}

    def __enter__(self) -> StopSignals:
        if threading.current_thread() is threading.main_thread():
            self._saved = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
            signal.signal(signal.SIGINT, self._on_sigint)
            signal.signal(signal.SIGTERM, self._on_sigterm)
        return self

    def __exit__(self, *exc) -> None:
        for signum, handler in self._saved.items():
            signal.signal(signum, handler)

    def _on_sigint(self, signum, frame):
        self.received = self.received or "SIGINT"
        raise KeyboardInterrupt

    def _on_sigterm(self, signum, frame):
        self.received = self.received or "SIGTERM"
        handler = signal.getsignal(signal.SIGINT)
        if handler == self._on_sigint or not callable(handler):
            raise KeyboardInterrupt
        handler(signal.SIGINT, frame)
