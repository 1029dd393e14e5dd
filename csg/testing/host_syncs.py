"""Count the places where csg's own code reads a tensor's value on the host.

On a GPU each such read (`.item()`, `.tolist()`, `.numpy()`, `bool()`, `int()`, `float()` of a
tensor) waits for the device to finish its queued work; `torch.cuda.set_sync_debug_mode`
reports them there. On a CPU nothing waits, so this counter finds them instead: it wraps those
tensor methods while active and counts the calls made from files under `root` (csg's package by
default), per call site, leaving PyTorch's own internals out.
"""
from __future__ import annotations

import sys
from collections import Counter
from pathlib import Path

import torch

READS = ("item", "tolist", "numpy", "__bool__", "__int__", "__float__")


class HostSyncCounter:
    """`with HostSyncCounter() as syncs: ...`, then `syncs.total` and `syncs.sites`
    ('file:line' -> calls)."""

    def __init__(self, root: str | Path | None = None):
        self.root = str(Path(root) if root is not None else Path(__file__).resolve().parents[1])
        self.sites: Counter = Counter()
        self._saved: dict = {}

    @property
    def total(self) -> int:
        return sum(self.sites.values())

    def __enter__(self) -> HostSyncCounter:
        self._saved = {name: getattr(torch.Tensor, name) for name in READS}
        for name, original in self._saved.items():
            setattr(torch.Tensor, name, self._counting(original))
        return self

    def __exit__(self, *exc) -> None:
        for name, original in self._saved.items():
            setattr(torch.Tensor, name, original)

    def _counting(self, original):
        def read(tensor, *args, **kwargs):
            caller = sys._getframe(1).f_code
            if caller.co_filename.startswith(self.root):
                self.sites[f"{Path(caller.co_filename).name}:{sys._getframe(1).f_lineno}"] += 1
            return original(tensor, *args, **kwargs)

        return read
