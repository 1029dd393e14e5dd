import numpy as np
import pytest
import torch
from PIL import Image

from csg import data
from tests.helpers import make_cifar10, make_digits_imagefolder, make_imagefolder


def test_digits_is_a_fixed_stratified_split_in_unit_range():
    info = data.describe("digits", None)
    train, test = data.load("digits", None)
    assert (info.num_classes, info.train_size, info.in_channels) == (10, 1437, 1)
    assert len(train) + len(test) == 1797
    x, y = test.tensors
    assert x.shape[1:] == (1, 8, 8) and 0 <= x.min() and x.max() <= 1
    assert np.bincount(y.numpy()).min() >= 35  # every class present in the test split
    again = data.load("digits", None)[1].tensors[1]
    assert torch.equal(y, again)


def test_cifar_pickles_load_with_augmentation_on_train_only(tmp_path):
    root = make_cifar10(tmp_path)
    info = data.describe("cifar10", str(root))
    train, test = data.load("cifar10", str(root))
    assert (info.num_classes, info.train_size) == (10, 100) and len(test) == 20
    image, label = test[0]
    assert image.shape == (3, 32, 32) and image.dtype == torch.float32 and 0 <= image.min() <= image.max() <= 1
    assert torch.equal(test[0][0], test[0][0])
    torch.manual_seed(0)
    crops = {tuple(train[0][0].flatten()[:64].tolist()) for _ in range(8)}
    assert len(crops) > 1  # random crop/flip on the training side


def test_missing_cifar_files_are_named(tmp_path):
    root = make_cifar10(tmp_path)
    (root / "cifar-10-batches-py" / "data_batch_3").unlink()
    with pytest.raises(data.DataError, match="data_batch_3"):
        data.describe("cifar10", str(root))
    assert not data.cifar_present("cifar10", str(root))


def test_imagefolder_tree(tmp_path):
    root = make_imagefolder(tmp_path, per_class=(4, 2), size=50)
    info = data.describe("imagefolder", str(root))
    train, test = data.load("imagefolder", str(root), image_size=32)
    assert (info.num_classes, info.train_size) == (3, 12) and len(test) == 6
    assert train[0][0].shape == (3, 32, 32) and test[0][0].shape == (3, 32, 32)
    assert train.classes == ["cat", "dog", "owl"]


def _augmented(train, count=24):
    torch.manual_seed(0)
    return torch.stack([train[0][0] for _ in range(count)])


def _is_shift_of(draw: torch.Tensor, whole: torch.Tensor, limit: int) -> bool:
    """Whether `draw` is `whole` moved by at most `limit` pixels, the uncovered border black."""
    size = whole.shape[-1]
    for dy in range(-limit, limit + 1):
        for dx in range(-limit, limit + 1):
            shifted = torch.zeros_like(whole)
            shifted[:, max(dy, 0):size + min(dy, 0), max(dx, 0):size + min(dx, 0)] = \
                whole[:, max(-dy, 0):size + min(-dy, 0), max(-dx, 0):size + min(-dx, 0)]
            if torch.allclose(draw, shifted):
                return True
    return False


@pytest.mark.parametrize("augment, flips", [("cifar", True), ("crop", False)])
def test_padded_crops_shift_the_whole_image_by_at_most_an_eighth_and_flip_only_for_cifar(tmp_path, augment, flips):
    root = make_digits_imagefolder(tmp_path, size=32, per_class=1)
    train, _ = data.load("imagefolder", str(root), image_size=32, augment=augment)
    whole, _ = data.load("imagefolder", str(root), image_size=32, augment="none")
    image = whole[0][0]
    draws = _augmented(train)
    shifted = [_is_shift_of(draw, image, 4) for draw in draws]
    mirrored = [_is_shift_of(draw, image.flip(-1), 4) for draw in draws]
    assert all(a or b for a, b in zip(shifted, mirrored))
    assert any(mirrored) == flips and any(shifted)
    assert len({tuple(draw.flatten().tolist()) for draw in draws}) > 4  # it does move


def test_no_augmentation_is_the_whole_image_resized(tmp_path):
    root = make_imagefolder(tmp_path, per_class=(1, 1), size=40)
    evaluated = data.evaluation_set("imagefolder", str(root), "train", 32, augment="none")[0][0]
    train, _ = data.load("imagefolder", str(root), image_size=32, augment="none", decode="pil")
    draws = _augmented(train, 4)
    assert all(torch.equal(draw, draws[0]) for draw in draws)
    assert torch.equal(draws[0], evaluated)
    uint8, _ = data.load("imagefolder", str(root), image_size=32, augment="none")
    image = uint8[0][0]
    assert image.dtype == torch.uint8 and image.shape == evaluated.shape
    assert (image.float() / 255 - evaluated).abs().mean() < 1 / 255


def test_augmentation_follows_the_image_size_and_the_presets():
    from csg.config import PRESETS

    assert data.default_augment(32) == data.default_augment(63) == "cifar"
    assert data.default_augment(64) == data.default_augment(224) == "imagenet"
    assert PRESETS["voc-resnet152"]["augment"] == "cifar"


def test_small_images_are_evaluated_whole_and_large_ones_by_imagenets_rule(tmp_path):
    """A bright one-pixel border: a center crop after a 256/224 rescale cuts it off."""
    root = make_imagefolder(tmp_path, per_class=(1, 1), size=40)
    for path, _ in data.evaluation_set("imagefolder", str(root), "test", 40, augment="none").samples:
        pixels = np.zeros((40, 40, 3), dtype=np.uint8)
        pixels[0, :] = pixels[-1, :] = pixels[:, 0] = pixels[:, -1] = 255
        Image.fromarray(pixels).save(path)
    small = data.evaluation_set("imagefolder", str(root), "test", image_size=32)[0][0]
    assert small.shape == (3, 32, 32) and small[:, 0, :].min() > 0.4 and small[:, :, -1].min() > 0.4
    imagenet = data.evaluation_set("imagefolder", str(root), "test", image_size=32, augment="imagenet")[0][0]
    assert imagenet[:, 0, :].max() < 0.1  # the crop cut the border away


def test_saved_configs_from_before_augment_still_load():
    from csg.config import TrainConfig

    saved = {**TrainConfig(dataset="imagefolder").to_dict(), "train_crop": "padded"}
    saved.pop("augment")
    assert TrainConfig.from_saved(saved).augment == "cifar"
    assert TrainConfig.from_saved({**saved, "train_crop": "resized"}).augment == "imagenet"


class _RandomAugmentation(torch.utils.data.Dataset):
    """Each item is a draw of torch's and numpy's generators, as a random augmentation makes."""

    def __len__(self):
        return 4

    def __getitem__(self, index):
        return torch.tensor([torch.rand(()).item(), float(np.random.rand())])


def _draws(rank: int) -> torch.Tensor:
    options = data.loader_options(2, seed=7, rank=rank, pin_memory=False)
    options.pop("collate_fn")
    loader = torch.utils.data.DataLoader(_RandomAugmentation(), batch_size=1, **options)
    return torch.cat(list(loader))


def test_loader_workers_draw_differently_per_worker_and_rank_and_repeat_across_runs():
    rank0, again, rank1 = _draws(0), _draws(0), _draws(1)
    assert torch.equal(rank0, again)
    assert not torch.equal(rank0, rank1)
    assert len(set(rank0[:, 0].tolist())) == 4 and len(set(rank0[:, 1].tolist())) == 4  # numpy too
    assert data.loader_options(2, 7, 0, True)["persistent_workers"]
    assert "persistent_workers" not in data.loader_options(0, 7, 0, False)


def test_every_registered_family_is_a_dataset_choice_and_an_unknown_name_is_one_line():
    from csg.data.registry import FAMILIES

    assert sorted(data.DATASET_CHOICES) == sorted(FAMILIES)
    with pytest.raises(data.DataError, match="unknown dataset 'svhn'; choose one of"):
        data.describe("svhn", None)
