"""Object masks for localization: beside an ImageFolder tree (`masks/`), and digits-scenes'."""
import numpy as np
import pytest
from PIL import Image

from csg import data as data_lib
from tests.helpers import make_imagefolder


def with_masks(root, size=40):
    """A mask per image: its left half is the object."""
    for image in (root / "val").rglob("*.png"):
        mask = np.zeros((size, size), np.uint8)
        mask[:, : size // 2] = 255
        target = root / "masks" / "val" / image.relative_to(root / "val")
        target.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(mask).save(target)
    return root


def test_imagefolder_masks_are_read_in_image_order_and_cropped_like_the_images(tmp_path):
    root = with_masks(make_imagefolder(tmp_path / "tree"))
    images = data_lib.evaluation_set("imagefolder", str(root), "test", image_size=32)
    masks = data_lib.evaluation_masks("imagefolder", "test", str(root), image_size=32)
    assert len(masks) == len(images) == 9
    mask = masks[4]
    assert mask.shape == images[4][0].shape[1:] == (32, 32) and mask.dtype.is_floating_point is False
    assert mask[:, :12].all() and not mask[:, -12:].any()  # the left half, as in the 40 px original
    assert data_lib.describe("imagefolder", str(root)).num_classes == 3  # training ignores masks/


def test_missing_masks_are_counted_and_named(tmp_path):
    root = with_masks(make_imagefolder(tmp_path / "tree"))
    (root / "masks" / "val" / "dog" / "1.png").unlink()
    with pytest.raises(data_lib.DataError, match=r"1 of 9 images .* no mask .*first: dog/1.png"):
        data_lib.evaluation_masks("imagefolder", "test", str(root))


def test_a_mask_of_another_size_than_its_image_is_refused(tmp_path):
    root = with_masks(make_imagefolder(tmp_path / "tree"))
    Image.fromarray(np.zeros((20, 20), np.uint8)).save(root / "masks" / "val" / "owl" / "0.png")
    masks = data_lib.evaluation_masks("imagefolder", "test", str(root))
    with pytest.raises(data_lib.DataError, match="is 20x20, its image .* is 40x40"):
        masks[6]
    with pytest.raises(data_lib.DataError, match="owl/0.png is 20x20"):
        masks.check_sizes()  # what localization runs before any task: headers only


def test_data_sets_without_masks_say_so():
    with pytest.raises(data_lib.DataError, match="no object masks"):
        data_lib.evaluation_masks("digits", "test")
