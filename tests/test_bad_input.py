"""Every bad option: one line naming it, exit status 2, nothing under the results root."""
import pytest

from tests.helpers import job_main, make_imagefolder

CASES = {
    "unknown model": (["--model", "vgg99"], "--model"),
    "unknown torchvision model": (["--model", "torchvision:resnet9000"], "--model"),
    "factory that does not import": (["--model", "nowhere.nets:build"], "--model"),
    "layer not in the model": (["--layer", "stages.layer9"], "--layer"),
    "unknown frozen module": (["--std-frozen", "trunk"], "--std-frozen"),
    "unknown dataset": (["--dataset", "mnist"], "--dataset"),
    "g below 1/C": (["--g-density", "0.05"], "--g-density"),
    "period below 1": (["--period", "0"], "--period"),
    "csg epochs above period": (["--period", "2", "--csg-epochs", "3"], "--csg-epochs"),
    "negative lambda1": (["--lambda1", "-1"], "--lambda1"),
    "negative lambda2": (["--lambda2", "-0.5"], "--lambda2"),
    "batch above training set": (["--batch-size", "5000"], "--batch-size"),
    "missing data directory": (["--data", "/nonexistent/dir"], "--data"),
    "class count disagrees": (["--num-classes", "7"], "--num-classes"),
    "missing weights file": (["--model", "resnet18", "--weights", "/nonexistent/w.pth"], "--weights"),
    "fixed gate too large": (["--gate", "fixed", "--m1", "7", "--m2", "0"], "--m1"),
    "non-numeric epochs": (["--epochs", "many"], "--epochs"),
    "unknown augmentation": (["--augment", "zoom"], "--augment"),
    "augmentation of a data set with its own": (["--augment", "crop"], "--augment"),
    "decode of a data set with its own": (["--decode", "pil"], "--decode"),
    "unknown decode": (["--decode", "turbo"], "--decode"),
    "ray data ingest of digits": (["--ingest", "ray-data"], "--ingest", "imagefolder"),
    "abbreviated option": (["--epoch", "3"], "--epoch"),
    "data that is a file": (["--data", __file__], "--data", "is not a directory"),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_bad_option_is_one_line_exit_2_and_writes_nothing(case, tmp_path, capsys, monkeypatch):
    argv, option, *words = CASES[case]
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as exit_info:
        job_main("train_cifar")(["--preset", "digits-resnet20", "--results", "results", *argv])
    err = capsys.readouterr().err
    assert exit_info.value.code == 2
    assert len(err.strip().splitlines()) == 1 and option in err and all(word in err for word in words)
    assert list(tmp_path.iterdir()) == []  # nothing written, not even in the working directory


@pytest.fixture
def offline_cifar(monkeypatch):
    """torchvision's CIFAR download as it fails part way: its folder made, a partial archive
    written, then a URLError."""
    import urllib.error
    from pathlib import Path

    import torchvision

    def fail(root, **_):
        Path(root).mkdir(parents=True, exist_ok=True)
        (Path(root) / "cifar-10-python.tar.gz").write_bytes(b"\x1f\x8b partial")
        raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(torchvision.datasets, "CIFAR10", fail)


@pytest.mark.parametrize("argv, message", [
    ([], "cifar10: cannot download"),  # into ./data, which the download made
    (["--model", "vgg99"], "--model"),  # the model is checked before any download is tried
    (["--data", "mine"], "cifar10: cannot download"),  # into a folder of one's own
])
def test_cifar_that_cannot_be_fetched_leaves_nothing_behind(argv, message, offline_cifar, tmp_path, capsys,
                                                            monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "mine").mkdir()
    with pytest.raises(SystemExit) as exit_info:
        job_main("train_cifar")(["--results", "results", *argv])
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and len(err.strip().splitlines()) == 1 and message in err
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["mine"]  # no ./data, no archive, no results


def test_imagefolder_missing_split_is_named(tmp_path, capsys):
    make_imagefolder(tmp_path / "tree")
    (tmp_path / "tree" / "val" / "owl").rename(tmp_path / "tree" / "val" / "bat")
    with pytest.raises(SystemExit):
        job_main("train_imagenet")(["--data", str(tmp_path / "tree"), "--results", str(tmp_path / "r")])
    assert "class folders differ" in capsys.readouterr().err
    assert not (tmp_path / "r").exists()


@pytest.mark.parametrize("argv, option, other", [(["--tau", "2"], "--tau", "--seeds"),
                                                 (["--seeds", "0"], "--seeds", "--tau")])
def test_seeds_job_names_only_the_bad_option(argv, option, other, tmp_path, capsys):
    results = tmp_path / "results"
    with pytest.raises(SystemExit) as exit_info:
        job_main("seeds_cifar")(["--dataset", "digits", "--results", str(results), *argv])
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and len(err.strip().splitlines()) == 1
    assert option in err and other not in err and not results.exists()


@pytest.mark.parametrize("option, value", [("--num-samples", "-1"), ("--grid-points", "0"), ("--top", "-2"),
                                           ("--reduction-factor", "1"), ("--grace-period", "-1")])
def test_sweep_counts_below_their_floor_are_refused_before_anything_starts(option, value, tmp_path, capsys,
                                                                            monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as exit_info:
        job_main("tune_cifar")(["--dataset", "digits", "--results", str(tmp_path / "results"), option, value])
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and len(err.strip().splitlines()) == 1 and option in err
    assert list(tmp_path.iterdir()) == []  # nothing written, not even in the working directory


def test_status_of_a_results_root_that_does_not_exist_says_so(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        job_main("status")(["--results", str(tmp_path / "nowhere")])
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and "directory does not exist" in err and not (tmp_path / "nowhere").exists()


@pytest.mark.parametrize("job", ["tune_cifar", "seeds_cifar"])
def test_resume_without_a_sweep_id_lists_the_saved_sweeps_and_reads_no_data(job, tmp_path, capsys, monkeypatch):
    """The default data set is CIFAR-10, absent here: the job must not try to fetch it."""
    monkeypatch.chdir(tmp_path)
    saved = tmp_path / "results" / "checkpoints" / "last-week.csg-sweep.json"
    saved.parent.mkdir(parents=True)
    saved.write_text("{}")
    with pytest.raises(SystemExit) as exit_info:
        job_main(job)(["--results", "results", "--resume"])
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and len(err.strip().splitlines()) == 1
    assert "--resume: needs --sweep-id" in err and "last-week" in err
    assert sorted(p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*")) == [
        "results", "results/checkpoints", "results/checkpoints/last-week.csg-sweep.json"]


@pytest.mark.parametrize("argv", [["--tau", "2"], ["--seeds", "0"]])
def test_seeds_options_are_checked_before_the_data_set_is_read(argv, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as exit_info:
        job_main("seeds_cifar")(["--results", "results", *argv])
    assert exit_info.value.code == 2 and argv[0] in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


def test_decoding_on_the_gpu_without_one_is_one_line(tmp_path, capsys, monkeypatch):
    tree = make_imagefolder(tmp_path / "tree")
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as exit_info:
        job_main("train_cifar")(["--dataset", "imagefolder", "--data", str(tree), "--decode", "gpu",
                                 "--results", "results"])
    err = capsys.readouterr().err.strip()
    assert exit_info.value.code == 2 and len(err.splitlines()) == 1 and "--decode" in err and "--gpu" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tree"]
