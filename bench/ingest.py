"""Images per second per loader core out of each ImageFolder input path, through the DataLoader
that training uses (224 px, batch 256), each against the reference pipeline in the same run:
torchvision ImageFolder + PIL + `transforms.v1` (RandomResizedCrop, flip, ToTensor, Normalize
for training; resize 256, centre crop, ToTensor, Normalize for evaluation).

    python bench/ingest.py                       # about 1 minute on this 2-core CPU
    python bench/ingest.py --tree /tmp/photos    # keep the written tree for the next run

Paths: `fast` is `--decode uint8` (torchvision's decoder, transforms.v2 on uint8, float made on
the device); `shards` reads the same tree written by jobs/prepare_shards.py (short side 320);
`raydata` is `--ingest ray-data` over those shards, its tasks on a local Ray with as many CPUs
as the DataLoader has workers.
The tree is JPEGs the benchmark writes (`csg.testing.photos`: cuts of scikit-learn's sample
photographs at ImageNet's shapes, quality 90). Each path runs `--loader-workers` processes of
one thread, so img/s per core is its img/s over the workers (the process that takes the
batches has a core of its own by default, as a training process would). The last line is the
summary; `cores_per_gpu_*` divide published single-A100 rates by the best training path's rate per core:
ResNet-50 2,500 img/s with AMP (NVIDIA DeepLearningExamples), ResNet-18 10,000 img/s (FFCV).
"""
from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import torch
from torch.utils.data import DataLoader
from torchvision import datasets, transforms as v1
from torchvision.transforms import v2

from csg import data as data_lib
from csg.cli import summary
from csg.config import TrainConfig
from csg.data.checked_folder import CheckedImageFolder, read_uint8
from csg.data.imagefolder import IMAGENET_MEAN_STD
from csg.data.shard_writer import write_shards
from csg.testing.photos import write_photo_tree

SIZE, EVAL_RESIZE, BATCH = 224, 256, 256
MEAN, STD = IMAGENET_MEAN_STD
PUBLISHED_GPU_IMG_S = {"rn50": 2_500, "rn18": 10_000}  # one A100, see the docstring

REFERENCE = {
    "train": v1.Compose([v1.RandomResizedCrop(SIZE), v1.RandomHorizontalFlip(), v1.ToTensor(), v1.Normalize(MEAN, STD)]),
    "eval": v1.Compose([v1.Resize(EVAL_RESIZE), v1.CenterCrop(SIZE), v1.ToTensor(), v1.Normalize(MEAN, STD)]),
}
# Evaluation on uint8, measured as a candidate: the product evaluates through PIL, so that a
# run's MI and the analyses read the same pixels.
UINT8_EVAL = v2.Compose([v2.Resize(EVAL_RESIZE, antialias=True), v2.CenterCrop(SIZE)])


def images_per_second(dataset, workers: int) -> float:
    """One pass through a training DataLoader, its workers' start included (a fork: ~0.1 s)."""
    loader = DataLoader(dataset, batch_size=BATCH, shuffle=not isinstance(dataset, torch.utils.data.IterableDataset),
                        num_workers=workers, collate_fn=data_lib.collate_skipping_bad)
    seen, start = 0, time.perf_counter()
    for images, _ in loader:
        seen += len(images)
    return seen / (time.perf_counter() - start)


def ray_data_pipeline(shards: str, cpus: int):
    """`--ingest ray-data`'s dataset over the shards, on a local Ray of `cpus` CPUs: its decoding
    tasks get as many cores as the DataLoader's workers."""
    from csg.distributed.cluster import init_ray
    from csg.distributed.ray_data import training_dataset

    init_ray(num_cpus=cpus, include_dashboard=False)
    return training_dataset(TrainConfig(dataset="imagefolder", data=shards, image_size=SIZE))


def ray_images_per_second(dataset) -> float:
    """One pass of the pipeline as a Train worker takes it, its tasks' start included."""
    seen, start = 0, time.perf_counter()
    for batch in dataset.iter_torch_batches(batch_size=BATCH, device="cpu"):
        seen += len(batch["label"])
    return seen / (time.perf_counter() - start)


def tree_of(args) -> Path:
    root = Path(args.tree)
    if not (root / "train").is_dir():
        print(f"writing {args.classes} classes x {args.per_class} JPEGs under {root} ...", flush=True)
        write_photo_tree(root, args.classes, args.per_class, args.per_class // 4)
    return root


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=summary(__doc__))
    parser.add_argument("--tree", default=None, help="where the JPEG tree is written or found; unset, a temp dir")
    parser.add_argument("--classes", type=int, default=10)
    parser.add_argument("--per-class", type=int, default=200, help="training JPEGs per class (val: a quarter)")
    parser.add_argument("--loader-workers", type=int, default=max(1, (os.cpu_count() or 2) - 1),
                        help="loader processes; the default leaves a core to the process that takes the batches, "
                             "as training does")
    parser.add_argument("--short-side", type=int, default=320, help="the shards' short side")
    parser.add_argument("--passes", type=int, default=2, help="passes over each path; the fastest is kept")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as scratch:
        args.tree = args.tree or f"{scratch}/tree"
        root = tree_of(args)
        files = sorted((root / "train").rglob("*.jpg"))
        print(f"{len(files)} training JPEGs, mean {sum(f.stat().st_size for f in files) / len(files) / 1e3:.0f} KB; "
              f"{args.loader_workers} loader workers, batch {BATCH}", flush=True)
        start = time.perf_counter()
        written = write_shards(str(root), f"{scratch}/shards", short_side=args.short_side)
        print(f"shards at short side {args.short_side}: {written['shard_bytes'] / written['source_bytes']:.0%} of "
              f"the tree's bytes, written in {time.perf_counter() - start:.0f} s", flush=True)
        stream = data_lib.load("imagefolder", f"{scratch}/shards", SIZE, decode="uint8")[0]
        data_lib.rank_input(stream, 0, 1, seed=0)[1].set_epoch(0)
        w = args.loader_workers
        paths = {
            "ref_train": datasets.ImageFolder(str(root / "train"), REFERENCE["train"]),
            "fast_train": data_lib.load("imagefolder", str(root), SIZE, decode="uint8")[0],
            "shards_train": stream,
            "ref_eval": datasets.ImageFolder(str(root / "train"), REFERENCE["eval"]),
            "fast_eval": CheckedImageFolder(str(root / "train"), UINT8_EVAL, loader=read_uint8),
        }
        ray_dataset = ray_data_pipeline(f"{scratch}/shards", w)
        rates = dict.fromkeys([*paths, "raydata_train"], 0.0)
        for _ in range(args.passes):  # interleaved, so a slow spell of the machine hits every path
            for name, dataset in paths.items():
                rates[name] = max(rates[name], images_per_second(dataset, w))
            rates["raydata_train"] = max(rates["raydata_train"], ray_images_per_second(ray_dataset))
    fields = {f"{name}_img_s_core": rate / w for name, rate in rates.items()}
    fields["fast_over_ref"] = rates["fast_train"] / rates["ref_train"]
    fields["shards_over_ref"] = rates["shards_train"] / rates["ref_train"]
    fields["raydata_over_shards"] = rates["raydata_train"] / rates["shards_train"]
    fields["fast_eval_over_ref"] = rates["fast_eval"] / rates["ref_eval"]
    fields["shard_bytes_share"] = written["shard_bytes"] / written["source_bytes"]
    best = max(rate for name, rate in rates.items() if name.endswith("_train")) / w
    for model, gpu_rate in PUBLISHED_GPU_IMG_S.items():
        fields[f"cores_per_gpu_{model}"] = gpu_rate / best
    print("ingest: " + " ".join(f"{k}={v:.3g}" for k, v in fields.items()))
    return fields


if __name__ == "__main__":
    main()
