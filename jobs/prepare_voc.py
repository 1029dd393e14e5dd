"""Turn PASCAL VOC 2010 and the Pascal-Part annotations into the six-animal classification
tree with object masks that the voc-resnet152 preset and localization read (Appendix B).

    python jobs/prepare_voc.py --voc VOCdevkit/VOC2010 --parts Annotations_Part --out data/voc6
    python jobs/train_imagenet.py --preset voc-resnet152 --data data/voc6 --weights resnet152.pth
"""
from __future__ import annotations

import argparse

from csg.cli import OneLineParser, summary
from csg.data.voc import PAPER_CLASSES, VocError, prepare


def get_args_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(description=summary(__doc__))
    parser.add_argument("--voc", required=True, help="VOC2010 folder holding JPEGImages/ and ImageSets/Main/")
    parser.add_argument("--parts", required=True, help="Pascal-Part's Annotations_Part/ folder of .mat files")
    parser.add_argument("--out", required=True, help="output tree: train/, val/, masks/ and manifest.parquet")
    parser.add_argument("--size", type=int, default=128, help="side of the square crops, pixels")
    parser.add_argument("--classes", nargs="+", default=list(PAPER_CLASSES), help="VOC classes kept")
    parser.add_argument("--seed", type=int, default=0, help="seed of the train/test draw of source images")
    return parser


def main(argv=None):
    parser = get_args_parser()
    args = parser.parse_args(argv)
    if args.size < 1:
        parser.error(f"--size: must be >= 1 (got {args.size})")
    try:
        return prepare(args.voc, args.parts, args.out, args.size, tuple(args.classes), args.seed)
    except VocError as exc:
        parser.error(str(exc))


if __name__ == "__main__":
    main()
