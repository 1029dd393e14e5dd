"""The Class-Specific Gate G in [0, 1]^{C x K} (paper Sec. 3.2-3.3, Appendices A and E).

A learned gate is a parameter updated by gradient descent and projected back onto
V_G = {G : max_c G[c, k] = 1 for every filter k} after each step. A fixed gate is a
constant buffer in which every class monopolizes m1 filters and m2 filters are shared.
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

PSI_CHOICES = ("l1", "l2", "smooth_l1")


class ClassSpecificGate(nn.Module):
    """Holds G and gathers one gate row per sample: the CSG path's G[y]."""

    learnable = True

    def __init__(self, num_classes: int, num_filters: int):
        super().__init__()
        # All-ones is the projection's fixed point: every filter starts open for every class.
        self.weight = nn.Parameter(torch.ones(num_classes, num_filters))

    @property
    def matrix(self) -> torch.Tensor:
        return self.weight

    def forward(self, labels: torch.Tensor) -> torch.Tensor:
        """(N,) int labels -> (N, K) gate rows, by gather rather than a per-sample loop."""
        return self.matrix.index_select(0, labels)

    @torch.no_grad()
    def project_(self) -> None:
        project_columns_(self.weight)

    def l1_density(self) -> float:
        return l1_density(self.matrix.detach())


class FixedGate(ClassSpecificGate):
    """Appendix E: class c owns filters [c*m1, (c+1)*m1), the next m2 filters serve all classes."""

    learnable = False

    def __init__(self, num_classes: int, num_filters: int, m1: int, m2: int):
        nn.Module.__init__(self)
        self.register_buffer("fixed", fixed_gate_matrix(num_classes, num_filters, m1, m2))

    @property
    def matrix(self) -> torch.Tensor:
        return self.fixed

    def project_(self) -> None:
        pass


def fixed_gate_matrix(num_classes: int, num_filters: int, m1: int, m2: int) -> torch.Tensor:
    if m1 < 1 or m2 < 0 or m1 * num_classes + m2 > num_filters:
        raise ValueError(
            f"fixed gate needs m1 >= 1, m2 >= 0 and m1*C + m2 <= K "
            f"(got m1={m1}, m2={m2}, C={num_classes}, K={num_filters})"
        )
    gate = torch.zeros(num_classes, num_filters)
    for c in range(num_classes):
        gate[c, c * m1 : (c + 1) * m1] = 1.0
    shared_start = num_classes * m1
    gate[:, shared_start : shared_start + m2] = 1.0
    return gate


def project_columns_(gate: torch.Tensor) -> torch.Tensor:
    """Approximate PGD step: divide each column by its max over classes, clip to [0, 1].

    A column with no positive entry has no meaningful scale; it is reset to all ones
    (the filter re-opens for every class) instead of producing 0/0.
    """
    col_max = gate.amax(dim=0, keepdim=True)
    dead = col_max <= 0
    gate.div_(torch.where(dead, torch.ones_like(col_max), col_max))
    gate.masked_fill_(dead.expand_as(gate), 1.0)
    gate.clamp_(0.0, 1.0)
    return gate


def sparsity_loss(gate: torch.Tensor, g: float, psi: str = "l1") -> torch.Tensor:
    """d(||G||_1, g) = psi(ReLU(||G||_1 - g)): zero while ||G||_1 <= g."""
    excess = F.relu(gate.abs().sum() - g)
    if psi == "l1":
        return excess
    if psi == "l2":
        return excess.pow(2)
    if psi == "smooth_l1":
        return F.smooth_l1_loss(excess, torch.zeros_like(excess), reduction="sum")
    raise ValueError(f"psi must be one of {PSI_CHOICES} (got {psi!r})")


def l1_density(gate: torch.Tensor) -> float:
    """||G||_1 / (C*K), the fraction of the gate that is open."""
    return float(gate.abs().sum() / gate.numel())


def l1_interval(num_classes: int, g_density: float) -> tuple[float, float]:
    """Appendix A: the L1-density converges into [1/C, g/(C*K)]."""
    return 1.0 / num_classes, g_density


INTERVAL_TOLERANCE = 0.01  # inside the interval: within 1% of its ends


def inside_interval(density: float, low: float | None, high: float | None) -> bool:
    """Whether an L1-density lies in its interval [1/C, g/(C*K)], i.e. the gate reached the
    sparsity its g asks for (within INTERVAL_TOLERANCE of the ends); False when unknown."""
    if low is None or high is None or density is None or np.isnan(density) or np.isnan(low):
        return False
    return low * (1 - INTERVAL_TOLERANCE) <= density <= high * (1 + INTERVAL_TOLERANCE)


def g_from_density(g_density: float, num_classes: int, num_filters: int) -> float:
    g = g_density * num_classes * num_filters
    if g < num_filters * (1 - 1e-9):
        raise ValueError(
            f"g_density must be >= 1/C = {1 / num_classes:.6g} so that g >= K (got {g_density})"
        )
    return g


# A class owns filter k when G[c, k] > tau: the paper's rule, "G_c^k > 0.5" (Sec. 4.2), for
# masking, the monopolized and shared counts, and the balance lines alike.
DEFAULT_TAU = 0.5


def owns(gate, tau: float = DEFAULT_TAU) -> np.ndarray:
    """(C, K) bool: class c owns filter k, G[c, k] > tau."""
    return np.asarray(gate) > tau


def filters_owned(gate, tau: float = DEFAULT_TAU) -> np.ndarray:
    """Filters each class owns, G[c, k] > tau (the filters the gate rule of masking zeroes)."""
    return owns(gate, tau).sum(axis=1)


def classes_without_filters(gate, tau: float = DEFAULT_TAU) -> list[int]:
    """The classes that own no filter: masking one of them by its gate masks nothing."""
    return np.flatnonzero(filters_owned(gate, tau) == 0).tolist()


def empty_classes_note(classes: list[int], tau: float = DEFAULT_TAU) -> str:
    """One line for a gate that left classes without a filter, or ''."""
    if not classes:
        return ""
    which = f"class {classes[0]} owns" if len(classes) == 1 else f"classes {', '.join(map(str, classes))} own"
    return (f"{which} no filter (G > {tau:g}): the gate gave {'it' if len(classes) == 1 else 'them'} nothing to mask; "
            f"see docs/sweeps.md, gate balance")
