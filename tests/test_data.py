import numpy as np
import pytest
import torch

from csg import data
from tests.helpers import make_cifar10, make_imagefolder


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


def test_padded_crop_keeps_the_whole_square_image_shifted_at_most_an_eighth(tmp_path):
    """The VOC preset's augmentation: the image resized whole, then shifted by up to size/8."""
    from csg.config import PRESETS

    root = make_imagefolder(tmp_path, per_class=(2, 1), size=40)
    train, _ = data.load("imagefolder", str(root), image_size=32, train_crop="padded")
    torch.manual_seed(0)
    images = torch.stack([train[0][0] for _ in range(20)])
    assert images.shape == (20, 3, 32, 32)
    zero_rows = (images.sum(dim=(1, 3)) == 0).sum(dim=1)  # padding shows as black rows
    assert zero_rows.max() <= 4 and zero_rows.max() > 0
    assert PRESETS["voc-resnet152"]["train_crop"] == "padded"


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
