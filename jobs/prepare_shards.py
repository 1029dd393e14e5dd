"""Write an ImageFolder tree (train/, val/, and masks/ when it has them) as WebDataset-style tar
shards with a Parquet manifest, each image shrunk once to a short side of --short-side, so that
training streams a third of the bytes and decodes smaller images.

    python jobs/prepare_shards.py --data data/imagenet --out data/imagenet-shards
    python jobs/train_imagenet.py --data data/imagenet-shards          # or s3://bucket/imagenet-shards

Shards are written locally, a process per core; copy the directory to shared storage or an
object store as it is, and train from its path or URI. See docs/training.md, "Input at scale".
"""
from __future__ import annotations

import argparse
import sys
import time

from csg.cli import OneLineParser, at_least, summary
from csg.data import DataError
from csg.data.shard_writer import write_shards


def get_args_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(description=summary(__doc__))
    parser.add_argument("--data", required=True, help="ImageFolder tree holding train/ and val/")
    parser.add_argument("--out", required=True,
                        help="shard directory: absent, empty, or holding shards of the same tree (replaced)")
    parser.add_argument("--short-side", type=at_least(1), default=320,
                        help="each image's short side after shrinking, pixels (never enlarged)")
    parser.add_argument("--quality", type=at_least(1), default=90, help="JPEG quality of re-encoded images (1-95)")
    parser.add_argument("--shard-size", type=at_least(1), default=1000, help="samples per shard")
    parser.add_argument("--seed", type=int, default=0, help="seed of the order samples are written in")
    parser.add_argument("--processes", type=at_least(1), default=None,
                        help="processes writing shards; unset, one per core")
    parser.add_argument("--skip-bad-images", action="store_true",
                        help="leave out source files that cannot be decoded (counted) instead of stopping")
    return parser


def main(argv=None) -> dict:
    parser = get_args_parser()
    args = parser.parse_args(argv)
    if args.quality > 95:
        parser.error(f"--quality: must be at most 95 (got {args.quality})")
    start = time.perf_counter()
    try:
        written = write_shards(args.data, args.out, args.short_side, args.quality, args.shard_size, args.seed,
                               args.processes, args.skip_bad_images, show_progress)
    except DataError as exc:
        parser.error(str(exc))
    print(f"{written['samples']} images in {written['shards']} shards under {args.out} "
          f"({written['shard_bytes'] / 1e6:.1f} MB, {written['shard_bytes'] / written['source_bytes']:.0%} of the "
          f"tree's {written['source_bytes'] / 1e6:.1f} MB), {written['skipped']} skipped, "
          f"{time.perf_counter() - start:.0f} s")
    return written


def show_progress(done: int, total: int) -> None:
    """Rewritten in place on a terminal; nothing in a log, which gets the summary line."""
    if sys.stdout.isatty():
        print(f"\rshards: {done}/{total} written", end="\n" if done == total else "", flush=True)


if __name__ == "__main__":
    main()
