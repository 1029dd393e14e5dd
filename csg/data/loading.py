"""Batches of any data set: labels without decoding, chosen items as one batch, and the
training DataLoader's keywords."""
from __future__ import annotations

import numpy as np
import torch
from torch.utils.data import Dataset, DistributedSampler, IterableDataset, TensorDataset, default_collate


def split_labels(dataset: Dataset) -> np.ndarray:
    """Every label of an `evaluation_set`, without decoding an image."""
    if isinstance(dataset, TensorDataset):
        return dataset.tensors[1].numpy()
    return np.asarray(dataset.targets)


def stacked(dataset: Dataset, indices) -> tuple[torch.Tensor, torch.Tensor]:
    """The listed items of a data set as one (images, labels) batch."""
    pairs = [dataset[int(i)] for i in indices]
    return torch.stack([image for image, _ in pairs]), torch.as_tensor([int(label) for _, label in pairs])


def loader_options(loader_workers: int, seed: int, rank: int, pin_memory: bool, dataset: Dataset | None = None) -> dict:
    """DataLoader keywords for training: workers kept alive across epochs and prefetching,
    pinned memory on a GPU (the engine copies with non_blocking), and each rank's workers
    seeded from (seed, rank): PyTorch derives every worker's torch, random and numpy seeds
    from it, so augmentation differs across workers and ranks yet repeats from run to run.
    A `dataset` with a `collate_fn` of its own (`--decode gpu`) collates with it."""
    collate = getattr(dataset, "collate_fn", collate_skipping_bad)
    options = dict(num_workers=loader_workers, pin_memory=pin_memory, collate_fn=collate,
                   generator=torch.Generator().manual_seed(seed * 10_007 + rank))
    if loader_workers > 0:
        options.update(persistent_workers=True, prefetch_factor=4)
    return options


def rank_input(train_set: Dataset, rank: int, world: int, seed: int):
    """(sampler or None, epochs) for one rank's training DataLoader: `epochs.set_epoch(e)` before
    each epoch reshuffles, and `len(epochs)` is what the rank reads per epoch. A streamed set
    (shards) plans its own epochs; an indexed one gets a DistributedSampler."""
    if isinstance(train_set, IterableDataset):
        return None, train_set.for_rank(rank, world, seed)
    sampler = DistributedSampler(train_set, num_replicas=world, rank=rank, shuffle=True, seed=seed)
    return sampler, sampler


def collate_skipping_bad(batch):
    """Default collation of the samples that decoded; skipped ones arrive as None. Images laid
    out channels-last (`csg.data.crops`) are stacked as they lie, one plain copy each, into an
    (N, 3, H, W) view of (N, H, W, 3) memory; `engine.device_pixels` lays it out on the device."""
    batch = [sample for sample in batch if sample is not None]
    if batch and all(_channels_last(sample) for sample in batch):
        images, labels = default_collate([(image.permute(1, 2, 0), label) for image, label in batch])
        return images.permute(0, 3, 1, 2), labels
    return default_collate(batch)


def _channels_last(sample) -> bool:
    """An (image, label) pair whose (C, H, W) image lies in (H, W, C) memory."""
    if not (isinstance(sample, tuple) and len(sample) == 2 and isinstance(sample[0], torch.Tensor)):
        return False
    image = sample[0]
    return image.dim() == 3 and image.permute(1, 2, 0).is_contiguous() and not image.is_contiguous()
