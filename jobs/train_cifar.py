"""Train a CSG or STD CNN on CIFAR-10/100 (or any supported data set) under Ray Train.

    python jobs/train_cifar.py --data ~/data/cifar --epochs 200          # paper preset
    python jobs/train_cifar.py --dataset digits --epochs 6 --workers 2   # no download needed
    python jobs/train_cifar.py --method std ...                          # the baseline
"""
from csg.cli import summary, training_main


def main(argv=None) -> dict:
    return training_main("cifar10-resnet20", summary(__doc__), argv)


if __name__ == "__main__":
    main()
