"""An ImageFolder tree as WebDataset-style tar shards, each image shrunk once, read back.

A shard directory holds `train-000000.tar`, ..., `val-000000.tar`, ... and `shards.parquet`,
the manifest (csg.data.shard_writer writes them). In a shard, sample `key` is the members `key.jpg` (the image, short side at most
`short_side`), `key.cls` (its class index, ASCII) and, when the tree has masks, `key.mask.png`:
the `webdataset` format, so other tools read the shards as they are. Samples are written in a
seeded random order, so every shard mixes the classes and a small shuffle buffer suffices.

The manifest has a row per sample (split, shard, key, label, class, the source file relative
to the tree, its original width and height, and where its members' bytes lie in the shard), so
evaluation reads any image by offset, and training plans each epoch without opening a shard
and reads each planned range of a shard in one request.

Training streams (`ShardStream`): each epoch the shard order is shuffled from (seed, epoch);
rank r takes every world-th whole shard, the shards left over are read one after another and
split among the ranks by samples, and every rank reads the same count (the smallest rank's: at most a shard's size
difference is dropped per epoch, a different part each epoch). A rank's DataLoader workers
split its samples into contiguous ranges, and each shuffles what it decodes through a buffer.

The directory may be local or any URI pyarrow's file systems open (s3://, gs://, hdfs://,
file://); pyarrow is imported only here, when a shard directory is read.
"""
from __future__ import annotations

import io
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset, IterableDataset, get_worker_info

from csg.data.registry import BadImageError, DataError

MANIFEST = "shards.parquet"
SPLITS = {"train": "train", "test": "val"}  # evaluation_set's split -> the tree's folder
SHUFFLE_BUFFER = 1000
WRITTEN_FROM = b"csg.written_from"  # the manifest's metadata: tree, classes and settings, as JSON
# The manifest's columns the readers use; source, class and sizes are for people and other tools.
READ_COLUMNS = ["split", "shard", "key", "label", "offset", "nbytes", "mask_offset", "mask_nbytes"]


def is_shard_dir(root: str | None) -> bool:
    """A URI, or a local directory holding a manifest: read as shards, not as an ImageFolder tree."""
    return root is not None and ("://" in root or (Path(root) / MANIFEST).is_file())


def written_from(root: str) -> dict:
    """What a shard directory was written from: its tree, classes and settings."""
    import pyarrow.parquet as pq

    fs, base = filesystem(root)
    return json.loads(pq.read_schema(f"{base}/{MANIFEST}", filesystem=fs).metadata[WRITTEN_FROM])


def filesystem(root: str):
    """(pyarrow file system, path inside it) for a local path or a URI."""
    from pyarrow import fs

    if "://" in root:
        return fs.FileSystem.from_uri(root)
    return fs.LocalFileSystem(), str(Path(root).resolve())


@dataclass(frozen=True)
class Manifest:
    """A shard directory's manifest, one split's rows at a time."""

    root: str
    classes: list[str]
    table: dict  # column name -> numpy array, every split's rows

    @classmethod
    def read(cls, root: str) -> Manifest:
        """The columns readers use (`READ_COLUMNS`): ImageNet's manifest holds 1.3M rows, which
        every rank and loader process keeps."""
        import pyarrow.parquet as pq

        fs, base = filesystem(root)
        try:
            table = pq.read_table(f"{base}/{MANIFEST}", filesystem=fs, columns=READ_COLUMNS)
        except (OSError, ValueError) as exc:  # absent, or not Parquet
            raise DataError(f"--data: {root} holds no readable {MANIFEST} (jobs/prepare_shards.py writes it): "
                            f"{exc}") from None
        columns = {name: table.column(name).to_numpy(zero_copy_only=False) for name in table.column_names}
        return cls(root, json.loads(table.schema.metadata[WRITTEN_FROM])["classes"], columns)

    def rows(self, split: str) -> dict:
        """The columns of one split ('train' or 'val'), in shard then key order."""
        keep = self.table["split"] == split
        return {name: values[keep] for name, values in self.table.items()}

    def shards(self, split: str) -> tuple[list[str], list[dict]]:
        """Each shard of a split and its rows (key, label, offset, nbytes), in shard and key order
        (rows are written in key order within a shard): one stable sort, then a slice per shard."""
        rows = self.rows(split)
        order = np.argsort(rows["shard"], kind="stable")
        names, starts = np.unique(rows["shard"][order], return_index=True)
        ends = [*starts[1:], len(order)]
        return names.tolist(), [{column: rows[column][order[start:end]] for column in ("key", "label", "offset", "nbytes")}
                                for start, end in zip(starts, ends)]


class ShardFiles:
    """Reads members by offset from shards, one open file per shard, opened in the process
    that reads (so the object pickles to loader workers without its handles)."""

    def __init__(self, root: str):
        self.root = root
        self._fs = None
        self._open = {}

    def __getstate__(self):
        return {"root": self.root, "_fs": None, "_open": {}}

    def _base(self):
        if self._fs is None:
            self._fs, self._path = filesystem(self.root)
        return self._fs, self._path

    def read(self, shard: str, offset: int, nbytes: int) -> bytearray:
        """`nbytes` from `offset`, or fewer where the shard ends early (a cut file): read in
        place into a writable buffer, which torch.frombuffer takes without a copy."""
        if shard not in self._open:
            fs, base = self._base()
            self._open[shard] = fs.open_input_file(f"{base}/{shard}")
        file, data = self._open[shard], bytearray(nbytes)
        file.seek(offset)
        del data[file.readinto(data):]
        return data


def epoch_plan(counts: list[int], seed: int, epoch: int, rank: int, world: int, worker: int = 0,
               workers: int = 1) -> list[tuple[int, int, int]]:
    """What one loader worker of one rank reads in an epoch: (shard index, first sample, end)
    ranges, in reading order. See the module docstring for the rule; every (rank, worker) of an
    epoch gets the same sample count within one, and every rank exactly the same total."""
    order = np.random.default_rng([seed, epoch]).permutation(len(counts)).tolist()
    whole = len(order) - len(order) % world
    leftover = [(s, 0, counts[s]) for s in order[whole:]]
    size = sum(counts[s] for s in order[whole:])

    def rank_ranges(r: int) -> list[tuple[int, int, int]]:
        """Every world-th whole shard, then an equal share of the leftover shards' samples."""
        return [(s, 0, counts[s]) for s in order[r:whole:world]] + _part(leftover, r * size // world,
                                                                         (r + 1) * size // world)

    cap = min(sum(end - start for _, start, end in rank_ranges(r)) for r in range(world))
    return _part(rank_ranges(rank), worker * cap // workers, (worker + 1) * cap // workers)


def _part(ranges: list[tuple[int, int, int]], first: int, last: int) -> list[tuple[int, int, int]]:
    """The samples at positions [first, last) of the ranges read one after another, as ranges."""
    part, position = [], 0  # position: samples of the earlier ranges
    for shard, start, end in ranges:
        lo, hi = max(first - position, 0), min(last - position, end - start)
        if lo < hi:
            part.append((shard, start + lo, start + hi))
        position += end - start
    return part


class ShardStream(IterableDataset):
    """A split's training samples from shards, for one rank: (image, label) pairs, each image
    decoded by `decode` (encoded bytes as a uint8 tensor, name -> image), then `transform`ed.

    Each planned range of a shard is one ranged read (a sequential read on a disk, one request
    to an object store), cut into images by the manifest's offsets: no tar parsing per image."""

    def __init__(self, manifest: Manifest, split: str, decode, transform, skip_bad: bool = False,
                 seed: int = 0, rank: int = 0, world: int = 1, shuffle_buffer: int = SHUFFLE_BUFFER):
        self.files = ShardFiles(manifest.root)
        self.shards, self.rows = manifest.shards(split)
        self.counts = [len(rows["key"]) for rows in self.rows]
        self.classes = manifest.classes
        self.decode, self.transform, self.skip_bad = decode, transform, skip_bad
        self.seed, self.rank, self.world, self.shuffle_buffer = seed, rank, world, shuffle_buffer
        # Shared with the loader's worker processes, which keep their own copy of the object.
        self._epoch = torch.zeros((), dtype=torch.int64).share_memory_()

    def for_rank(self, rank: int, world: int, seed: int) -> ShardStream:
        """This stream as rank `rank` of `world` reads it, its epochs shuffled from `seed`."""
        self.rank, self.world, self.seed = rank, world, seed
        return self

    def set_epoch(self, epoch: int) -> None:
        self._epoch.fill_(epoch)

    def __len__(self) -> int:
        """Samples this rank reads in the current epoch (the same on every rank)."""
        return sum(end - start for _, start, end in epoch_plan(self.counts, self.seed, int(self._epoch), self.rank,
                                                              self.world))

    def __iter__(self):
        info = get_worker_info()
        worker, workers = (0, 1) if info is None else (info.id, info.num_workers)
        epoch = int(self._epoch)
        rng = np.random.default_rng([self.seed, epoch, self.rank, worker])
        buffer = []
        for sample in self.decoded(epoch_plan(self.counts, self.seed, epoch, self.rank, self.world, worker, workers)):
            buffer.append(sample)
            if len(buffer) >= self.shuffle_buffer:
                yield buffer.pop(int(rng.integers(len(buffer))))
        rng.shuffle(buffer)
        yield from buffer

    def decoded(self, plan):
        """The plan's samples, decoded. A shard cut short loses the samples past its end: named,
        or with skip_bad left out (the epoch's count of skipped images includes them)."""
        for index, start, end in plan:
            shard, rows = self.shards[index], self.rows[index]
            first = int(rows["offset"][start])
            wanted = int(rows["offset"][end - 1] + rows["nbytes"][end - 1]) - first
            data = self.files.read(shard, first, wanted)
            blob = torch.frombuffer(data, dtype=torch.uint8) if data else torch.empty(0, dtype=torch.uint8)
            for i in range(start, end):
                offset, nbytes = int(rows["offset"][i]) - first, int(rows["nbytes"][i])
                if offset + nbytes > len(blob):
                    if self.skip_bad:
                        break
                    raise BadImageError(f"shard {shard} is damaged: it ends before sample {rows['key'][i]} "
                                        f"({i} of its {len(rows['key'])}); --skip-bad-images skips the rest of such "
                                        f"shards")
                yield self._sample(shard, rows["key"][i], blob[offset:offset + nbytes], int(rows["label"][i]))

    def _sample(self, shard: str, key: str, data: torch.Tensor, label: int):
        try:
            image = self.decode(data, f"{shard}:{key}")
            return (image if self.transform is None else self.transform(image)), label
        except (OSError, ValueError) as exc:
            if self.skip_bad:
                return None
            raise BadImageError(f"unreadable sample {key} in shard {shard} ({exc}); --skip-bad-images skips "
                                f"such samples") from None


class ShardImages(Dataset):
    """A split's samples by index, read by offset: the evaluation side of a shard directory.
    Items are (transform(PIL image), label); `targets` and `samples` as ImageFolder's."""

    def __init__(self, manifest: Manifest, split: str, transform, skip_bad: bool = False):
        self.files = ShardFiles(manifest.root)
        self.rows = manifest.rows(split)
        self.transform, self.skip_bad = transform, skip_bad
        self.targets = self.rows["label"].tolist()
        self.classes = manifest.classes
        self.root = f"{manifest.root}/{split}"

    def __len__(self) -> int:
        return len(self.targets)

    def name(self, index: int) -> str:
        return f"{self.rows['shard'][index]}:{self.rows['key'][index]}"

    def image_bytes(self, index: int, member: str = "") -> bytearray:
        rows = self.rows
        return self.files.read(rows["shard"][index], int(rows[f"{member}offset"][index]),
                               int(rows[f"{member}nbytes"][index]))

    def __getitem__(self, index):
        from PIL import Image

        try:
            with Image.open(io.BytesIO(self.image_bytes(index))) as image:
                return self.transform(image.convert("RGB")), self.targets[index]
        except OSError as exc:
            if self.skip_bad:
                return None
            raise BadImageError(f"unreadable sample {self.name(index)} ({exc}); --skip-bad-images skips "
                                f"such samples") from None


class ShardMasks(Dataset):
    """The object masks that travel in the shards, indexed like their `ShardImages`."""

    def __init__(self, images: ShardImages, transform):
        if "mask_offset" not in images.rows or np.isnan(images.rows["mask_offset"].astype(float)).any():
            raise DataError(f"--data: the shards under {images.files.root} carry no mask for every image "
                            f"(jobs/prepare_shards.py packs the tree's masks/ folder when there is one)")
        self.images, self.transform = images, transform

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index) -> torch.Tensor:
        from PIL import Image

        with Image.open(io.BytesIO(self.images.image_bytes(index, "mask_"))) as mask:
            return torch.from_numpy(np.asarray(self.transform(mask.convert("L"))) > 0)

    def check_sizes(self) -> None:
        """Masks were resized with their images when the shards were written; nothing to check."""
