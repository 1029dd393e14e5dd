"""`--ingest ray-data`: an ImageFolder tree's (or its shards') training images decoded and
augmented by Ray Data tasks, wherever the cluster has CPUs, and fed to the Train workers.

The decode and augmentation are the DataLoader path's own (`--decode`, `--augment`), run in
`map_batches` over chunks of the training set, their order reshuffled every epoch and the rows
once more through each worker's local shuffle buffer. Each Train worker takes its part with `get_dataset_shard`, equal in rows across workers, so
every rank runs the same number of steps. A CPU-only node of the cluster decodes for the GPU
nodes: its CPUs are what Ray Data's tasks ask for (docs/training.md, "Input at scale").
Unlike the DataLoader path, the epoch's order and crops are not seeded.
"""
from __future__ import annotations

import numpy as np
from torch.utils.data import IterableDataset

from csg import data as data_lib
from csg.config import ConfigError, TrainConfig

DATASET = "train"  # the name Ray Train's get_dataset_shard knows the training set by
# Images a work item decodes: about 19 MB at 224 px, a block Ray moves whole. Each task costs
# Ray about 14 ms beyond its work here; 128 took bench/ingest.py's Ray Data rate from
# 0.83-0.89x the DataLoader's to 1.03-1.04x (256: 1.0x, its first batch later).
CHUNK = 128
SHUFFLE_BUFFER = 1000


def check_ingest(cfg: TrainConfig) -> None:
    """`--ingest ray-data` needs Ray Data's own dependencies, checked before Ray starts."""
    if cfg.ingest != "ray-data":
        return
    try:
        import ray.data  # noqa: F401
    except ImportError as exc:
        raise ConfigError(f"--ingest: ray-data needs Ray Data (pip install 'ray[data]'): {exc}") from None


def check_cpus_left(cfg: TrainConfig) -> None:
    """Ray Data's tasks need CPUs that the Train workers have not taken, or they wait forever."""
    import ray

    if cfg.ingest != "ray-data":
        return
    total, taken = ray.cluster_resources().get("CPU", 0), cfg.workers * cfg.cpus_per_worker
    if total <= taken:
        raise ConfigError(f"--ingest: ray-data decodes in tasks of their own, but the cluster's {total:g} CPUs all go "
                          f"to the {cfg.workers} training worker(s) x {cfg.cpus_per_worker} CPU: add CPU nodes, or "
                          f"use fewer --workers or --cpus-per-worker, or --ingest loader")


def training_dataset(cfg: TrainConfig):
    """The Ray Dataset of decoded, augmented training images: rows of `image` ((H, W, 3) uint8,
    or float with --decode pil) and `label`. Its input is a list of work items, one block each, whose
    order is reshuffled every epoch: chunks of a shard (one ranged read each, through the
    manifest's offsets) or of a tree's files. Ray's own `read_webdataset` parses each tar in
    Python at 530-650 us an image on this machine, where the ranged read costs about 70 us."""
    import ray.data

    context = ray.data.DataContext.get_current()  # the progress line is the run's own
    context.enable_progress_bars = cfg.verbose
    context.print_on_execution_start = cfg.verbose
    train_set, _ = data_lib.load(cfg.dataset, cfg.data, cfg.image_size, cfg.skip_bad_images, cfg.augment, cfg.decode)
    if isinstance(train_set, IterableDataset):  # shards
        items = [{"shard": shard, "start": start, "end": min(start + CHUNK, count)}
                 for shard, count in enumerate(train_set.counts) for start in range(0, count, CHUNK)]
    else:
        items = [{"start": start, "end": min(start + CHUNK, len(train_set))}
                 for start in range(0, len(train_set), CHUNK)]
    return (ray.data.from_items(items, override_num_blocks=len(items)).randomize_block_order()
            .map_batches(DecodeChunks(train_set, cfg.image_size, (cfg.decode or "uint8") == "uint8"), batch_size=1))


class DecodeChunks:
    """Work items to images and labels, by the training set's own reader: the DataLoader path's
    decode and augmentation, its errors naming the file or the shard and key, and with
    --skip-bad-images its unreadable images dropped (counted as skipped in the epochs table,
    since the ranks then read fewer rows than planned)."""

    def __init__(self, train_set, image_size: int, uint8: bool):
        self.train_set = train_set
        self.none = np.zeros((0, image_size, image_size, 3), np.uint8 if uint8 else np.float32)  # all unreadable

    def __call__(self, batch: dict) -> dict:
        pairs = []
        for n, (start, end) in enumerate(zip(batch["start"], batch["end"])):
            if "shard" in batch:
                pairs += self.train_set.decoded([(int(batch["shard"][n]), int(start), int(end))])
            else:
                pairs += [self.train_set[i] for i in range(int(start), int(end))]
        if all(pair is None for pair in pairs):
            return {"image": self.none, "label": np.zeros(0, np.int64)}
        images, labels = data_lib.collate_skipping_bad(pairs)  # the DataLoader's stacking: (N, H, W, 3) memory
        return {"image": images.permute(0, 2, 3, 1).numpy(), "label": labels.numpy()}


class WorkerBatches:
    """A Train worker's part of the training dataset as (images, labels) batches, one pass per
    iteration: what the engine takes from a DataLoader. `len` is the rows a rank reads in an
    epoch (Ray splits them equally), `set_epoch` has nothing to do (each pass reshuffles)."""

    def __init__(self, shard, batch_size: int, rows_per_rank: int):
        self.shard, self.batch_size, self.rows_per_rank = shard, batch_size, rows_per_rank

    def __iter__(self):
        for batch in self.shard.iter_torch_batches(batch_size=self.batch_size, device="cpu",
                                                   local_shuffle_buffer_size=SHUFFLE_BUFFER):
            yield batch["image"].permute(0, 3, 1, 2), batch["label"]

    def __len__(self) -> int:
        return self.rows_per_rank

    def set_epoch(self, epoch: int) -> None:
        pass
