"""Localization (Sec. 5.1, Appendices G-H): the metrics, the three maps on models whose answer
is known, the thresholds, bad input, and the job end to end on digits-scenes."""
import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn

from analysis.localization import (
    Statistics,
    first_per_class,
    score,
)
from analysis.localization_metrics import (
    class_rows_from_filters,
    class_rows_from_images,
    focus_classes,
    method_tables,
)
from analysis.saliency import (
    AUTHORS,
    BIN_RATIO,
    CAM,
    TEXT,
    ActivMap,
    GradMap,
    activation_histogram,
    gaussian_blur,
    gradient_maps,
    iou,
    top_thresholds,
)
from analysis.studies import Run
from csg.method.attach import attach
from tests.helpers import (
    REPO,
    copy_results,
    documented_columns,
    fabricated_runs,
    job_main,
    written_columns,
)


class GapLinear(nn.Module):
    """`maps` (the layer the gate is attached to), then global pooling and one linear layer."""

    def __init__(self, maps: nn.Module, channels: int, classes: int, pool: str = "mean"):
        super().__init__()
        self.maps, self.fc, self.pool = maps, nn.Linear(channels, classes), pool

    def forward(self, x):
        activation = self.maps(x)
        return self.fc(activation.mean(dim=(2, 3)) if self.pool == "mean" else activation.amax(dim=(2, 3)))


class PixelWeights(nn.Module):
    """A_k = sum_c W[k, c] * x_c pixel by pixel: GAP(A_k) is linear in x, with gradient W_k / (H W)."""

    def __init__(self, weight: torch.Tensor):
        super().__init__()
        self.weight = nn.Parameter(weight)

    def forward(self, x):
        return torch.einsum("kchw,bchw->bkhw", self.weight, x)


def channels_as_filters(channels: int, classes: int, pool: str = "mean"):
    """A probe whose gated map is the input itself: filter k's map is channel k."""
    return attach(GapLinear(nn.Identity(), channels, classes, pool), classes, "maps", in_channels=channels,
                  mean=(0.0,) * channels, std=(1.0,) * channels)


def pixelwise_linear(weight: torch.Tensor):
    channels = weight.shape[1]
    return attach(GapLinear(PixelWeights(weight), weight.shape[0], 2), 2, "maps", in_channels=channels,
                  mean=(0.0,) * channels, std=(1.0,) * channels, example=torch.rand(1, channels, *weight.shape[2:]))


def region(height, width, top, left, h, w):
    mask = torch.zeros(height, width, dtype=torch.bool)
    mask[top:top + h, left:left + w] = True
    return mask


def test_iou_on_hand_made_masks():
    truth = region(4, 4, 0, 0, 2, 2)[None]  # 4 pixels
    segments = torch.stack([region(4, 4, 0, 0, 2, 2), region(4, 4, 0, 0, 2, 4), region(4, 4, 2, 2, 2, 2),
                            torch.zeros(4, 4, dtype=torch.bool)])[None]
    assert iou(segments, truth).tolist() == [[1.0, 0.5, 0.0, 0.0]]


def test_focus_class_is_the_best_ap_then_iou_and_class_means_average_the_focused_filters():
    frame = pd.DataFrame({
        "filter": [0, 0, 1, 1, 2, 2],
        "class": [0, 1, 0, 1, 0, 1],
        "avg_iou": [0.5, 0.3, 0.2, 0.4, 0.1, 0.6],
        "ap20": [0.9, 0.5, 0.4, 0.4, 0.2, 0.8],
        "ap30": [0.8, 0.1, 0.3, 0.3, 0.1, 0.7],
    })
    frame["focus"] = focus_classes(frame, 30)
    # filter 0 -> class 0 (AP30 .8), filter 1 ties at .3 -> class 1 by Avg-IoU .4, filter 2 -> class 1
    assert frame.loc[frame["focus"], ["filter", "class"]].values.tolist() == [[0, 0], [1, 1], [2, 1]]
    table = class_rows_from_filters(frame, ["a", "b"]).set_index("class")
    assert table.loc["a", "avg_iou"] == 0.5 and table.loc["a", "n_filters"] == 1
    assert table.loc["b", "avg_iou"] == pytest.approx(0.5) and table.loc["b", "ap30"] == pytest.approx(0.5)
    assert table.loc["total", "avg_iou"] == pytest.approx(0.5) and table.loc["total", "n_filters"] == 3
    assert table.loc["total", "ap20"] == pytest.approx((0.9 + 0.4 + 0.8) / 3)


def test_per_image_metrics_average_over_each_class_and_all_images():
    table = class_rows_from_images(np.array([0.1, 0.25, 0.5, 0.35]), np.array([0, 0, 1, 1]), ["a", "b"])
    table = table.set_index("class")
    assert table.loc["a", "avg_iou"] == pytest.approx(0.175) and table.loc["a", "ap20"] == 0.5
    assert table.loc["b", "ap30"] == 1.0 and table.loc["total", "ap30"] == 0.5
    assert table.loc["total", "n_images"] == 4


def test_activmap_of_a_filter_that_indicates_a_region_localizes_it_exactly():
    rng = np.random.default_rng(0)
    regions = torch.stack([region(16, 16, int(t), int(l), 10, 9) for t, l in rng.integers(0, 6, (8, 2))])
    images = torch.stack([regions.float(), torch.rand(8, 16, 16)], dim=1)  # channel 1: noise
    model = channels_as_filters(2, 2).eval()
    thresholds = top_thresholds(activation_histogram(model.features(images)))
    forward = ActivMap().forward(model, images, torch.zeros(8, dtype=torch.long))
    segments = ActivMap().segments(forward, [0, 1], thresholds)
    assert iou(segments, regions)[:, 0].tolist() == [1.0] * 8
    assert iou(segments, regions)[:, 1].max() < 0.9


def test_gradmap_of_a_linear_model_is_its_weights_normalised():
    torch.manual_seed(0)
    weight = torch.randn(3, 2, 8, 8)
    model = pixelwise_linear(weight).eval()
    images = torch.rand(4, 2, 8, 8)
    for channels, reduce in (("l2", lambda w: w.norm(dim=0)), ("max-abs", lambda w: w.abs().amax(dim=0))):
        maps = gradient_maps(GradMap().forward(model, images, torch.zeros(4, dtype=torch.long)), [0, 2], channels)
        for position, k in enumerate((0, 2)):
            expected = reduce(weight[k])
            expected = expected / expected.square().mean().sqrt()
            for b in range(4):
                torch.testing.assert_close(maps[b, position], expected, rtol=1e-5, atol=1e-6)


def test_blur_keeps_a_constant_map_and_spreads_a_point():
    constant = torch.full((1, 1, 9, 9), 2.0)
    torch.testing.assert_close(gaussian_blur(constant, 2.0, 3.0), constant)
    point = torch.zeros(1, 1, 9, 9)
    point[0, 0, 4, 4] = 1.0
    blurred = gaussian_blur(point, 1.0, 3.0)
    assert blurred.sum().item() == pytest.approx(1.0, abs=1e-6) and blurred[0, 0, 4, 4] < 0.2
    assert blurred[0, 0, 4, 5] == pytest.approx(blurred[0, 0, 5, 4].item())


def test_cam_of_the_labelled_class_finds_the_region_its_filters_fire_on():
    masks = torch.stack([region(10, 10, 0, 0, 6, 6), region(10, 10, 4, 4, 6, 6)])  # 36% of the pixels each
    images = torch.stack([masks[0], masks[1]], dim=0).float()[None].repeat(2, 1, 1, 1)  # channel c: region c
    model = channels_as_filters(2, 2).eval()
    with torch.no_grad():
        model.net.fc.weight.copy_(torch.eye(2))
    right = CAM().segments(CAM().forward(model, images, torch.tensor([0, 1])))
    wrong = CAM().segments(CAM().forward(model, images, torch.tensor([1, 0])))
    assert iou(right, masks)[:, 0].tolist() == [1.0, 1.0]
    assert iou(wrong, masks)[:, 0].max() < 0.3


def test_thresholds_from_the_histogram_are_within_one_bin_below_the_exact_top_30_percent():
    torch.manual_seed(0)
    activation = torch.relu(torch.randn(50, 4, 3, 3)) * torch.tensor([1.0, 1e-3, 100.0, 0.0])[None, :, None, None]
    thresholds = top_thresholds(activation_histogram(activation[:20]) + activation_histogram(activation[20:]))
    values = activation.transpose(0, 1).reshape(4, -1)
    exact = values.sort(dim=1).values[:, -int(0.3 * values.shape[1])]
    for k in range(3):
        assert exact[k] / BIN_RATIO * (1 - 1e-6) <= thresholds[k] <= exact[k]
        assert (values[k] >= thresholds[k]).float().mean() >= 0.3
    assert thresholds[3] == 0.0


def test_top_filters_are_the_most_activated_by_each_class():
    stats = Statistics(np.array([[1.0, 5.0, 3.0], [6.0, 2.0, 4.0]]), np.array([1.0, 2.0]), None)
    assert stats.top_filters(2).tolist() == [[False, True, True], [True, False, True]]


def test_score_sums_per_filter_and_per_image_and_top_filters_scoring_averages_the_chosen():
    masks = torch.stack([region(6, 6, 0, 0, 3, 6), region(6, 6, 3, 0, 3, 6)])
    images = torch.stack([masks.float(), masks.flip(0).float()], dim=1)  # filter 0 right, filter 1 wrong
    labels = torch.tensor([0, 1])
    model = channels_as_filters(2, 2).eval()
    batches = [(images, labels, masks, torch.tensor([0, 1]))]
    thresholds = top_thresholds(activation_histogram(model.features(images)))
    tally = score(model, ActivMap(), batches, [0, 1], 2, thresholds,
                  top_sets=np.array([[True, False], [False, True]]))
    assert tally.iou_sum.tolist() == [[1.0, 1.0], [0.0, 0.0]] and tally.hits[30].tolist() == [[1, 1], [0, 0]]
    assert tally.image_iou_sum.tolist() == [1.0, 0.0] and tally.image_scored.tolist() == [1, 1]
    run = Run("r", "csg", 2, 2, "/nowhere", "digits-scenes")
    filters, classes = method_tables(run, ActivMap(), tally, labels.numpy(), ["a", "b"],
                                     top_sets=np.array([[True, False], [False, True]]))
    assert filters[["filter", "class", "focus"]].values.tolist() == [[0, 0, True], [1, 1, True]]
    one_class = score(model, ActivMap(), [(images[:1], labels[:1], masks[:1], torch.tensor([0]))], [0, 1], 2,
                      thresholds, top_sets=np.array([[True, False], [False, True]]))
    assert one_class.iou_sum.tolist() == [[1.0, 0.0], [0.0, 0.0]]  # filter 1 serves class 1 only: not computed
    assert classes.set_index("class")["avg_iou"].to_dict() == {"a": 1.0, "b": 0.0, "total": 0.5}


def test_images_are_scored_in_label_order_and_at_most_per_class():
    labels = np.array([2, 0, 1, 0, 2, 0])
    assert first_per_class(labels).tolist() == [1, 3, 5, 2, 0, 4]
    assert first_per_class(labels, 2).tolist() == [1, 3, 2, 0, 4]


def test_a_model_whose_head_is_not_gap_then_linear_has_no_cam():
    assert channels_as_filters(2, 2).linear_head is not None
    assert channels_as_filters(2, 2, pool="max").linear_head is None


def _documented_gradmap_settings():
    """docs/analyses.md's table of GradMap's settings: {row: (text, authors' code)}."""
    text = (REPO / "docs" / "analyses.md").read_text()
    table = text.split("| | text (default) | `--authors-settings` (the code) |", 1)[1].split("\n\n", 1)[0]
    return {row[0].split(" (")[0]: tuple(row[1:3]) for row in
            ([cell.strip() for cell in line.strip("|").split("|")] for line in table.splitlines()[2:])}


def test_authors_settings_differ_from_the_text_as_documented():
    import re

    rows = _documented_gradmap_settings()
    for settings, cell in ((TEXT, 0), (AUTHORS, 1)):
        sigma = re.fullmatch(r"([\d.]+) \(kernel \+-([\d.]+) sigma\)", rows["blur sigma"][cell])
        sigma, truncate = map(float, sigma.groups())
        assert (settings.sigma, settings.truncate) == (sigma, truncate)
        assert settings.channels == re.match(r"`([\w-]+)`", rows["colour channels"][cell]).group(1)
        assert settings.scoring == re.match(r"`([\w-]+)`", rows["scoring"][cell]).group(1)
    assert f"`--top-filters` ({AUTHORS.top_filters}) filters" in rows["scoring"][1]
    # the AP each method's focus class is chosen by, as docs/results.md's `focus` column states
    assert f"AP{GradMap(AUTHORS).ap} for GradMap, AP{ActivMap().ap} for ActivMap" in \
        (REPO / "docs" / "results.md").read_text()


# -- bad input and the job end to end --------------------------------------------------------

BAD = {
    "unknown method": (["--methods", "saliency"], "--methods"),
    "authors settings with an explicit sigma": (["--authors-settings", "--sigma", "3"], "--authors-settings"),
    "no shards": (["--shards", "0"], "--shards"),
    "no images per class": (["--per-class", "0"], "--per-class"),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_localize_options_are_one_line_exit_2(case, tmp_path, capsys):
    fabricated_runs(tmp_path, {"c": ("csg", "digits-scenes")})
    argv, option = BAD[case]
    with pytest.raises(SystemExit) as exit_info:
        job_main("analyze")(["localize", "--results", str(tmp_path), "--runs", "c", *argv])
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and len(err.strip().splitlines()) == 1 and option in err, err


@pytest.mark.slow
def test_a_run_whose_data_has_no_masks_is_refused_before_ray_and_nothing_is_written(digits_copy, capsys,
                                                                                      monkeypatch):
    results, row = digits_copy
    before = sorted(p.relative_to(results) for p in results.rglob("*"))
    analyze, started = job_main("analyze"), []
    monkeypatch.setitem(analyze.__globals__, "init_ray", lambda: started.append("ray"))
    with pytest.raises(SystemExit) as exit_info:
        analyze(["localize", "--results", str(results), "--runs", row["run_id"]])
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and "carries no object masks" in err and len(err.strip().splitlines()) == 1
    assert sorted(p.relative_to(results) for p in results.rglob("*")) == before and not started


@pytest.mark.slow
@pytest.mark.timeout(420)
def test_localize_scores_csg_and_std_on_digits_scenes_and_writes_both_tables(scenes_runs, tmp_path):
    shared, rows = scenes_runs
    tmp_path = copy_results(shared, tmp_path / "results")  # the job writes tables, figures, a report
    csg, std = rows["csg"], rows["std"]
    job_main("analyze")(["localize", "--results", str(tmp_path), "--runs", csg["run_id"], std["run_id"],
                        "--shards", "2", "--filter-block", "40", "--examples", "2", "--per-class", "12"])
    classes = pd.read_parquet(tmp_path / "localization")
    assert set(zip(classes["run_id"].astype(str), classes["method"])) == \
        {(run, method) for run in ("csg", "std") for method in ("gradmap", "activmap", "cam")}
    assert list(classes.loc[classes["method"] == "cam", "class"].unique()) == [*map(str, range(10)), "total"]
    cam_total = classes[(classes["method"] == "cam") & (classes["class"] == "total")]
    assert cam_total["n_images"].tolist() == [120] * 2 and cam_total["avg_iou"].between(0, 1).all()
    filters = pd.read_parquet(tmp_path / "localization_filters")
    focused = filters[filters["focus"]].groupby(["run_id", "method"], observed=True)["filter"].nunique()
    assert focused.tolist() == [64] * 4  # gradmap and activmap: every filter has one focus class, per run
    gradmap_total = classes[(classes["method"] == "gradmap") & (classes["class"] == "total")]
    assert gradmap_total["n_filters"].tolist() == [64, 64]
    for table in ("localization", "localization_filters"):
        assert written_columns(tmp_path, table) == documented_columns(table)
    for name in ("localization_cam_csg_std", "localization_activmap_csg", "localization_activmap_std"):
        assert (tmp_path / "figures" / f"{name}.png").is_file()
    page = job_main("analyze")(["report", "--results", str(tmp_path), "--runs", "csg", "std"]).read_text()
    localization = page.split('<section id="localization">', 1)[1].split("</section>", 1)[0]
    assert localization.count("<tr") == 1 + 3 * 2 * 2  # header; (method, metric, run)
    assert localization.count('src="data:image/png;base64,') == 2  # filter Avg-IoU, Fig. 9
