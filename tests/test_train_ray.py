"""Ray Train end to end on digits: 2 DDP workers, tables, checkpoints, rerun-and-resume, bad data.
A lost worker and its recovery: tests/test_fault_tolerance.py (a node removed under a rank)."""
import os
import shutil
import subprocess
import sys

import pandas as pd
import pytest

from tests.helpers import DIGITS_ARGS as ARGS
from csg.data.shard_writer import write_shards
from csg.testing.photos import write_photo_tree
from tests.helpers import REPO, copy_results, job_main, make_imagefolder

# Each run here trains on the session Ray: ~12-25 s, more where digits_run is trained first.
pytestmark = [pytest.mark.slow, pytest.mark.timeout(240)]


def test_two_worker_run_writes_all_tables(digits_run):
    results, row = digits_run
    assert row["status"] == "finished" and row["epochs_completed"] == 6
    epochs = pd.read_parquet(results / "epochs")
    assert list(epochs["epoch"]) == list(range(6))
    assert list(epochs["path"]) == ["std", "csg"] * 3  # STD epochs under DDP raised nothing
    gates = pd.read_parquet(results / "gates")
    assert len(gates) == 10 * 64 and gates["value"].between(0, 1).all()
    assert (gates.groupby("filter")["value"].max() == 1).all()
    mi = pd.read_parquet(results / "mi")
    assert len(mi) == 640 and (mi["mi"] >= 0).all()
    runs = pd.read_parquet(results / "runs")
    assert runs.loc[0, "mis"] == pytest.approx(mi.groupby("filter")["mi"].max().mean())
    assert runs.loc[0, "l1_density"] == pytest.approx(gates["value"].mean())
    assert runs.loc[0, "l1_interval_low"] == pytest.approx(0.1)
    assert runs.loc[0, "final_acc"] == epochs["test_acc"].iloc[-1] > 0.5
    assert runs.loc[0, "preset"] == "digits-resnet20"  # the recipe the run started from
    assert pd.isna(runs.loc[0, "image_size"])  # an option digits does not read is recorded null


def test_train_cifar_on_an_imagefolder_tree_skips_and_counts_a_corrupt_image(ray_local, tmp_path):
    """Two ranks, each with a loader process: the unreadable image is skipped where its rank
    meets it and counted once an epoch in the summed count."""
    tree = make_imagefolder(tmp_path / "tree")
    (tree / "train" / "dog" / "1.png").write_bytes(b"not a png at all")
    row = job_main("train_cifar")(["--dataset", "imagefolder", "--data", str(tree), "--model", "resnet20",
                                   "--method", "csg", "--epochs", "2", "--workers", "2", "--batch-size", "6",
                                   "--image-size", "32", "--augment", "crop", "--loader-workers", "1", "--skip-bad-images",
                                   "--results", str(tmp_path / "r")])
    assert row["status"] == "finished" and row["num_classes"] == 3
    assert len(pd.read_parquet(tmp_path / "r" / "gates")) == 3 * 64
    assert pd.read_parquet(tmp_path / "r" / "epochs")["skipped_images"].tolist() == [1, 1]


@pytest.mark.separate_ray
@pytest.mark.timeout(300)
def test_ray_data_decodes_shards_from_a_uri_for_two_ranks_of_resnet18(tmp_path):
    """--ingest ray-data, one epoch of ResNet-18 at 32 px on 2 ranks, on a Ray of 4 logical
    CPUs: the Train workers take 2, Ray Data's decoding tasks the rest, reading the shards
    through pyarrow from a file:// URI as from an object store. The job joins the Ray its
    launcher started, as under `ray job submit`. (The DataLoader's reading of shards across
    ranks and loader processes is tests/test_ingest.py's.)"""
    tree = write_photo_tree(tmp_path / "tree", 3, 8, 2, long_side=64)
    write_shards(str(tree), str(tmp_path / "shards"), shard_size=4, processes=1)
    uri = (tmp_path / "shards").as_uri()
    argv = ["--data", uri, "--ingest", "ray-data", "--workers", "2", "--epochs", "1", "--batch-size", "8",
            "--image-size", "32", "--g-density", "0.5", "--loader-workers", "0", "--results", str(tmp_path / "r")]
    launcher = ("import runpy; from csg.distributed.cluster import init_ray; init_ray(num_cpus=4); "
                f"runpy.run_path('jobs/train_imagenet.py')['main']({argv!r})")
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    done = subprocess.run([sys.executable, "-c", launcher], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=280)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    runs = pd.read_parquet(tmp_path / "r" / "runs")
    assert runs.loc[0, "status"] == "finished" and runs.loc[0, "model"] == "resnet18"
    assert runs.loc[0, "data"] == uri and runs.loc[0, "ingest"] == "ray-data" and pd.isna(runs.loc[0, "decode"])
    epochs = pd.read_parquet(tmp_path / "r" / "epochs")
    assert epochs["skipped_images"].tolist() == [0]  # each rank read its equal half of the 24 images


def test_ray_data_without_cpus_beside_the_workers_is_one_line(ray_local, tmp_path, capsys):
    tree = write_photo_tree(tmp_path / "tree", 3, 4, 1, long_side=64)
    with pytest.raises(SystemExit) as exit_info:
        job_main("train_imagenet")(["--data", str(tree), "--ingest", "ray-data", "--workers", "2", "--epochs", "1",
                                    "--batch-size", "4", "--image-size", "32", "--g-density", "0.5",
                                    "--results", str(tmp_path / "r")])
    err = capsys.readouterr().err.strip()
    assert exit_info.value.code == 2 and len(err.splitlines()) == 1
    assert "--ingest: ray-data decodes in tasks of their own, but the cluster's 2 CPUs all go" in err
    assert not (tmp_path / "r" / "runs").exists()


def test_rerun_of_a_run_id_resumes_from_its_latest_checkpoint(ray_local, tmp_path, capfd):
    """In bf16 and channels-last, so the workers take the fast paths too (fp16 would cost 3x
    on a CPU; its loss scale's round trip through a checkpoint is tested in test_precision)."""
    from csg.store import checkpoint as ckpt_lib

    args = ["--preset", "digits-resnet20", "--run-id", "again", "--results", str(tmp_path), "--period", "2",
            "--amp", "bf16", "--channels-last"]
    job_main("train_cifar")([*args, "--epochs", "2"])
    first = pd.read_parquet(tmp_path / "epochs")
    saved = ckpt_lib.read(ckpt_lib.latest_registered(str(tmp_path / "checkpoints"), "again")[0])
    assert saved["config"]["amp"] == "bf16" and saved["config"]["channels_last"]
    row = job_main("train_cifar")([*args, "--epochs", "3"])
    assert "resuming after epoch 2" in capfd.readouterr().out
    epochs = pd.read_parquet(tmp_path / "epochs")
    assert list(epochs["epoch"]) == [0, 1, 2] and row["epochs_completed"] == 3
    pd.testing.assert_frame_equal(epochs.iloc[:2], first)  # the first two epochs were not retrained
    assert len(pd.read_parquet(tmp_path / "runs")) == 1


def test_divergence_is_one_line_and_keeps_rows_and_last_good_checkpoint(ray_local, tmp_path, capsys):
    # lambda2 * (||G||_1 - g) overflows float32 on the first CSG step (epoch 2 with period 3).
    with pytest.raises(SystemExit) as exit_info:
        job_main("train_cifar")(["--preset", "digits-resnet20", "--epochs", "4", "--lambda2", "1e37",
                                 "--run-id", "boom", "--results", str(tmp_path)])
    err = capsys.readouterr().err.strip().splitlines()
    assert exit_info.value.code == 1
    assert "diverged: loss is not finite at epoch 2, step 0 (csg path); last good checkpoint" in err[-1]
    assert list(pd.read_parquet(tmp_path / "epochs")["epoch"]) == [0, 1]
    runs = pd.read_parquet(tmp_path / "runs")
    assert runs.loc[0, "status"] == "diverged" and runs.loc[0, "epochs_completed"] == 2
    from csg.store.checkpoint import read

    assert read(runs.loc[0, "checkpoint"])["epoch"] == 1


def test_a_corrupt_image_is_named(ray_local, tmp_path, capsys):
    tree = make_imagefolder(tmp_path / "tree")
    bad = tree / "train" / "dog" / "1.png"
    bad.write_bytes(b"not a png at all")
    with pytest.raises(SystemExit) as exit_info:
        job_main("train_cifar")(["--dataset", "imagefolder", "--data", str(tree), "--model", "resnet20",
                                 "--epochs", "1", "--workers", "1", "--batch-size", "6", "--image-size", "32",
                                 "--loader-workers", "0", "--results", str(tmp_path / "r")])
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert exit_info.value.code == 1 and f"unreadable image {bad}" in err


def test_resuming_with_another_model_is_refused_and_loses_nothing(digits_copy, capsys):
    results, row = digits_copy
    before = {t: pd.read_parquet(results / t) for t in ("runs", "epochs", "gates", "mi")}
    with pytest.raises(SystemExit) as exit_info:
        job_main("train_cifar")([*ARGS, "--run-id", row["run_id"], "--results", str(results),
                                 "--model", "resnet32", "--epochs", "8"])
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert exit_info.value.code == 2
    assert err.endswith(f"--run-id: run {row['run_id']} exists with model='resnet20', not 'resnet32'; "
                        "choose a new run id to train something else")
    for table, frame in before.items():
        pd.testing.assert_frame_equal(pd.read_parquet(results / table), frame)


def test_checkpoint_of_another_model_fails_the_run_in_one_line(digits_run, tmp_path, capsys):
    results, row = digits_run
    storage = shutil.copytree(results / "checkpoints", tmp_path / "ckpt")  # digits_run's, resnet20
    with pytest.raises(SystemExit) as exit_info:  # another results root, the same checkpoints
        job_main("train_cifar")(["--preset", "digits-resnet20", "--run-id", row["run_id"], "--storage", str(storage),
                                 "--results", str(tmp_path / "b"), "--model", "resnet32", "--epochs", "8"])
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert exit_info.value.code == 1 and "Traceback" not in err
    assert "has model='resnet20', this run has 'resnet32'" in err


def _readme_run(readme_runs, model: str, dest):
    """The README's training of `model`, its tables copied to `dest`: (copy, its runs row)."""
    folder, _ = readme_runs
    results = copy_results(folder / "results", dest)
    runs = pd.read_parquet(results / "runs")
    return results, runs.loc[runs["model"] == model].iloc[0]


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_a_model_of_ones_own_trains_under_ray_and_its_checkpoint_is_analysed(readme_runs, tmp_path, capsys):
    """--model package.module:callable through Ray Train (2 workers, the README's command), then
    MI, the four studies and ActivMap/GradMap localization from its checkpoint, rebuilt from the
    spec the run recorded."""
    results, row = _readme_run(readme_runs, "tests.helpers:own_net", tmp_path / "r")
    own = str(row["run_id"])
    assert row["status"] == "finished" and row["num_filters"] == 24
    assert len(pd.read_parquet(results / "gates", filters=[("run_id", "==", own)])) == 10 * 24
    mis = job_main("analyze")(["mi", "--results", str(results), "--run", own])
    assert abs(mis - row["mis"]) < 1e-9
    # an MLP head: masking asks the model itself, its gate point set to the kept filters
    job_main("analyze")(["studies", "--results", str(results), "--runs", own, "--rule", "activation"])
    for table in ("masking", "similarity", "correlation_summary", "kmeans_summary"):
        assert set(pd.read_parquet(results / table)["run_id"].astype(str)) == {own}, table
    masking = pd.read_parquet(results / "masking")
    assert (masking.groupby("mask_set", observed=True)["count"].sum() == 360).all()  # every test image, once
    job_main("analyze")(["localize", "--results", str(results), "--runs", own, "--methods", "activmap",
                         "gradmap", "--per-class", "2", "--examples", "1"])
    scored = pd.read_parquet(results / "localization")
    scored_iou = scored["avg_iou"].dropna()  # NaN: a class no filter focuses on
    assert set(scored["method"]) == {"activmap", "gradmap"} and len(scored_iou) and scored_iou.between(0, 1).all()
    page = job_main("analyze")(["report", "--results", str(results), "--runs", own]).read_text()
    assert "tests.helpers:own_net" in page and '<section id="localization">' in page
    with pytest.raises(SystemExit):
        job_main("analyze")(["localize", "--results", str(results), "--runs", own, "--methods", "cam"])
    assert "does not end in global average pooling and one linear layer" in capsys.readouterr().err


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_a_torchvision_model_by_name_trains_and_every_study_and_localization_read_it(readme_runs, tmp_path):
    """--model torchvision:mobilenet_v3_small (an MLP head, 1-channel images repeated to 3; the
    README's command), then `studies` and `localize` on its checkpoint."""
    results, row = _readme_run(readme_runs, "torchvision:mobilenet_v3_small", tmp_path / "r")
    mobile = str(row["run_id"])
    assert row["status"] == "finished" and row["num_filters"] == 576
    job_main("analyze")(["studies", "--results", str(results), "--runs", mobile, "--rule", "activation"])
    for table in ("masking", "similarity", "correlation_summary", "kmeans_summary"):
        assert set(pd.read_parquet(results / table)["run_id"].astype(str)) == {mobile}, table
    job_main("analyze")(["localize", "--results", str(results), "--runs", mobile, "--methods", "activmap",
                         "--per-class", "2", "--examples", "1"])
    assert set(pd.read_parquet(results / "localization")["method"]) == {"activmap"}
