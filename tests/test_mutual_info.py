"""The fast MI estimator against scikit-learn's reference, cell by cell, within 1e-9."""
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from csg.method.mutual_info import _sorted_pairs, mi_matrix, mis

TOLERANCE = 1e-9


@st.composite
def feature_sets(draw):
    n = draw(st.integers(8, 120))
    k = draw(st.integers(1, 4))
    n_classes = draw(st.integers(2, 6))
    seed = draw(st.integers(0, 2**31 - 1))
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, n_classes, n)
    kind = draw(st.sampled_from(["normal", "relu", "duplicates", "constant", "one-sample-class", "absent-class"]))
    x = rng.normal(size=(n, k)) + 0.5 * labels[:, None]
    if kind == "relu":
        x = np.maximum(x - 0.5, 0)  # many exact zeros
    elif kind == "duplicates":
        x = np.round(x, 1)  # long runs of equal values
    elif kind == "constant":
        x[:, 0] = 3.0
    elif kind == "one-sample-class":
        labels[labels == 0] = 1
        labels[0] = 0
    elif kind == "absent-class":
        n_classes += 1  # the last class never occurs
    dtype = draw(st.sampled_from([np.float64, np.float32]))
    return x.astype(dtype), labels, n_classes, draw(st.integers(0, 5))


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(feature_sets(), st.sampled_from([3, 1, 5]))
def test_fast_equals_sklearn_cell_by_cell(case, n_neighbors):
    x, labels, n_classes, random_state = case
    fast = mi_matrix(x, labels, n_classes, n_neighbors, random_state, method="fast")
    reference = mi_matrix(x, labels, n_classes, n_neighbors, random_state, method="sklearn")
    assert fast.shape == (x.shape[1], n_classes)
    np.testing.assert_allclose(fast, reference, rtol=0, atol=TOLERANCE)


def test_agreement_on_relu_activations_with_many_classes():
    rng = np.random.default_rng(1)
    labels = rng.integers(0, 40, 3000)
    x = np.maximum(rng.normal(size=(3000, 6)) + rng.normal(size=(40, 6))[labels], 0).astype(np.float32)
    fast = mi_matrix(x, labels, 40)
    reference = mi_matrix(x, labels, 40, method="sklearn")
    np.testing.assert_allclose(fast, reference, rtol=0, atol=TOLERANCE)
    assert fast.max() > 0.01  # there is signal to agree on


def test_mis_is_mean_of_per_filter_max():
    assert mis(np.array([[0.1, 0.3], [0.2, 0.0]])) == pytest.approx(0.25)


def test_radix_sort_orders_every_kind_of_double_and_carries_labels():
    rng = np.random.default_rng(0)
    values = np.concatenate([rng.normal(size=500) * 10.0 ** rng.integers(-300, 300, 500),
                             [0.0, -0.0, np.inf, -np.inf, 5e-324, -5e-324, 1.0, 1.0]])
    labels = np.arange(len(values))
    xs, ls = _sorted_pairs(values, labels)
    np.testing.assert_array_equal(xs, np.sort(values))
    np.testing.assert_array_equal(values[ls], xs)  # each label still sits with its value


def test_bad_shapes_and_methods_are_refused():
    with pytest.raises(ValueError, match="features must be"):
        mi_matrix(np.zeros(5), np.zeros(5, dtype=int))
    with pytest.raises(ValueError, match="method"):
        mi_matrix(np.zeros((5, 1)), np.zeros(5, dtype=int), method="kraskov")
    with pytest.raises(ValueError, match="NaN or infinity"):
        mi_matrix(np.array([[0.0], [np.nan], [1.0]]), np.array([0, 1, 0]))
