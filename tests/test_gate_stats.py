"""Gate statistics (Appendix E) by hand and from seeded runs, and the fixed gate built from them."""
import numpy as np
import pandas as pd
import pytest
import torch

from analysis.compare import legend
from analysis.gate_stats import balance_line, gate_counts, summarize
from csg.cli import get_args_parser, parse_config
from csg.config import TrainConfig
from csg.distributed.ray_train import make_gate
from csg.method.gate import classes_without_filters, fixed_gate_matrix
from csg.store.results import ResultStore
from csg.store.run_record import summary_line
from tests.helpers import documented_columns, job_main, written_columns

#                 f0   f1   f2   f3   f4   f5
GATE = np.array([[1.0, 0.6, 0.4, 1.0, 0.2, 0.5],   # class 0
                 [0.0, 0.2, 0.9, 1.0, 0.3, 0.5],   # class 1
                 [0.0, 0.1, 0.0, 0.0, 0.4, 0.5]])  # class 2


@pytest.mark.parametrize("tau, monopolized, shared, unused", [
    (0.5, [2, 1, 0], 1, 2),   # f0, f1 | f2 | -; shared f3; unused f4, f5 (G = tau does not own: Sec. 4.2, G > 0.5)
    (0.95, [1, 0, 0], 1, 4),  # f0 | - | -; shared f3; unused f1, f2, f4, f5
])
def test_counts_on_a_hand_built_gate(tau, monopolized, shared, unused):
    counts = gate_counts(GATE, tau)
    assert counts["monopolized"].tolist() == monopolized
    assert set(counts["shared"]) == {shared} and set(counts["unused"]) == {unused}


def test_summary_is_per_class_m1_and_per_run_m2():
    stats = pd.concat([gate_counts(GATE).assign(run_id="a"),
                       gate_counts(np.ones((3, 6))).assign(run_id="b")], ignore_index=True)
    per_class, m2_mean, m2_std = summarize(stats)
    assert per_class["m1_mean"].tolist() == [1.0, 0.5, 0.0]
    assert (m2_mean, m2_std) == (3.5, pytest.approx(np.std([1, 6], ddof=1)))


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_two_seeds_at_once_give_gate_stats_for_every_run_and_class(ray_local, tmp_path):
    stats = job_main("seeds_cifar")(["--dataset", "digits", "--epochs", "2", "--batch-size", "64", "--seeds", "2",
                                     "--max-concurrent", "2", "--results", str(tmp_path)])
    table = pd.read_parquet(tmp_path / "gate_stats")
    assert len(table) == 20 and table.groupby("run_id", observed=True).size().eq(10).all()
    assert sorted(table["seed"].unique()) == [0, 1]
    assert (table.groupby("run_id", observed=True)["monopolized"].sum()
            + table.groupby("run_id", observed=True)["shared"].first()
            + table.groupby("run_id", observed=True)["unused"].first() <= 64).all()
    assert len(stats) == 20
    assert written_columns(tmp_path, "gate_stats") == documented_columns("gate_stats")


def _stats_table(root, monopolized, shared, classes=10):
    store = ResultStore(str(root))
    for run, (m1, m2) in enumerate(zip(monopolized, shared)):
        store.write("gate_stats", f"r{run}", pd.DataFrame({
            "seed": run, "class": range(classes), "monopolized": m1, "shared": m2, "unused": 0, "tau": 0.5}))


def test_fixed_gate_from_builds_the_matrix_of_the_rounded_means(tmp_path):
    _stats_table(tmp_path, monopolized=[3, 4, 4], shared=[5, 6, 6])  # m1 3.67 -> 4, m2 5.67 -> 6
    parser = get_args_parser("cifar10-resnet20", "test")
    cfg, info, _ = parse_config(parser, ["--dataset", "digits", "--fixed-gate-from", str(tmp_path)])
    assert (cfg.gate, cfg.m1, cfg.m2) == ("fixed", 4, 6)
    gate = make_gate(cfg, info.num_classes, 64).matrix
    assert torch.equal(gate, fixed_gate_matrix(10, 64, 4, 6))
    assert gate.sum(1).tolist() == [10.0] * 10  # each class: its 4 filters and the 6 shared


@pytest.mark.parametrize("setup, message", [
    (lambda root: None, "needs a gate_stats table"),
    (lambda root: _stats_table(root, [3], [2], classes=7), "cover 7 classes, this data set has 10"),
])
def test_fixed_gate_from_refuses_missing_or_mismatched_stats(tmp_path, capsys, setup, message):
    setup(tmp_path)
    with pytest.raises(SystemExit) as exit_info:
        parse_config(get_args_parser("cifar10-resnet20", "test"),
                     ["--dataset", "digits", "--fixed-gate-from", str(tmp_path)])
    assert exit_info.value.code == 2 and message in capsys.readouterr().err


def test_a_class_without_filters_is_named_in_the_balance_and_summary_lines():
    gate = np.array([[0.2, 0.1, 0.0], [1.0, 0.6, 0.0], [0.0, 0.3, 1.0], [0.4, 0.0, 0.0]])
    assert classes_without_filters(gate) == [0, 3]
    assert "classes 0, 3 own no filter (G > 0.5)" in balance_line(gate)
    assert "own no filter" not in balance_line(gate[1:3])
    summary = {"epochs_completed": 2, "final_acc": 0.9, "best_acc": 0.9, "mis": 0.2, "l1_density": 0.3,
               "l1_interval_low": 0.25, "l1_interval_high": 0.25, "wall_time_s": 3.0}
    lines = summary_line("r", TrainConfig(method="csg"), {**summary, "classes_without_filters": [2]}).splitlines()
    assert len(lines) == 3 and lines[2].strip().startswith("class 2 owns no filter (G > 0.5)")
    assert len(summary_line("r", TrainConfig(method="csg"), {**summary, "classes_without_filters": []}).splitlines()) == 2


@pytest.mark.parametrize("density, words", [(0.25, "inside [1/C, g/(CK)] = [0.25, 0.25] (the gate reached"),
                                            (0.3, "outside [1/C, g/(CK)] = [0.25, 0.25] (the gate is not yet")])
def test_the_summary_line_says_what_each_number_means(density, words):
    summary = {"epochs_completed": 2, "final_acc": 0.9, "best_acc": 0.95, "mis": 0.2, "l1_density": density,
               "l1_interval_low": 0.25, "l1_interval_high": 0.25, "wall_time_s": 3.0}
    numbers = summary_line("r", TrainConfig(method="csg"), summary).splitlines()[1]
    assert "accuracy 0.9000 (best 0.9500; higher is better)" in numbers
    assert "MIS 0.2000 (higher is more class-specific)" in numbers and f"L1-density {density:.4f} {words}" in numbers
    assert "L1-density" not in summary_line("r", TrainConfig(method="std"), summary)


@pytest.mark.parametrize("density, verdict", [(0.1005, "inside"), (0.4, "outside")])
def test_table1_legend_says_whether_the_gate_reached_its_interval(density, verdict):
    runs = pd.DataFrame({"run_id": ["c", "s"], "method": ["csg", "std"], "l1_density": [density, float("nan")],
                         "l1_interval_low": [0.1, None], "l1_interval_high": [0.1, None]})
    lines = legend(runs, {"c": "CSG"})
    assert len(lines) == 2 and "higher is better" in lines[0]
    assert f"CSG's {density:.4f} is {verdict} its L1-interval [1/C, g/(CK)] = [0.1, 0.1]" in lines[1]
