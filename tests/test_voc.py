"""The VOC + Pascal-Part preparation on a tiny fabricated tree in the real layout."""
import numpy as np
import pandas as pd
import pytest
from PIL import Image
from scipy.io import savemat

from csg import data as data_lib
from tests.helpers import job_main

OBJECT = [("class", "O"), ("class_ind", "O"), ("mask", "O"), ("parts", "O")]


def write_annotation(path, image_id, objects):
    """A Pascal-Part .mat: struct anno with imname and a struct array of objects."""
    array = np.zeros((1, len(objects)), dtype=OBJECT)
    for i, (name, mask) in enumerate(objects):
        parts = np.zeros((1, 0), dtype=[("part_name", "O"), ("mask", "O")])
        array[0, i] = (name, i + 1, mask.astype(np.uint8), parts)
    savemat(path, {"anno": {"imname": image_id, "objects": array}})


def box_mask(shape, top, left, height, width):
    mask = np.zeros(shape, bool)
    mask[top:top + height, left:left + width] = True
    return mask


def fabricated_voc(root, images=12, shape=(60, 80)):
    """`images` source images; image i holds a cat (and every third also a dog and a person),
    every fifth a bird with an empty mask."""
    (root / "VOC2010" / "JPEGImages").mkdir(parents=True)
    (root / "VOC2010" / "ImageSets" / "Main").mkdir(parents=True)
    (root / "parts").mkdir()
    rng = np.random.default_rng(0)
    ids = [f"2008_{i:06d}" for i in range(images)]
    for i, image_id in enumerate(ids):
        Image.fromarray(rng.integers(0, 256, (*shape, 3), dtype=np.uint8)).save(
            root / "VOC2010" / "JPEGImages" / f"{image_id}.jpg")
        objects = [("cat", box_mask(shape, 5, 60, 30, 20))]  # squared, it reaches 5 px past the right edge
        if i % 3 == 0:
            objects += [("dog", box_mask(shape, 20, 10, 10, 20)), ("person", box_mask(shape, 0, 0, 5, 5))]
        if i % 5 == 0:
            objects.append(("bird", np.zeros(shape, bool)))
        write_annotation(root / "parts" / f"{image_id}.mat", image_id, objects)
    (root / "VOC2010" / "ImageSets" / "Main" / "trainval.txt").write_text("\n".join(ids) + "\n")
    return root


def prepare(root, *extra):
    return job_main("prepare_voc")(["--voc", str(root / "VOC2010"), "--parts", str(root / "parts"),
                                    "--out", str(root / "out"), "--size", "32", *extra])


def test_crops_masks_split_and_manifest(tmp_path, capsys):
    root = fabricated_voc(tmp_path)
    manifest = prepare(root)
    out = capsys.readouterr().out
    assert sorted(manifest["class"].value_counts().items()) == [("cat", 12), ("dog", 4)]  # person: not kept
    assert "3 with an empty mask" in out and "total 16" in out  # the birds of images 0, 5, 10
    # every object of a source image on one side
    assert (manifest.groupby("source_image")["split"].nunique() == 1).all()
    assert 0 < (manifest["split"] == "test").sum() <= round(16 * 1700 / 5344)
    assert manifest.equals(pd.read_parquet(root / "out" / "manifest.parquet"))
    cat = manifest[manifest["class"] == "cat"].iloc[0]
    assert (cat["top"], cat["left"], cat["side"]) == (5, 55, 30)  # a 30-px square centred on the 30x20 box
    # an ImageFolder tree with masks beside it, each crop and mask 32 px
    images = data_lib.evaluation_set("imagefolder", str(root / "out"), "test", image_size=32)
    masks = data_lib.evaluation_masks("imagefolder", "test", str(root / "out"), image_size=32)
    assert len(images) == len(masks) == (manifest["split"] == "test").sum()
    mask = np.asarray(Image.open(next((root / "out" / "masks").rglob("cat/*.png"))))
    assert mask.shape == (32, 32) and set(np.unique(mask)) == {0, 255}
    assert not mask[:, -4:].any() and mask[:, 10].all()  # zeros where the square left the image


def test_the_split_is_reproducible_and_follows_the_seed(tmp_path):
    root = fabricated_voc(tmp_path, images=30)
    first = prepare(root, "--seed", "1")
    again = prepare(root, "--seed", "1")
    other = prepare(root, "--seed", "2")
    assert first.equals(again) and not first["split"].equals(other["split"])


@pytest.mark.parametrize("breakage, message", [
    (lambda root: (root / "VOC2010" / "ImageSets" / "Main" / "trainval.txt").unlink(), "trainval.txt does not exist"),
    (lambda root: savemat(root / "parts" / "2008_000001.mat", {"something": np.ones(3)}), "not a Pascal-Part"),
    (lambda root: write_annotation(root / "parts" / "2008_000002.mat", "x", [("cat", np.ones((60, 80, 2)))]),
     "mask of shape"),
])
def test_bad_input_is_one_line_and_exit_2(tmp_path, capsys, breakage, message):
    root = fabricated_voc(tmp_path, images=4)
    breakage(root)
    with pytest.raises(SystemExit) as exit_info:
        prepare(root)
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and len(err.strip().splitlines()) == 1 and message in err


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_voc_resnet152_preset_fine_tunes_from_a_weights_file_and_localizes(ray_local, tmp_path):
    """The preset end to end on the prepared tree (at 64 px, not the preset's 128: the test needs
    no detail), from a local torchvision state dict (random weights here): stages up to layer2
    never move, layer3 moves only on STD epochs. The localization runs in this process, as it
    would without RAY_ADDRESS, so that no Ray task loads ResNet-152 again."""
    import torch
    import torchvision

    prepare(fabricated_voc(tmp_path), "--size", "64")
    weights = tmp_path / "resnet152.pth"
    torch.save(torchvision.models.resnet152().state_dict(), weights)
    row = job_main("train_imagenet")(["--preset", "voc-resnet152", "--data", str(tmp_path / "out"),
                                      "--weights", str(weights), "--image-size", "64",
                                      "--workers", "1", "--loader-workers", "0",
                                      "--epochs", "2", "--warmup", "1", "--batch-size", "4", "--keep-checkpoints", "0",
                                      "--g-density", "0.5",  # two classes here; 0.2 is for six
                                      "--results", str(tmp_path / "results"), "--run-id", "voc"])
    assert row["status"] == "finished"
    epochs = pd.read_parquet(tmp_path / "results" / "epochs")
    assert epochs.sort_values("epoch")["path"].tolist() == ["std", "csg"]
    initial = torch.load(weights, weights_only=True)
    states = sorted((torch.load(path, weights_only=True) for path in
                     (tmp_path / "results" / "checkpoints" / "voc").rglob("state.pt")), key=lambda s: s["epoch"])
    assert [state["epoch"] for state in states] == [0, 1]  # kept: both (--keep-checkpoints 0)
    after_std, after_csg = (state["model"] for state in states)
    for name in ("conv1.weight", "layer1.0.conv1.weight", "layer2.0.conv1.weight"):
        assert torch.equal(after_csg[f"net.stages.{'stem.0.weight' if name == 'conv1.weight' else name}"], initial[name])
    assert not torch.equal(after_std["net.stages.layer3.0.conv1.weight"], initial["layer3.0.conv1.weight"])
    assert torch.equal(after_csg["net.stages.layer3.0.conv1.weight"], after_std["net.stages.layer3.0.conv1.weight"])
    assert not torch.equal(after_csg["net.stages.layer4.0.conv1.weight"], after_std["net.stages.layer4.0.conv1.weight"])
    found = job_main("analyze")(["localize", "--results", str(tmp_path / "results"), "--runs", "voc",
                                 "--methods", "cam", "activmap", "--examples", "1", "--shards", "1", "--ray", "off"])
    table = found.tables["localization"]
    assert table.loc[table["class"] == "total", "n_images"].dropna().tolist() == [len(found.scored)] == [5]
