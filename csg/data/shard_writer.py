"""Write an ImageFolder tree (masks included) as the shards `csg.data.shards` reads, a process
per shard at a time: each image decoded once, shrunk to `short_side` (never enlarged; a JPEG
already small enough is kept byte for byte) and re-encoded at `quality`."""
from __future__ import annotations

import io
import json
import os
import tarfile
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from csg.data.imagefolder import imagefolder_classes
from csg.data.registry import DataError
from csg.data.shards import MANIFEST, SPLITS, WRITTEN_FROM, written_from


@dataclass(frozen=True)
class ShardJob:
    """One shard to write: its samples as (key, source image, label, class, mask or None)."""

    path: Path
    tree: Path
    samples: list[tuple[str, Path, int, str, Path | None]]
    short_side: int
    quality: int
    skip_bad: bool


def write_shards(tree: str, out: str, short_side: int = 320, quality: int = 90, shard_size: int = 1000,
                 seed: int = 0, processes: int | None = None, skip_bad_images: bool = False, on_shard=None) -> dict:
    """Write `tree` as shards under `out` and return what was written (counts, bytes, skipped).
    `out` must be empty, absent, or hold shards of this same tree (they are replaced).
    `on_shard(done, total)` is called as each shard is written."""
    tree_path, out_path = Path(tree).resolve(), Path(out)
    classes = imagefolder_classes(tree_path)
    settings = dict(short_side=short_side, quality=quality, shard_size=shard_size, seed=seed)
    _check_out(out_path, tree_path)
    out_path.mkdir(parents=True, exist_ok=True)
    jobs = [job for split in SPLITS.values()
            for job in _split_jobs(tree_path, out_path, split, classes, shard_size, seed, short_side, quality,
                                   skip_bad_images)]
    rows, done = [], 0
    with ProcessPoolExecutor(processes or os.cpu_count()) as pool:
        for shard_rows in pool.map(_write_shard, jobs):
            rows.extend(shard_rows)
            done += 1
            if on_shard is not None:
                on_shard(done, len(jobs))
    _write_manifest(out_path, rows, {"tree": str(tree_path), "classes": classes, **settings})
    _remove_stale(out_path, {job.path.name for job in jobs})
    sources = sum(len(job.samples) for job in jobs)
    return {"shards": len(jobs), "samples": len(rows), "skipped": sources - len(rows),
            "source_bytes": sum(sample[1].stat().st_size for job in jobs for sample in job.samples),
            "shard_bytes": sum(job.path.stat().st_size for job in jobs)}


def _check_out(out: Path, tree: Path) -> None:
    if not out.exists():
        return
    if not out.is_dir():
        raise DataError(f"--out: {out} is not a directory")
    if (out / MANIFEST).is_file():
        held = written_from(str(out)).get("tree")
        if held != str(tree):
            raise DataError(f"--out: {out} holds the shards of another tree ({held}); choose an empty directory")
    elif any(out.iterdir()):
        raise DataError(f"--out: {out} is not empty and holds no shards; choose an empty directory")


def _split_jobs(tree: Path, out: Path, split: str, classes: list[str], shard_size: int, seed: int,
                short_side: int, quality: int, skip_bad: bool) -> list[ShardJob]:
    """A split's files, as ImageFolder finds them, in a seeded random order, cut into shards of
    `shard_size`."""
    from torchvision.datasets.folder import IMG_EXTENSIONS, make_dataset

    class_index = {name: label for label, name in enumerate(classes)}
    files = [(Path(path), label) for path, label in make_dataset(str(tree / split), class_index, IMG_EXTENSIONS,
                                                                 allow_empty=True)]
    if not files:
        raise DataError(f"--data: {tree / split} holds no images")
    order = np.random.default_rng([seed, list(SPLITS.values()).index(split)]).permutation(len(files))
    masks = tree / "masks" / split
    samples = []
    for index, position in enumerate(order):
        path, label = files[position]
        mask = (masks / path.relative_to(tree / split)).with_suffix(".png")
        samples.append((f"{index:08d}", path, label, classes[label], mask if mask.is_file() else None))
    return [ShardJob(out / f"{split}-{n:06d}.tar", tree, samples[start:start + shard_size], short_side, quality,
                     skip_bad)
            for n, start in enumerate(range(0, len(samples), shard_size))]


def _write_shard(job: ShardJob) -> list[dict]:
    """Write one shard (to a temporary name, renamed when whole) and return its manifest rows."""
    from PIL import Image

    split = job.path.name.split("-")[0]
    rows, partial = [], job.path.with_suffix(".tar.partial")
    with tarfile.open(partial, "w", format=tarfile.USTAR_FORMAT) as tar:
        for key, source, label, name, mask in job.samples:
            try:
                image_bytes, size, new_size = _shrunk(source, job.short_side, job.quality)
            except OSError as exc:
                if job.skip_bad:
                    continue
                raise DataError(f"unreadable image {source} ({exc}); --skip-bad-images skips such files") from None
            members = {"jpg": image_bytes, "cls": str(label).encode()}
            if mask is not None:
                with Image.open(mask) as m:
                    buffer = io.BytesIO()
                    m.convert("L").resize(new_size, Image.NEAREST).save(buffer, "PNG")
                    members["mask.png"] = buffer.getvalue()
            for extension, data in members.items():
                info = tarfile.TarInfo(f"{key}.{extension}")
                info.size, info.mode = len(data), 0o444
                tar.addfile(info, io.BytesIO(data))
            rows.append({"split": split, "shard": job.path.name, "key": key, "label": label, "class": name,
                         "source": str(source.relative_to(job.tree)), "width": size[0], "height": size[1]})
    with tarfile.open(partial) as tar:  # where each member's bytes lie, as the tar module placed them
        placed = {m.name: (m.offset_data, m.size) for m in tar.getmembers()}
    for row in rows:
        row["offset"], row["nbytes"] = placed[f"{row['key']}.jpg"]
        row["mask_offset"], row["mask_nbytes"] = placed.get(f"{row['key']}.mask.png", (None, None))
    partial.replace(job.path)
    return rows


def _shrunk(source: Path, short_side: int, quality: int) -> tuple[bytes, tuple[int, int], tuple[int, int]]:
    """(JPEG bytes, original size, new size): shrunk so the short side is `short_side`."""
    from PIL import Image

    with Image.open(source) as image:
        size = image.size
        scale = short_side / min(size)
        if scale >= 1 and image.format == "JPEG" and image.mode == "RGB":
            return source.read_bytes(), size, size
        rgb = image.convert("RGB")
    new_size = size if scale >= 1 else (max(1, round(size[0] * scale)), max(1, round(size[1] * scale)))
    if new_size != size:
        rgb = rgb.resize(new_size, Image.BICUBIC, reducing_gap=3.0)
    buffer = io.BytesIO()
    rgb.save(buffer, "JPEG", quality=quality)
    return buffer.getvalue(), size, new_size


def _write_manifest(out: Path, rows: list[dict], written: dict) -> None:
    """The manifest, with what it was written from (tree, classes, settings) as its metadata."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pa.Table.from_pylist(rows, schema=pa.schema([
        ("split", pa.string()), ("shard", pa.string()), ("key", pa.string()), ("label", pa.int64()),
        ("class", pa.string()), ("source", pa.string()), ("width", pa.int64()), ("height", pa.int64()),
        ("offset", pa.int64()), ("nbytes", pa.int64()), ("mask_offset", pa.int64()), ("mask_nbytes", pa.int64()),
    ], metadata={WRITTEN_FROM: json.dumps(written).encode()}))
    partial = out / f"{MANIFEST}.partial"
    pq.write_table(table, partial)
    partial.replace(out / MANIFEST)


def _remove_stale(out: Path, written: set[str]) -> None:
    """Shards of an earlier write of the same tree that this one no longer has."""
    for path in out.glob("*.tar"):
        if path.name not in written:
            path.unlink()
