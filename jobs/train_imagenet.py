"""Train a CSG or STD ResNet on ImageNet (or any ImageFolder tree) under Ray Train.

    python jobs/train_imagenet.py --data /data/imagenet                       # 4 workers, 120 epochs
    ray job submit --working-dir . -- python jobs/train_imagenet.py --data /data/imagenet --gpu
    python jobs/train_imagenet.py --preset voc-resnet152 --data /data/voc6 --weights r152.pth
"""
from csg.cli import summary, training_main


def main(argv=None) -> dict:
    return training_main("imagenet-resnet18", summary(__doc__), argv)


if __name__ == "__main__":
    main()
