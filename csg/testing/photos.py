"""Photographs of ImageNet's size, for the input benchmarks and the tests that read JPEG trees:
random cuts of scikit-learn's two sample photographs, rescaled to ImageNet's common shapes
(long side 500, short side 333-375, quality 90). They average about 48 KB, against ImageNet's
110 KB: the cuts are smoother than ImageNet's photographs, so they decode faster."""
from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from PIL import Image


def photo_jpegs(count: int, seed: int = 0, long_side: int = 500) -> list[bytes]:
    """`count` JPEGs; a quarter of them portrait. `long_side` scales the whole distribution down
    for small test trees (the short side stays in ImageNet's 2:3 to 3:4 ratio)."""
    from sklearn.datasets import load_sample_images

    rng = np.random.default_rng(seed)
    photos = [Image.fromarray(p) for p in load_sample_images().images]
    out = []
    for _ in range(count):
        photo = photos[rng.integers(len(photos))]
        w, h = int(rng.integers(300, photo.width)), int(rng.integers(240, photo.height))
        left, top = int(rng.integers(0, photo.width - w + 1)), int(rng.integers(0, photo.height - h + 1))
        short = round(long_side * rng.uniform(0.666, 0.75))
        size = (long_side, short) if rng.random() < 0.75 else (short, long_side)
        cut = photo.crop((left, top, left + w, top + h)).resize(size, Image.BICUBIC)
        buffer = io.BytesIO()
        cut.save(buffer, "JPEG", quality=90)
        out.append(buffer.getvalue())
    return out


def write_photo_tree(root: Path, classes: int, train_per_class: int, val_per_class: int, seed: int = 0,
                     long_side: int = 500) -> Path:
    """An ImageFolder tree (`train/`, `val/`, a folder per class `c00`, `c01`, ...) of photo JPEGs."""
    root = Path(root)
    count = classes * (train_per_class + val_per_class)
    jpegs = iter(photo_jpegs(count, seed, long_side))
    for split, per_class in (("train", train_per_class), ("val", val_per_class)):
        for c in range(classes):
            folder = root / split / f"c{c:02d}"
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(per_class):
                (folder / f"{split}_{c:02d}_{i:05d}.jpg").write_bytes(next(jpegs))
    return root
