"""PASCAL VOC 2010 + Pascal-Part -> the paper's six-animal classification tree with object
masks (Appendix B): every object of the chosen classes cropped to a square around its mask
(zeros where the square leaves the image), resized, written as an ImageFolder tree with
`masks/` beside it, split into training and test objects so that no source image is on
both sides.

Pascal-Part's `Annotations_Part/<id>.mat` holds a struct `anno` whose `objects` each carry
`class` (a name), `mask` (the object's pixels, the image's size) and `parts`.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

PAPER_CLASSES = ("bird", "cat", "dog", "cow", "horse", "sheep")
# Appendix B: 3,644 training and 1,700 test objects.
TEST_SHARE = 1700 / (3644 + 1700)


class VocError(ValueError):
    """Missing or malformed input; one line naming the file."""


@dataclass(frozen=True)
class VocObject:
    object_id: str
    source_image: str
    cls: str
    mask: np.ndarray  # (H, W) bool


def read_objects(parts_file: Path, classes) -> tuple[list[VocObject], int]:
    """The objects of `classes` in one Pascal-Part annotation, and how many of them had an
    empty mask (skipped)."""
    from scipy.io import loadmat

    try:
        anno = loadmat(parts_file, squeeze_me=True, struct_as_record=False)["anno"]
        objects = np.atleast_1d(anno.objects)
        found, empty = [], 0
        for index, obj in enumerate(objects):
            if obj.__dict__["class"] not in classes:
                continue
            mask = np.asarray(obj.mask) > 0
            if mask.ndim != 2:
                raise VocError(f"{parts_file}: object {index} has a mask of shape {mask.shape}, not (H, W)")
            if not mask.any():
                empty += 1
                continue
            found.append(VocObject(f"{parts_file.stem}_{index}", parts_file.stem, obj.__dict__["class"], mask))
    except (KeyError, AttributeError, ValueError, TypeError) as exc:
        if isinstance(exc, VocError):
            raise
        raise VocError(f"{parts_file}: not a Pascal-Part annotation (a struct anno with objects holding class "
                       f"and mask): {exc}") from None
    return found, empty


def square_box(mask: np.ndarray) -> tuple[int, int, int]:
    """(top, left, side): the smallest square centred on the mask's bounding box that holds it."""
    rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
    height, width = rows[-1] - rows[0] + 1, cols[-1] - cols[0] + 1
    side = int(max(height, width))
    return int(rows[0] - (side - height) // 2), int(cols[0] - (side - width) // 2), side


def crop(array: np.ndarray, top: int, left: int, side: int) -> np.ndarray:
    """The square of `array` at (top, left), zeros where it leaves the array."""
    out = np.zeros((side, side, *array.shape[2:]), array.dtype)
    t0, l0 = max(top, 0), max(left, 0)
    t1, l1 = min(top + side, array.shape[0]), min(left + side, array.shape[1])
    out[t0 - top:t1 - top, l0 - left:l1 - left] = array[t0:t1, l0:l1]
    return out


def split_by_image(objects: list[VocObject], seed: int, test_share: float = TEST_SHARE) -> dict[str, str]:
    """object id -> 'train' or 'val': source images in a seeded order fill the test side up to
    its share of the objects; every object of one image lands on the same side."""
    per_image: dict[str, list[str]] = {}
    for obj in objects:
        per_image.setdefault(obj.source_image, []).append(obj.object_id)
    target = round(test_share * len(objects))
    side, test = {}, 0
    for image in np.random.default_rng(seed).permutation(sorted(per_image)):
        ids = per_image[image]
        to_test = test + len(ids) <= target
        test += len(ids) if to_test else 0
        side.update({object_id: "val" if to_test else "train" for object_id in ids})
    return side


def prepare(voc: Path, parts: Path, out: Path, size: int = 128, classes=PAPER_CLASSES, seed: int = 0,
            progress=print) -> pd.DataFrame:
    """Write the tree under `out` and return its manifest (also `out/manifest.parquet`)."""
    voc, parts, out = Path(voc), Path(parts), Path(out)
    listing = voc / "ImageSets" / "Main" / "trainval.txt"
    for path in (voc / "JPEGImages", listing, parts):
        if not path.exists():
            raise VocError(f"{path} does not exist (--voc holds JPEGImages/ and ImageSets/Main/trainval.txt; "
                           f"--parts holds Pascal-Part's .mat files)")
    ids = listing.read_text().split()
    objects, empty, unannotated = [], 0, 0
    for image_id in ids:
        annotation = parts / f"{image_id}.mat"
        if not annotation.is_file():
            unannotated += 1
            continue
        found, skipped = read_objects(annotation, classes)
        objects += found
        empty += skipped
    if not objects:
        raise VocError(f"no object of {', '.join(classes)} in the {len(ids)} trainval images annotated under {parts}")
    sides = split_by_image(objects, seed)
    rows = []
    for number, obj in enumerate(objects, 1):
        image_file = voc / "JPEGImages" / f"{obj.source_image}.jpg"
        if not image_file.is_file():
            raise VocError(f"{image_file} does not exist (listed in {listing})")
        with Image.open(image_file) as image:
            pixels = np.asarray(image.convert("RGB"))
        if pixels.shape[:2] != obj.mask.shape:
            raise VocError(f"{obj.source_image}: mask {obj.mask.shape} and image {pixels.shape[:2]} differ in size")
        top, left, side = square_box(obj.mask)
        split = sides[obj.object_id]
        for root, array, kind in ((out / split, pixels, "image"), (out / "masks" / split, obj.mask, "mask")):
            folder = root / obj.cls
            folder.mkdir(parents=True, exist_ok=True)
            square = crop(array.astype(np.uint8) * (255 if kind == "mask" else 1), top, left, side)
            resample = Image.Resampling.NEAREST if kind == "mask" else Image.Resampling.BILINEAR
            resized = Image.fromarray(square).resize((size, size), resample)
            resized.save(folder / f"{obj.object_id}.{'png' if kind == 'mask' else 'jpg'}", **(
                {"quality": 95} if kind == "image" else {}))
        rows.append({"object_id": obj.object_id, "source_image": obj.source_image, "class": obj.cls,
                     "split": "train" if split == "train" else "test", "top": top, "left": left, "side": side})
        if number % 500 == 0:
            progress(f"prepare_voc: {number}/{len(objects)} objects written")
    manifest = pd.DataFrame(rows)
    manifest.to_parquet(out / "manifest.parquet", index=False)
    counts = manifest.groupby(["class", "split"]).size().unstack(fill_value=0)
    progress(f"objects per class and split (skipped: {empty} with an empty mask, {unannotated} trainval images "
             f"without a Pascal-Part file)\n{counts.to_string()}\ntotal {len(manifest)}: "
             f"{(manifest['split'] == 'train').sum()} train, {(manifest['split'] == 'test').sum()} test")
    return manifest
