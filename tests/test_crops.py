"""The fused uint8 training crop (csg.data.crops): torchvision's pixels on the same box, its
boxes drawn as RandomResizedCrop draws them, and its channels-last batches made plain on the
device."""
from __future__ import annotations

import numpy as np
import torch
from torch.utils.data import DataLoader, default_collate
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as F

from csg import data
from csg.data.checked_folder import decode_uint8
from csg.data.crops import ResizedCropFlip, crop_box, resized_crop
from csg.method.engine import device_pixels
from csg.testing.photos import photo_jpegs


def _photos(count: int = 6) -> list[torch.Tensor]:
    """Decoded as training decodes them: (3, H, W) views of (H, W, 3) memory."""
    return [decode_uint8(torch.frombuffer(bytearray(jpeg), dtype=torch.uint8), "photo")
            for jpeg in photo_jpegs(count, long_side=160)]


def test_the_fused_crop_gives_torchvisions_pixels_on_the_same_box():
    torch.manual_seed(0)
    for image in _photos():
        assert not image.is_contiguous()  # the decoder's layout, which the fused crop relies on
        for layout in (image, image.contiguous()):
            top, left, h, w = v2.RandomResizedCrop.get_params(layout, (0.08, 1.0), (3 / 4, 4 / 3))
            expected = F.resized_crop(layout, top, left, h, w, [56, 56], antialias=True)
            assert torch.equal(resized_crop(layout, (top, left, h, w), 56, flip=False), expected)
            assert torch.equal(resized_crop(layout, (top, left, h, w), 56, flip=True), F.horizontal_flip(expected))


def test_boxes_are_drawn_as_random_resized_crop_draws_them():
    """4,000 boxes of each on a 300 x 200 image: the same mean height, width and corner."""
    torch.manual_seed(0)
    image = torch.zeros(3, 200, 300, dtype=torch.uint8)
    ours = np.array([crop_box(200, 300, torch.rand(22).tolist()) for _ in range(4000)], dtype=float)
    theirs = np.array([v2.RandomResizedCrop.get_params(image, (0.08, 1.0), (3 / 4, 4 / 3)) for _ in range(4000)],
                      dtype=float)
    assert (ours[:, 0] + ours[:, 2] <= 200).all() and (ours[:, 1] + ours[:, 3] <= 300).all() and (ours >= 0).all()
    assert np.allclose(ours.mean(axis=0), theirs.mean(axis=0), rtol=0.05), (ours.mean(axis=0), theirs.mean(axis=0))
    assert np.allclose(ours.std(axis=0), theirs.std(axis=0), rtol=0.08), (ours.std(axis=0), theirs.std(axis=0))


def test_a_strip_too_thin_for_any_try_gets_the_centred_crop():
    image = torch.zeros(3, 10, 1000, dtype=torch.uint8)
    centred = v2.RandomResizedCrop.get_params(image, (0.08, 1.0), (3 / 4, 4 / 3))  # deterministic here
    assert crop_box(10, 1000, [0.999] * 22) == tuple(centred) == (0, 493, 10, 13)


def test_the_transform_is_seeded_by_torch_and_flips_half_the_time():
    """On a left-to-right ramp, every crop of an unflipped image rises and every flipped one falls."""
    ramp = torch.arange(256, dtype=torch.uint8).expand(3, 200, 256)
    transform = ResizedCropFlip(32)
    torch.manual_seed(3)
    first = [transform(ramp) for _ in range(400)]
    torch.manual_seed(3)
    assert all(torch.equal(out, transform(ramp)) for out in first)
    assert all(out.shape == (3, 32, 32) and out.dtype == torch.uint8 for out in first)
    falling = sum(int(out[0, 0, 0]) > int(out[0, 0, -1]) for out in first)
    rising = sum(int(out[0, 0, 0]) < int(out[0, 0, -1]) for out in first)
    assert falling + rising == 400 and 150 < falling < 250


def test_channels_last_crops_collate_to_the_same_batch_and_arrive_contiguous():
    torch.manual_seed(0)
    transform = ResizedCropFlip(24)
    samples = [(transform(image), label) for label, image in enumerate(_photos(5))]
    assert samples[0][0].permute(1, 2, 0).is_contiguous()
    images, labels = data.collate_skipping_bad([samples[0], None, *samples[1:]])
    plain, plain_labels = default_collate([(image.contiguous(), label) for image, label in samples])
    assert torch.equal(images, plain) and torch.equal(labels, plain_labels)
    assert images.permute(0, 2, 3, 1).is_contiguous()  # stacked as they lay: one copy each
    pixels = device_pixels(images, torch.device("cpu"))
    assert pixels.is_contiguous() and torch.equal(pixels, plain.float() / 255)


def test_the_batches_cross_loader_workers_intact():
    torch.manual_seed(0)
    transform = ResizedCropFlip(24)
    samples = [(transform(image), label) for label, image in enumerate(_photos(4))]
    loader = DataLoader(samples, batch_size=4, num_workers=1, collate_fn=data.collate_skipping_bad)
    (images, _), = list(loader)
    assert torch.equal(images, torch.stack([image for image, _ in samples]))
    assert images.permute(0, 2, 3, 1).is_contiguous()  # the layout survives the shared-memory hand-over
