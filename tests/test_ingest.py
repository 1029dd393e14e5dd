"""The ImageFolder input paths: the uint8 decode against PIL's, shards against the tree they
were written from, and each epoch's plan across ranks and loader workers."""
from __future__ import annotations

import io
import tarfile
from collections import Counter

import numpy as np
import pandas as pd
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image
from torch.utils.data import DataLoader
from torchvision.transforms import v2
from torchvision.transforms import functional as F1
from torchvision.transforms.v2 import functional as F

from csg import data
from csg.data import BadImageError, DataError
from csg.data.checked_folder import decode_uint8
from csg.data.shard_writer import write_shards
from csg.data.shards import MANIFEST, Manifest, epoch_plan
from csg.testing.photos import photo_jpegs, write_photo_tree
from tests.helpers import job_main


@pytest.fixture(scope="module")
def tree(tmp_path_factory):
    """60 photo JPEGs (3 classes x 16 training + 4 validation), each with an object mask."""
    root = write_photo_tree(tmp_path_factory.mktemp("photos"), 3, 16, 4, long_side=96)
    for image in sorted(root.rglob("*.jpg")):
        split, name = image.relative_to(root).parts[0], image.relative_to(root / image.parts[-3])
        mask = root / "masks" / split / name.with_suffix(".png")
        mask.parent.mkdir(parents=True, exist_ok=True)
        with Image.open(image) as opened:
            w, h = opened.size
        pixels = np.zeros((h, w), np.uint8)
        pixels[h // 4:h // 2, w // 3:w // 2] = 255
        Image.fromarray(pixels).save(mask)
    return root


@pytest.fixture(scope="module")
def shards(tree, tmp_path_factory):
    """The tree as shards of 8 (6 training shards, 2 validation), images shrunk to a short side of 48."""
    out = tmp_path_factory.mktemp("shards") / "out"
    write_shards(str(tree), str(out), short_side=48, shard_size=8, processes=1)
    return out


def _epoch(dataset, rank=0, world=1, epoch=0, workers=0) -> list[tuple[torch.Tensor, int]]:
    """Every (image, label) a rank's training loader gives in one epoch."""
    sampler, epochs = data.rank_input(dataset, rank, world, seed=0)
    epochs.set_epoch(epoch)
    loader = DataLoader(dataset, batch_size=5, sampler=sampler, num_workers=workers, collate_fn=data.collate_skipping_bad)
    return [(image, int(label)) for images, labels in loader for image, label in zip(images, labels)]


def _fingerprints(items) -> list[int]:
    return [hash(image.numpy().tobytes()) for image, _ in items]


def test_the_uint8_decode_matches_pil_on_the_same_crop_boxes():
    """Both decode with libjpeg-turbo and resize with an antialiased bilinear filter; what is left
    is rounding: a mean difference of a hundredth of a grey level, at most 1 in 99% of pixels."""
    torch.manual_seed(0)
    for data_bytes in photo_jpegs(12, long_side=200):
        pil = Image.open(io.BytesIO(data_bytes)).convert("RGB")
        for size in (32, 112):
            top, left, h, w = v2.RandomResizedCrop.get_params(pil, (0.08, 1.0), (3 / 4, 4 / 3))
            reference = F1.pil_to_tensor(F1.resized_crop(pil, top, left, h, w, [size, size])).float()
            encoded = torch.frombuffer(bytearray(data_bytes), dtype=torch.uint8)
            fast = F.resized_crop(decode_uint8(encoded, "photo"), top, left, h, w, [size, size], antialias=True)
            difference = (reference - fast.float()).abs()
            assert difference.mean() < 0.5 and torch.quantile(difference.flatten(), 0.99) <= 1


def test_tree_and_shards_give_the_same_classes_and_counts_by_every_decode(tree, shards):
    expected = Counter(label for _, label in _epoch(data.load("imagefolder", str(tree), 32, decode="pil")[0]))
    assert sum(expected.values()) == 48 and len(expected) == 3
    for root in (tree, shards):
        for decode in ("uint8", "pil"):  # gpu: test_decoding_on_the_device_gives_the_uint8_paths_pixels
            items = _epoch(data.load("imagefolder", str(root), 32, decode=decode)[0], workers=2)
            assert Counter(label for _, label in items) == expected, (root, decode)
            assert items[0][0].dtype == (torch.uint8 if decode == "uint8" else torch.float32)


def test_each_image_once_per_epoch_across_ranks_and_loader_workers(shards):
    """Without augmentation an image is its own fingerprint: two ranks of two workers each read
    disjoint halves whose union is the whole training split, in a new order every epoch."""
    stream = data.load("imagefolder", str(shards), 32, augment="none")[0]
    everything = _fingerprints(_epoch(stream))
    assert len(set(everything)) == 48
    orders = []
    for epoch in (0, 1):
        ranks = [_fingerprints(_epoch(stream, rank, 2, epoch, workers=2)) for rank in (0, 1)]
        assert len(ranks[0]) == len(ranks[1]) == 24 and not set(ranks[0]) & set(ranks[1])
        assert set(ranks[0]) | set(ranks[1]) == set(everything)
        orders.append(ranks[0])
    assert orders[0] != orders[1]


def _plans(counts, world, workers, seed, epoch) -> dict:
    return {(r, w): epoch_plan(counts, seed, epoch, r, world, w, workers) for r in range(world) for w in range(workers)}


def _per_rank(plans, world, workers) -> list[int]:
    return [sum(end - start for w in range(workers) for _, start, end in plans[r, w]) for r in range(world)]


def test_a_new_epoch_reaches_loader_processes_that_persist(shards):
    """The epoch is shared memory: processes kept across epochs read the one set after their start."""
    stream = data.load("imagefolder", str(shards), 32, augment="none")[0]
    sampler, epochs = data.rank_input(stream, 1, 2, seed=3)
    loader = DataLoader(stream, batch_size=4, num_workers=2, persistent_workers=True)
    orders = []
    for epoch in (0, 1, 0):
        epochs.set_epoch(epoch)
        orders.append([hash(image.numpy().tobytes()) for images, _ in loader for image in images])
    assert len(orders[0]) == len(orders[1]) == len(epochs) == 24
    assert orders[0] != orders[1] and orders[2] == orders[0]  # reshuffled, and seeded from (seed, epoch)


@settings(max_examples=200, deadline=None)
@given(counts=st.lists(st.integers(1, 40), min_size=1, max_size=30), world=st.integers(1, 5),
       workers=st.integers(1, 4), seed=st.integers(0, 3), epoch=st.integers(0, 3))
def test_an_epochs_plan_reads_each_sample_at_most_once_and_as_much_on_every_rank(counts, world, workers, seed, epoch):
    plans = _plans(counts, world, workers, seed, epoch)
    read = Counter((shard, i) for plan in plans.values() for shard, start, end in plan for i in range(start, end))
    assert all(n == 1 for n in read.values()) and all(0 <= i < counts[s] for s, i in read)
    assert len(set(_per_rank(plans, world, workers))) == 1
    per_worker = [sum(end - start for _, start, end in plan) for plan in plans.values()]
    assert max(per_worker) - min(per_worker) <= 1


@settings(max_examples=200, deadline=None)
@given(size=st.integers(1, 50), shards=st.integers(1, 40), last=st.integers(1, 50), world=st.integers(1, 8),
       workers=st.integers(1, 4), epoch=st.integers(0, 3))
def test_an_epoch_of_written_shards_leaves_out_less_than_a_shard_per_rank(size, shards, last, world, workers, epoch):
    """Shards as jobs/prepare_shards.py writes them: all of one size but the last."""
    counts = [size] * (shards - 1) + [min(last, size)]
    assert sum(counts) - sum(_per_rank(_plans(counts, world, workers, 0, epoch), world, workers)) < world * size


def test_two_ranks_read_disjoint_shards_reshuffled_from_seed_and_epoch():
    counts = [8] * 6
    shards = {rank: {s for s, _, _ in epoch_plan(counts, 0, 0, rank, 2)} for rank in (0, 1)}
    assert len(shards[0]) == len(shards[1]) == 3 and not shards[0] & shards[1]
    order = [[s for s, _, _ in epoch_plan(counts, seed, epoch, 0, 1)] for seed, epoch in ((0, 0), (0, 1), (1, 0))]
    assert order[0] == [s for s, _, _ in epoch_plan(counts, 0, 0, 0, 1)]
    assert order[0] != order[1] and order[0] != order[2] and sorted(order[1]) == list(range(6))


def test_the_manifest_matches_the_tree_and_points_at_each_image(tree, shards):
    classes = Manifest.read(str(shards)).classes
    assert classes == ["c00", "c01", "c02"]
    manifest = pd.read_parquet(shards / MANIFEST)  # as a user or another tool reads it
    for split, expected in (("train", 48), ("val", 12)):
        rows = manifest[manifest["split"] == split].reset_index(drop=True)
        sources = sorted(p.relative_to(tree).as_posix() for p in (tree / split).rglob("*.jpg"))
        assert sorted(rows["source"]) == sources and len(rows["key"]) == expected
        for index in range(0, expected, 5):
            with Image.open(tree / rows["source"][index]) as original:
                assert (rows["width"][index], rows["height"][index]) == original.size
            assert classes[rows["label"][index]] == rows["class"][index] == rows["source"][index].split("/")[1]
            with tarfile.open(shards / rows["shard"][index]) as tar:
                member = tar.extractfile(f"{rows['key'][index]}.jpg").read()
                assert int(tar.extractfile(f"{rows['key'][index]}.cls").read()) == rows["label"][index]
            with open(shards / rows["shard"][index], "rb") as shard:
                shard.seek(rows["offset"][index])
                assert shard.read(rows["nbytes"][index]) == member
            assert min(Image.open(io.BytesIO(member)).size) == 48


def test_shards_read_through_a_uri_and_evaluate_as_the_tree(tree, shards):
    by_uri = data.evaluation_set("imagefolder", shards.as_uri(), "test", 32, augment="none")
    from_tree = data.evaluation_set("imagefolder", str(tree), "test", 32, augment="none")
    assert len(by_uri) == len(from_tree) == 12 and sorted(by_uri.targets) == sorted(from_tree.targets)
    image, label = by_uri[0]
    assert image.shape == (3, 32, 32) and image.dtype == torch.float32
    assert data.describe("imagefolder", shards.as_uri()).train_size == 48


def test_masks_travel_in_the_shards(tree, shards):
    images = data.evaluation_set("imagefolder", str(shards), "test", 32, augment="none")
    masks = data.evaluation_masks("imagefolder", "test", str(shards), 32, augment="none")
    by_source = dict(zip(sorted(p.relative_to(tree / "val").as_posix() for p in (tree / "val").rglob("*.jpg")),
                         data.evaluation_masks("imagefolder", "test", str(tree), 32, augment="none")))
    sources = pd.read_parquet(shards / MANIFEST).query("split == 'val'")["source"].tolist()  # in the images' order
    for index in range(len(images)):
        mask, source = masks[index], sources[index].split("/", 1)[1]
        original = by_source[source]
        assert mask.dtype == torch.bool and mask.shape == original.shape == (32, 32)
        assert (mask & original).sum() / (mask | original).sum() > 0.8  # shrunk twice, nearest: edges move


def test_a_damaged_shard_is_named_and_skipped_when_asked(tree, tmp_path):
    out = tmp_path / "shards"
    write_shards(str(tree), str(out), shard_size=24, processes=1)
    shard = out / "train-000001.tar"
    shard.write_bytes(shard.read_bytes()[: shard.stat().st_size // 2])
    stream = data.load("imagefolder", str(out), 32)[0]
    with pytest.raises(BadImageError, match="shard train-000001.tar is damaged"):
        _epoch(stream)
    skipping = data.load("imagefolder", str(out), 32, skip_bad_images=True)[0]
    sampler, epochs = data.rank_input(skipping, 0, 1, seed=0)
    read = _epoch(skipping)
    assert 24 <= len(read) < 48 == len(epochs)  # the rest of the damaged shard is counted as skipped


def test_an_undecodable_image_in_a_shard_is_named_by_shard_and_key(tree, tmp_path):
    out = tmp_path / "shards"
    write_shards(str(tree), str(out), shard_size=48, processes=1)
    rows = Manifest.read(str(out)).rows("train")
    with open(out / "train-000000.tar", "r+b") as shard:  # sample 3's JPEG overwritten in place
        shard.seek(rows["offset"][3])
        shard.write(b"\0" * int(rows["nbytes"][3]))
    with pytest.raises(BadImageError, match="sample 00000003 in shard train-000000.tar"):
        _epoch(data.load("imagefolder", str(out), 32)[0])
    assert len(_epoch(data.load("imagefolder", str(out), 32, skip_bad_images=True)[0])) == 47


def test_prepare_shards_refuses_an_out_of_another_tree_and_keeps_it(tree, shards, tmp_path, capsys):
    other = write_photo_tree(tmp_path / "other", 2, 2, 1, long_side=64)
    before = {p.name: p.stat().st_mtime_ns for p in shards.iterdir()}
    with pytest.raises(SystemExit) as exit_info:
        job_main("prepare_shards")(["--data", str(other), "--out", str(shards)])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert "holds the shards of another tree" in err and len(err.splitlines()) == 1
    assert {p.name: p.stat().st_mtime_ns for p in shards.iterdir()} == before
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "notes.txt").write_text("mine")
    with pytest.raises(SystemExit):
        job_main("prepare_shards")(["--data", str(other), "--out", str(tmp_path / "busy")])
    assert "is not empty and holds no shards" in capsys.readouterr().err
    assert sorted(p.name for p in (tmp_path / "busy").iterdir()) == ["notes.txt"]


def test_prepare_shards_rewrites_its_own_tree_and_reports_the_bytes(tree, tmp_path, capsys):
    out = tmp_path / "shards"
    job_main("prepare_shards")(["--data", str(tree), "--out", str(out), "--shard-size", "10", "--processes", "1"])
    job_main("prepare_shards")(["--data", str(tree), "--out", str(out), "--shard-size", "30", "--processes", "1"])
    assert sorted(p.name for p in out.iterdir()) == [MANIFEST, "train-000000.tar", "train-000001.tar",
                                                     "val-000000.tar"]
    assert "60 images in 3 shards" in capsys.readouterr().out.splitlines()[-1]


def test_a_shard_directory_without_a_manifest_is_one_line(tmp_path):
    with pytest.raises(DataError, match="holds no readable shards.parquet"):
        data.describe("imagefolder", (tmp_path / "nothing").as_uri())


def _gpu_decoded_batches(train, batch_size=6):
    """What the engine trains on under --decode gpu, here decoded on the CPU device."""
    from csg.method.engine import device_pixels

    loader = DataLoader(train, batch_size=batch_size, collate_fn=train.collate_fn)
    return [(device_pixels(batch, torch.device("cpu")), labels) for batch, labels in loader]


@pytest.mark.parametrize("source", ["tree", "shards"])
def test_decoding_on_the_device_gives_the_uint8_paths_pixels(tree, shards, source):
    """Unaugmented, each image is the whole image resized: the batched decode on the device and
    the host's uint8 decode see the same libjpeg-turbo pixels and the same resize."""
    root = str(tree if source == "tree" else shards)
    on_device = _gpu_decoded_batches(data.load("imagefolder", root, 32, augment="none", decode="gpu")[0])
    images = torch.cat([images for images, _ in on_device])
    labels = torch.cat([labels for _, labels in on_device])
    reference = list(data.load("imagefolder", root, 32, augment="none", decode="uint8")[0])  # in the same order
    expected = torch.stack([image for image, _ in reference]).float() / 255
    assert images.dtype == torch.float32 and images.shape == (48, 3, 32, 32)
    assert torch.equal(images, expected) and labels.tolist() == [label for _, label in reference]


def test_a_file_the_batched_decoder_cannot_read_is_decoded_alone_or_named(tmp_path):
    from csg.data.device_decode import EncodedBatch, read_encoded
    from csg.data.imagefolder import train_transform_uint8

    root = write_photo_tree(tmp_path / "tree", 1, 3, 1, long_side=64)
    files = sorted((root / "train").rglob("*.jpg"))
    Image.open(files[0]).save(tmp_path / "a.png")  # not a JPEG: decoded alone, through the host's decoder
    transform = train_transform_uint8(32, "none")
    batch = EncodedBatch([read_encoded(str(tmp_path / "a.png")), *map(read_encoded, map(str, files[1:]))], transform)
    images = batch.on_device(torch.device("cpu"))
    assert images.shape == (3, 3, 32, 32) and images.dtype == torch.uint8
    (tmp_path / "bad.jpg").write_bytes(files[1].read_bytes()[:40])  # a JPEG's header, then nothing
    broken = EncodedBatch([read_encoded(str(f)) for f in (files[0], tmp_path / "bad.jpg")], transform)
    with pytest.raises(BadImageError, match="bad.jpg"):
        broken.on_device(torch.device("cpu"))


def test_ray_data_ingest_without_ray_data_is_one_line(monkeypatch):
    import sys

    from csg.config import ConfigError, TrainConfig
    from csg.distributed.ray_data import check_ingest

    monkeypatch.setitem(sys.modules, "ray.data", None)  # as where Ray Data's dependencies are missing
    with pytest.raises(ConfigError, match=r"--ingest: ray-data needs Ray Data \(pip install 'ray\[data\]'\)"):
        check_ingest(TrainConfig(dataset="imagefolder", ingest="ray-data"))
    check_ingest(TrainConfig(dataset="imagefolder"))  # the DataLoader path needs none of it
