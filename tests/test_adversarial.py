"""Adversarial-sample detection: the attacks, the leak-free detector protocol, the job and its table."""
import numpy as np
import pandas as pd
import pytest
import torch

from analysis.adversarial import (
    attack_pool,
    detector_error,
    detector_split,
    draw_pool,
    random_targets,
)
from csg.data import split_labels
from csg.store.checkpoint import checkpoint_split
from tests.helpers import documented_columns, job_main, written_columns


def test_targets_are_always_another_class_and_cover_them_all():
    labels = torch.arange(10).repeat(200)
    targets = random_targets(labels, 10, torch.Generator().manual_seed(0))
    assert not (targets == labels).any()
    assert all(set(targets[labels == c].tolist()) == set(range(10)) - {c} for c in range(10))


def test_no_image_is_in_both_a_detectors_training_and_test_sets():
    rng = np.random.default_rng(0)
    labels = np.repeat(np.arange(4), 30)
    train, test = detector_split(labels, 20, 10, rng)
    assert not set(train) & set(test)
    assert all((labels[train] == c).sum() == 20 and (labels[test] == c).sum() == 10 for c in range(4))


def test_a_pool_larger_than_a_class_is_an_error():
    with pytest.raises(ValueError, match="needs 5 images of class 1; the split has 3"):
        draw_pool(np.array([0] * 5 + [1] * 3), 5, np.random.default_rng(0))


def test_detector_finds_a_known_signal_and_not_noise():
    rng = np.random.default_rng(0)
    labels = np.repeat(np.arange(5), 40)
    clean = rng.normal(size=(200, 30))
    train, test = detector_split(labels, 30, 10, rng)
    assert detector_error(clean, clean + 3.0, train, test, seed=0) < 0.02  # shifted: separable
    same = detector_error(clean, rng.normal(size=(200, 30)), train, test, seed=0)
    assert 0.3 < same < 0.7  # same distribution: a coin flip


# Budgets large enough to move 8x8 digits (the paper's eps = 0.031 is for CIFAR-10).
STRONG = {"fgsm": {"eps": 0.3}, "pgd": {"eps": 0.3, "alpha": 0.05, "steps": 10},
          "cw": {"c": 10.0, "steps": 50, "lr": 0.05}}


@pytest.mark.slow
@pytest.mark.parametrize("name, floor", [("fgsm", 0.5), ("pgd", 0.8), ("cw", 0.5)])
def test_each_attack_changes_most_predictions(digits_run, name, floor):
    _, row = digits_run
    labels = split_labels(checkpoint_split(row["checkpoint"], "test"))
    pool = draw_pool(labels, 10, np.random.default_rng(0))
    out = attack_pool(row["checkpoint"], "test", pool, name, STRONG[name], seed=0)
    assert out["changed"].mean() > floor, out["changed"].mean()
    assert out["clean"].shape == out["adversarial"].shape and out["clean"].shape[0] == 100


@pytest.mark.slow
def test_adversarial_job_writes_the_documented_table(digits_copy, capsys):
    results, row = digits_copy
    frame = job_main("analyze")(["adversarial", "--results", str(results), "--runs", row["run_id"],
                                 "--attacks", "fgsm", "pgd", "--eps", "0.3", "--train-per-class", "10", "20",
                                 "--test-per-class", "5", "--repeats", "2", "--split", "test"])
    table = pd.read_parquet(results / "adversarial")
    assert len(frame) == len(table) == 2 * 2 * 2
    assert set(table["n_test"]) == {2 * 5 * 10} and set(table["n_train"]) == {2 * 10 * 10, 2 * 20 * 10}
    assert table["error_rate"].between(0, 1).all()
    assert written_columns(results, "adversarial") == documented_columns("adversarial")
    assert "Table 3" in capsys.readouterr().out


@pytest.mark.slow
@pytest.mark.parametrize("budget", [1, 4])
def test_local_search_never_changes_more_pixels_than_its_budget(digits_run, budget):
    from analysis.blackbox import LocalSearch, local_search
    from csg.store.checkpoint import restore_model

    _, row = digits_run
    model, _, _ = restore_model(row["checkpoint"])
    dataset = checkpoint_split(row["checkpoint"], "test")
    rng = np.random.default_rng(0)
    for i in range(0, 360, 40):
        image, label = dataset[i]
        adversarial, changed = local_search(model, image.clone(), int(label), rng,
                                            LocalSearch(per_round=3, max_pixels=budget))
        moved = (adversarial != image).any(dim=0).sum().item()
        assert moved <= changed <= budget
        assert adversarial.min() >= 0 and adversarial.max() <= 1


# Floors measured on this digits model with some margin: five-pixel differential evolution
# moves most images; local search with its default budget about a quarter to a half of them.
@pytest.mark.slow
@pytest.mark.parametrize("name, options, floor", [
    ("onepixel", {"pixels": 5, "steps": 20}, 0.4),
    ("localsearch", {}, 0.15),
])
def test_black_box_attacks_change_predictions(digits_run, name, options, floor):
    from analysis.blackbox import attack_sample, blackbox_row

    _, row = digits_run
    outcome = attack_sample(row["checkpoint"], name, np.arange(0, 360, 36), options, seed=0)
    assert blackbox_row(outcome)["success_rate"] > floor


@pytest.mark.slow
def test_blackbox_job_writes_the_documented_table(digits_copy):
    results, row = digits_copy
    frame = job_main("analyze")(["blackbox", "--results", str(results), "--runs", row["run_id"],
                                 "--images", "6", "--ls-max-pixels", "5", "--de-steps", "2"])
    table = pd.read_parquet(results / "blackbox")
    assert len(frame) == len(table) == 2 and set(table["n_images"]) == {6}
    assert written_columns(results, "blackbox") == documented_columns("blackbox")
