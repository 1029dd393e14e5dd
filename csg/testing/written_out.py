"""A built-in model's gated forward written out by hand, without csg.attach's hook: the
computation the built-in models ran before they were attached like any other. The tests
check the two bit for bit; bench/train.py times one against the other."""
from __future__ import annotations

from torch import nn


class WrittenOut(nn.Module):
    """fc(GAP(A * G[y])) over `gated.net.stages`, for a built-in (staged) model."""

    def __init__(self, gated):
        super().__init__()
        self.gated = gated

    def forward(self, x, gate_rows=None):
        activation = (x - self.gated.mean) / self.gated.std
        for stage in self.gated.net.stages.values():
            activation = stage(activation)
        if gate_rows is not None:
            activation = activation * gate_rows[:, :, None, None]
        return self.gated.net.fc(activation.mean(dim=(2, 3)))
