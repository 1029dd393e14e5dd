"""The class-specificity studies on hand-built inputs whose answers are known, and their bad input."""
import numpy as np
import pandas as pd
import pytest

from analysis import correlation, kmeans, masking, similarity
from analysis.catalog import STUDIES
from analysis.studies import RunArrays, StudyError, filter_groups
from tests.helpers import copy_results, fabricated_runs, job_main

C, PER_CLASS = 3, 20


def block_model(noise: float = 0.1) -> RunArrays:
    """Class c owns filters 2c and 2c+1 in a fixed gate, activates them at 1 and every other
    filter at `noise`, and the head reads class c from its two filters only."""
    k = 2 * C
    labels = np.repeat(np.arange(C), PER_CLASS)
    gate = np.zeros((C, k))
    for c in range(C):
        gate[c, 2 * c:2 * c + 2] = 1.0
    features = noise + (1 - noise) * gate[labels]
    return RunArrays(features=features, labels=labels, predictions=labels, fc_weight=gate.copy(),
                     fc_bias=np.zeros(C), filters=np.eye(k), gate=gate)


def recall_of(rows: pd.DataFrame, column: str) -> np.ndarray:
    matrix = rows.pivot(index="true_class", columns="predicted_class", values=column).to_numpy()
    return np.diag(matrix) / matrix.sum(axis=1)


def test_masking_a_class_filters_by_the_gate_kills_that_class_alone():
    rows = masking.mask_rows(block_model(), "r", (0,), masking.GateRule(0.5))
    assert set(rows["n_masked"]) == {2}
    assert recall_of(rows, "before_count").tolist() == [1.0, 1.0, 1.0]
    assert recall_of(rows, "count").tolist() == [0.0, 1.0, 1.0]
    assert rows["count"].sum() == rows["before_count"].sum() == C * PER_CLASS


def test_masking_two_classes_and_the_recall_summary():
    rows = masking.mask_rows(block_model(), "r", (0, 2), masking.GateRule(0.5))
    summary = masking.recalls(rows).iloc[0]
    assert (summary["masked_before"], summary["masked_after"]) == (1.0, 0.0)
    assert (summary["others_before"], summary["others_after"]) == (1.0, 1.0)


def test_activation_rule_picks_the_most_active_filters_of_the_classes():
    selected = masking.ActivationRule(fraction=2 / 6).select(block_model(), (1,))
    assert np.flatnonzero(selected).tolist() == [2, 3]


def test_random_rule_masks_as_many_filters_as_the_runs_own_rule():
    rule = masking.rule_for("random", "csg", tau=0.5, fraction=0.1, seed=0)
    selected = rule.select(block_model(), (0, 1))
    assert selected.sum() == 4


def test_a_mask_set_that_masks_every_filter_is_refused():
    with pytest.raises(StudyError, match="masks all 6 filters"):
        masking.mask_rows(block_model(), "r", (0, 1, 2), masking.GateRule(0.5))


def test_similarity_of_a_feature_equal_to_its_gate_row_is_one():
    arrays = block_model(noise=0.0)
    rows = similarity.similarity_rows(arrays, "r")
    tp = rows[rows["subset"] == "tp"].pivot(index="true_class", columns="gate_class", values="cosine").to_numpy()
    assert np.allclose(tp, np.eye(C))  # own row: 1; the others are orthogonal here
    fn = rows[rows["subset"] == "fn"]
    assert fn["cosine"].isna().all() and (fn["n_samples"] == 0).all()  # no false negatives


def test_false_negatives_are_the_misclassified_samples_of_a_class():
    arrays = block_model(noise=0.0)
    arrays.predictions = arrays.predictions.copy()
    arrays.predictions[:5] = 1  # five class-0 samples called class 1
    rows = similarity.similarity_rows(arrays, "r").set_index(["subset", "true_class", "gate_class"])
    assert rows.loc[("fn", 0, 0), "n_samples"] == 5 and rows.loc[("tp", 0, 0), "n_samples"] == PER_CLASS - 5
    assert rows.loc[("fn", 0, 0), "cosine"] == pytest.approx(1.0)


def block_orthogonal_filters(groups=3, per_group=2, seed=0) -> np.ndarray:
    """Each group's filters span their own coordinates: cosines vanish across groups."""
    rng = np.random.default_rng(seed)
    dim = groups * 4
    filters = np.zeros((groups * per_group, dim))
    for g in range(groups):
        filters[g * per_group:(g + 1) * per_group, g * 4:(g + 1) * 4] = rng.uniform(0.5, 1.0, (per_group, 4))
    return filters


def test_block_orthogonal_weights_give_a_block_diagonal_matrix_and_no_cross_block_ratio():
    filters = block_orthogonal_filters()
    matrix = correlation.correlation_matrix(filters)
    groups = np.repeat(np.arange(3), 2)
    cross = groups[:, None] != groups[None, :]
    assert np.allclose(matrix[cross], 0) and (matrix[~cross] > 0.5).all()
    within = matrix[~cross & ~np.eye(6, dtype=bool)]
    ratios = correlation.ratios(matrix, [0.0, within.min() / 2, within.max() + 1e-9])
    assert ratios.tolist() == [1.0, pytest.approx(6 / 30), 0.0]  # 6 within-block pairs of 30
    arrays = block_model()
    assert correlation.inter_class_correlation(matrix, correlation.top_groups(
        arrays.features, arrays.labels, C, 2)) == pytest.approx(0.0)


def test_inter_class_correlation_is_the_mean_over_pairs_of_different_groups():
    matrix = np.full((4, 4), 0.3)
    np.fill_diagonal(matrix, 1.0)
    groups = np.array([[True, True, False, False], [False, False, True, True]])
    assert correlation.inter_class_correlation(matrix, groups) == pytest.approx(0.3)


def test_filters_are_grouped_by_their_gate_class_then_by_strength():
    arrays = block_model()
    arrays.gate = arrays.gate[:, [5, 0, 3, 1, 4, 2]]  # shuffle the filters
    groups = filter_groups(arrays).sort_values("position")
    assert groups["group"].tolist() == [0, 0, 1, 1, 2, 2] and set(groups["ordering"]) == {"gate"}
    arrays.gate = None
    assert set(filter_groups(arrays)["ordering"]) == {"activation"}


def test_kmeans_recovers_well_separated_clusters():
    rng = np.random.default_rng(0)
    labels = np.repeat(np.arange(4), 50)
    centres = np.eye(4) * 10
    found = kmeans.cluster(centres[labels] + rng.normal(0, 0.1, (200, 4)), labels, 4, n_init=3, seed=0)
    assert found["purity"] == 1.0 and found["ari"] == pytest.approx(1.0)
    assert np.allclose(found["centers"], centres[found["matched_class"]], atol=0.1)


# -- bad input: one line naming the option, exit 2, nothing written --------------------------

BAD = {
    "unknown run": (["masking", "--runs", "c", "nope"], "--runs"),
    "different data sets": (["kmeans", "--runs", "c", "other"], "--runs"),
    "class outside C": (["masking", "--runs", "c", "s", "--mask-sets", "0,10"], "--mask-sets"),
    "mask set not numbers": (["masking", "--runs", "c", "--mask-sets", "zero"], "--mask-sets"),
    "tau outside (0, 1)": (["masking", "--runs", "c", "--tau", "1"], "--tau"),
    "fraction outside (0, 1]": (["masking", "--runs", "s", "--fraction", "0"], "--fraction"),
    "gate rule on an STD run": (["masking", "--runs", "c", "s", "--rule", "gate"], "--rule"),
    "similarity of an STD run": (["similarity", "--runs", "c", "s"], "--runs"),
    "similarity order not a permutation": (["similarity", "--runs", "c", "--order", "0", "1"], "--order"),
    "m1 above K": (["correlation", "--runs", "c", "--m1", "65"], "--m1"),
    "n-init below 1": (["kmeans", "--runs", "c", "--n-init", "0"], "--n-init"),
    "report of an unknown run": (["report", "--runs", "c", "nope"], "--runs"),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_study_input_is_one_line_exit_2_and_writes_nothing(case, tmp_path, capsys):
    fabricated_runs(tmp_path, {"c": ("csg", "digits"), "s": ("std", "digits"), "other": ("std", "cifar10")})
    before = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*"))
    argv, option = BAD[case]
    with pytest.raises(SystemExit) as exit_info:
        job_main("analyze")([argv[0], "--results", str(tmp_path), *argv[1:]])
    err = capsys.readouterr().err
    assert exit_info.value.code == 2
    assert len(err.strip().splitlines()) == 1 and option in err, err
    assert sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*")) == before


@pytest.mark.slow
def test_a_mask_set_masking_every_filter_of_a_trained_run_exits_2_and_writes_nothing(digits_copy, capsys):
    results, row = digits_copy
    before = sorted(p.relative_to(results) for p in results.rglob("*"))
    with pytest.raises(SystemExit) as exit_info:
        job_main("analyze")(["masking", "--results", str(results), "--runs", row["run_id"], "--mask-sets", "3",
                             "--rule", "activation", "--fraction", "1"])
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and "--mask-sets: 3 masks all 64 filters" in err
    assert sorted(p.relative_to(results) for p in results.rglob("*")) == before


@pytest.mark.slow
def test_studies_command_runs_all_four_and_writes_their_tables_and_figures(digits_run, tmp_path):
    import shutil

    results, row = digits_run
    root = tmp_path / "copy"  # a copy: rerunning a study replaces that run's rows elsewhere
    shutil.copytree(results / "runs", root / "runs")
    done = job_main("analyze")(["studies", "--results", str(root), "--runs", row["run_id"], "--rule", "activation",
                                "--mask-sets", "1", "2,3", "--order", *map(str, range(9, -1, -1)), "--n-init", "2"])
    assert list(done) == ["masking", "similarity", "correlation", "kmeans"]
    for study in STUDIES.values():
        for table in study.tables:
            assert pd.read_parquet(root / table)["run_id"].astype(str).unique().tolist() == [row["run_id"]]
        for figure in study.figures:
            assert (root / "figures" / f"{figure}_{row['run_id']}.png").is_file()
    assert set(pd.read_parquet(root / "masking")["mask_set"]) == {"1", "2,3"}


@pytest.mark.slow
def test_a_study_of_one_run_runs_in_process_without_ray_and_writes_what_its_ray_tasks_write(digits_run, tmp_path,
                                                                                           monkeypatch):
    results, row = digits_run
    tables, started = {}, []
    for ray_choice in ("auto", "on"):
        root = copy_results(results, tmp_path / ray_choice)
        analyze = job_main("analyze")
        start_ray = analyze.__globals__["init_ray"]
        monkeypatch.setitem(analyze.__globals__, "init_ray", lambda: started.append(ray_choice) or start_ray())
        analyze(["studies", "--results", str(root), "--runs", row["run_id"], "--mask-sets", "0", "0,5",
                 "--n-init", "2", "--ray", ray_choice])
        tables[ray_choice] = {table: pd.read_parquet(root / table) for study in STUDIES.values()
                              for table in study.tables}
    assert started == ["on"]
    for table, frame in tables["auto"].items():
        pd.testing.assert_frame_equal(frame, tables["on"][table], obj=table)


def test_ray_auto_keeps_ray_for_a_cluster_many_runs_and_heavy_analyses(monkeypatch):
    from analysis.registry import ANALYSES, IN_PROCESS_RUNS

    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    few, many = ["a"] * IN_PROCESS_RUNS, ["a"] * (IN_PROCESS_RUNS + 1)
    assert ANALYSES["masking"].in_process(few) and not ANALYSES["masking"].in_process(many)
    assert not ANALYSES["localize"].in_process(few) and ANALYSES["localize"].in_process(many, "off")
    assert not ANALYSES["studies"].in_process(few, "on")
    monkeypatch.setenv("RAY_ADDRESS", "ray://head:10001")
    assert not ANALYSES["masking"].in_process(few)


@pytest.mark.parametrize("on_a_terminal", [True, False])
def test_a_fan_outs_progress_is_erased_on_a_terminal_and_one_line_in_a_log(on_a_terminal, monkeypatch):
    import io

    from analysis.fan_out import fan_out, in_process
    from tests.helpers import Terminal

    err = Terminal() if on_a_terminal else io.StringIO()
    monkeypatch.setattr("sys.stderr", err)
    with in_process():
        assert fan_out("squares", {k: (pow, (k, 2)) for k in range(3)}) == {0: 0, 1: 1, 2: 4}
    text = err.getvalue()
    if on_a_terminal:  # rewritten per task, then blanked: the caller's results take its place
        assert text.count("\r") == 3 + 2 and "\n" not in text and text.endswith(" \r")
        assert "squares: 3/3 tasks" in text
    else:
        assert text.startswith("squares: 3/3 tasks (") and text.count("\n") == 1 and "\r" not in text


@pytest.mark.filterwarnings("error")
def test_block_contrast_is_nan_where_a_block_is_empty_and_never_warns():
    matrix = np.array([[1.0, 0.8, 0.1], [0.8, 1.0, 0.3], [0.1, 0.3, 1.0]])
    within, between = correlation.block_contrast(matrix, np.array([0, 0, 1]))
    assert within == pytest.approx(0.8) and between == pytest.approx(0.2)  # off-diagonal only
    within, between = correlation.block_contrast(matrix, np.array([5, 5, 5]))  # one group: nothing between
    assert within == pytest.approx(0.4) and np.isnan(between)
    assert all(np.isnan(correlation.block_contrast(np.ones((1, 1)), np.array([0]))))
