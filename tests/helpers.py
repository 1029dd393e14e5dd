"""Shared test helpers: load a job script's main() and fabricate data trees in real formats."""
import pickle
import re
import runpy
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
DIGITS_ARGS = ["--preset", "digits-resnet20", "--workers", "2", "--epochs", "6", "--period", "2",
               "--lambda2", "0.2", "--seed", "3", "--batch-size", "32"]


def documented_columns(table: str) -> dict[str, str]:
    """The columns and types docs/results.md's section on `table` documents."""
    text = (REPO / "docs" / "results.md").read_text()
    section = text.split(f"\n## `{table}`", 1)[1].split("\n## ", 1)[0]
    return dict(re.findall(r"^\| `([\w.]+)` \| (\w+) \|", section, flags=re.M))


def written_columns(results: Path, table: str) -> dict[str, str]:
    """The columns and types of a table as written (run_id lives in the directory names)."""
    schema = pq.read_schema(next((Path(results) / table).rglob("part-0.parquet")))
    return {f.name: str(f.type).replace("double", "float64") for f in schema}


def job_main(name: str):
    return runpy.run_path(str(REPO / "jobs" / f"{name}.py"))["main"]


def make_imagefolder(root: Path, classes=("cat", "dog", "owl"), per_class=(6, 3), size=40, seed=0) -> Path:
    rng = np.random.default_rng(seed)
    for split, count in zip(("train", "val"), per_class):
        for i, name in enumerate(classes):
            folder = root / split / name
            folder.mkdir(parents=True, exist_ok=True)
            for j in range(count):
                pixels = rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
                pixels[..., i % 3] = 255  # each class tinted, so there is something to learn
                Image.fromarray(pixels).save(folder / f"{j}.png")
    return root


def make_digits_imagefolder(root: Path, size=32, per_class: int | None = None) -> Path:
    """scikit-learn's handwritten digits (the package's own train/test split) as an ImageFolder
    tree of RGB PNGs upscaled to `size`: small images whose mirror image can be another class.
    `per_class` keeps the first images of each class in each split."""
    from csg.data import _digits_split

    x_train, x_test, y_train, y_test = _digits_split()
    for split, images, labels in (("train", x_train, y_train), ("val", x_test, y_test)):
        counts = np.zeros(10, dtype=int)
        for index, (image, label) in enumerate(zip(images, labels)):
            if per_class is not None and counts[label] >= per_class:
                continue
            counts[label] += 1
            folder = root / split / str(label)
            folder.mkdir(parents=True, exist_ok=True)
            gray = Image.fromarray((image[0] * 255).astype(np.uint8)).resize((size, size), Image.BILINEAR)
            gray.convert("RGB").save(folder / f"{index}.png")
    return root


def make_cifar10(root: Path, per_batch=20, test=20, seed=0) -> Path:
    rng = np.random.default_rng(seed)
    base = root / "cifar-10-batches-py"
    base.mkdir(parents=True)

    def batch(n):
        return {b"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8), b"labels": list(rng.integers(0, 10, n))}

    for name, n in [*((f"data_batch_{i}", per_batch) for i in range(1, 6)), ("test_batch", test)]:
        with open(base / name, "wb") as f:
            pickle.dump(batch(n), f)
    with open(base / "batches.meta", "wb") as f:
        pickle.dump({b"label_names": [f"c{i}".encode() for i in range(10)]}, f)
    return root
