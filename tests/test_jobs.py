"""CPU smoke runs of the jobs not covered elsewhere."""
import pandas as pd

from tests.helpers import job_main, make_imagefolder


def test_quickstart_writes_tables_figures_and_prints_table1(ray_local, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path.parent)  # a relative results root must land here, not in a worker's cwd
    table = job_main("quickstart")(["--results", tmp_path.name, "--epochs", "3"])
    out = capsys.readouterr().out
    assert list(table["training"]) == ["CSG", "STD"]
    assert "MIS" in out and "L1-interval" in out and "[0.1, 0.1]" in out
    for name in ("runs", "epochs", "gates", "mi"):
        assert (tmp_path / name).is_dir()
    runs = pd.read_parquet(tmp_path / "runs")
    assert sorted(runs["method"]) == ["csg", "std"] and (runs["status"] == "finished").all()
    # the printed numbers are the stored ones
    assert table["MIS"].tolist() == runs.set_index("method").loc[["csg", "std"], "mis"].round(4).tolist()
    for png in ("quickstart_gate.png", "quickstart_mi.png"):
        assert (tmp_path / "figures" / png).read_bytes()[:4] == b"\x89PNG"


def test_train_imagenet_preset_on_a_tiny_tree(ray_local, tmp_path):
    tree = make_imagefolder(tmp_path / "tree", per_class=(4, 2), size=48)
    row = job_main("train_imagenet")(["--data", str(tree), "--workers", "1", "--epochs", "1", "--batch-size", "4",
                                      "--image-size", "32", "--g-density", "0.5", "--loader-workers", "0", "--results", str(tmp_path / "r")])
    assert row["status"] == "finished" and row["num_filters"] == 512
    runs = pd.read_parquet(tmp_path / "r" / "runs")
    assert runs.loc[0, "model"] == "resnet18" and runs.loc[0, "batch_size"] == 4
