import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from csg.method.gate import (
    ClassSpecificGate,
    FixedGate,
    fixed_gate_matrix,
    g_from_density,
    l1_density,
    l1_interval,
    project_columns_,
    sparsity_loss,
)

values = st.floats(-5, 5, allow_nan=False, width=32) | st.sampled_from([0.0, -0.0, 1e-30])


@settings(max_examples=200, deadline=None)
@given(arrays(np.float32, st.tuples(st.integers(1, 12), st.integers(1, 12)), elements=values))
def test_projection_lands_in_the_feasible_set(raw):
    gate = project_columns_(torch.from_numpy(raw.copy()))
    assert torch.isfinite(gate).all()
    assert (gate >= 0).all() and (gate <= 1).all()
    assert torch.equal(gate.amax(dim=0), torch.ones(raw.shape[1]))


def test_projection_scales_each_column_by_its_max():
    gate = torch.tensor([[2.0, 0.5, 0.0], [1.0, -0.25, 0.0], [4.0, 0.25, -1.0]])
    project_columns_(gate)
    expected = torch.tensor([[0.5, 1.0, 1.0], [0.25, 0.0, 1.0], [1.0, 0.5, 1.0]])
    assert torch.equal(gate, expected)


def test_projection_is_idempotent_on_feasible_gates():
    gate = fixed_gate_matrix(4, 9, 2, 1)  # every column has a 1
    gate[gate == 0] = 0.3
    assert torch.equal(project_columns_(gate.clone()), gate)


@pytest.mark.parametrize("psi", ["l1", "l2", "smooth_l1"])
def test_sparsity_loss_value_and_gradient(psi):
    gate = torch.full((3, 4), 0.5, requires_grad=True)  # ||G||_1 = 6
    loss = sparsity_loss(gate, g=4.0, psi=psi)
    excess = 2.0
    expected_value = {"l1": excess, "l2": excess**2, "smooth_l1": excess - 0.5}[psi]
    expected_slope = {"l1": 1.0, "l2": 2 * excess, "smooth_l1": 1.0}[psi]
    loss.backward()
    assert loss.item() == pytest.approx(expected_value)
    assert torch.allclose(gate.grad, torch.full((3, 4), expected_slope))


@pytest.mark.parametrize("psi", ["l1", "l2", "smooth_l1"])
def test_sparsity_loss_is_zero_below_g(psi):
    gate = torch.full((3, 4), 0.25, requires_grad=True)  # ||G||_1 = 3 < g
    loss = sparsity_loss(gate, g=4.0, psi=psi)
    loss.backward()
    assert loss.item() == 0.0
    assert torch.equal(gate.grad, torch.zeros(3, 4))


def test_smooth_l1_is_quadratic_near_zero():
    gate = torch.full((2, 2), 0.25, requires_grad=True)  # excess 0.5 below the beta=1 knee
    assert sparsity_loss(gate, 0.5, "smooth_l1").item() == pytest.approx(0.5 * 0.5**2)


def test_unknown_psi_is_refused():
    with pytest.raises(ValueError, match="psi"):
        sparsity_loss(torch.ones(2, 2), 1.0, "l3")


def test_density_and_interval():
    assert l1_density(torch.tensor([[1.0, 0.0], [0.5, 0.5]])) == 0.5
    assert l1_interval(10, 0.2) == (0.1, 0.2)
    assert g_from_density(0.1, 10, 64) == pytest.approx(64)
    with pytest.raises(ValueError, match="g_density"):
        g_from_density(0.05, 10, 64)


def test_fixed_gate_monopolized_and_shared_filters():
    gate = fixed_gate_matrix(num_classes=3, num_filters=10, m1=2, m2=3)
    expected = torch.tensor(
        [
            [1, 1, 0, 0, 0, 0, 1, 1, 1, 0],
            [0, 0, 1, 1, 0, 0, 1, 1, 1, 0],
            [0, 0, 0, 0, 1, 1, 1, 1, 1, 0],
        ],
        dtype=torch.float32,
    )
    assert torch.equal(gate, expected)
    with pytest.raises(ValueError, match="m1"):
        fixed_gate_matrix(3, 10, 3, 2)


def test_gather_picks_each_samples_class_row():
    gate = ClassSpecificGate(3, 4)
    with torch.no_grad():
        gate.weight.copy_(torch.arange(12.0).view(3, 4))
    rows = gate(torch.tensor([2, 0, 2]))
    assert torch.equal(rows, torch.tensor([[8.0, 9, 10, 11], [0, 1, 2, 3], [8, 9, 10, 11]]))


def test_fixed_gate_is_constant():
    gate = FixedGate(2, 5, 2, 1)
    assert not list(gate.parameters())
    gate.project_()
    assert torch.equal(gate.matrix, fixed_gate_matrix(2, 5, 2, 1))
