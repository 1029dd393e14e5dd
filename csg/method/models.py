"""Classifiers that expose their last-conv activation map A, so the gate and every analysis
read the same tensor. All take images in [0, 1] and normalise inside (a mean/std buffer),
so attacks and saliency maps work in pixel space.
"""
from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
import torchvision
from torch import nn

CIFAR_RESNET_DEPTHS = {"resnet20": 20, "resnet32": 32, "resnet56": 56, "resnet110": 110}
TORCHVISION_RESNETS = ("resnet18", "resnet34", "resnet50", "resnet101", "resnet152")
MODEL_CHOICES = (*CIFAR_RESNET_DEPTHS, *TORCHVISION_RESNETS, "alexnet")

# K, the number of filters in the last conv layer: known before a model is built, for validation.
LAST_CONV_FILTERS = {
    **{name: 64 for name in CIFAR_RESNET_DEPTHS},
    "resnet18": 512,
    "resnet34": 512,
    "resnet50": 2048,
    "resnet101": 2048,
    "resnet152": 2048,
    "alexnet": 256,
}


class GatedClassifier(nn.Module):
    """logits = fc(GAP(A)) on the STD path, fc(GAP(A * G[y])) on the CSG path.

    Subclasses build `self.stages` (ordered nn.ModuleDict ending at the last conv layer) and
    `self.fc`; everything else, including normalisation and the gated head, lives here.
    """

    def __init__(self, mean: tuple[float, ...], std: tuple[float, ...]):
        super().__init__()
        self.register_buffer("mean", torch.tensor(mean).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(std).view(1, -1, 1, 1))

    @property
    def num_filters(self) -> int:
        return self.fc.in_features

    @property
    def num_classes(self) -> int:
        return self.fc.out_features

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """(N, C_in, H, W) pixels in [0, 1] -> (N, K, h, w) last-conv activation map."""
        x = (x - self.mean) / self.std
        for stage in self.stages.values():
            x = stage(x)
        return x

    def classify(self, activation: torch.Tensor) -> torch.Tensor:
        return self.fc(activation.mean(dim=(2, 3)))

    def forward(self, x, gate_rows=None, both_paths=False):
        """STD logits, or CSG logits when `gate_rows` (N, K) is given, or (STD, CSG) for both."""
        activation = self.features(x)
        if gate_rows is None:
            return self.classify(activation)
        csg = self.classify(activation * gate_rows[:, :, None, None])
        return (self.classify(activation), csg) if both_paths else csg

    def stage_parameters(self, frozen_through: str | None):
        """Parameters a path trains when every stage up to and including `frozen_through` is frozen."""
        names = list(self.stages)
        if frozen_through not in (None, "none") and frozen_through not in names:
            raise ValueError(f"frozen stage must be 'none' or one of {names} (got {frozen_through!r})")
        cut = 0 if frozen_through in (None, "none") else names.index(frozen_through) + 1
        params = [p for name in names[cut:] for p in self.stages[name].parameters()]
        return params + list(self.fc.parameters())


class _CifarBasicBlock(nn.Module):
    """He et al. (2016) CIFAR block with the parameter-free shortcut (option A)."""

    def __init__(self, in_planes: int, planes: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.stride = stride
        self.pad = planes - in_planes

    def shortcut(self, x):
        if self.stride == 1 and self.pad == 0:
            return x
        x = x[:, :, :: self.stride, :: self.stride]
        return F.pad(x, (0, 0, 0, 0, self.pad // 2, self.pad - self.pad // 2))

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class CifarResNet(GatedClassifier):
    """ResNet-20/32/56/110: three stages of 16-32-64 filters, K = 64."""

    def __init__(self, depth: int, num_classes: int, in_channels: int, mean, std):
        super().__init__(mean, std)
        if (depth - 2) % 6:
            raise ValueError(f"CIFAR ResNet depth must be 6n+2 (got {depth})")
        n = (depth - 2) // 6
        stages = {
            "stem": nn.Sequential(
                nn.Conv2d(in_channels, 16, 3, 1, 1, bias=False), nn.BatchNorm2d(16), nn.ReLU()
            )
        }
        in_planes = 16
        for i, planes in enumerate((16, 32, 64)):
            blocks = []
            for j in range(n):
                blocks.append(_CifarBasicBlock(in_planes, planes, 2 if (i > 0 and j == 0) else 1))
                in_planes = planes
            stages[f"layer{i + 1}"] = nn.Sequential(*blocks)
        self.stages = nn.ModuleDict(stages)
        self.fc = nn.Linear(64, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")


class TorchvisionResNet(GatedClassifier):
    """torchvision ResNet-18...152 for ImageNet-sized inputs; the last conv map is layer4's output."""

    def __init__(self, name: str, num_classes: int, in_channels: int, mean, std, weights=None):
        super().__init__(mean, std)
        net = getattr(torchvision.models, name)(weights=None)
        if weights is not None:
            load_backbone_weights(net, weights)
        if in_channels != 3:
            net.conv1 = nn.Conv2d(in_channels, 64, 7, 2, 3, bias=False)
        self.stages = nn.ModuleDict(
            {
                "stem": nn.Sequential(net.conv1, net.bn1, net.relu, net.maxpool),
                "layer1": net.layer1,
                "layer2": net.layer2,
                "layer3": net.layer3,
                "layer4": net.layer4,
            }
        )
        self.fc = nn.Linear(net.fc.in_features, num_classes)


class CifarAlexNet(GatedClassifier):
    """AlexNet for 32x32 inputs (five conv layers, K = 256), with a GAP + linear head so the
    gate acts on the last conv map exactly as in the ResNets."""

    def __init__(self, num_classes: int, in_channels: int, mean, std):
        super().__init__(mean, std)

        def conv(cin, cout, k):
            return [nn.Conv2d(cin, cout, k, padding=k // 2), nn.BatchNorm2d(cout), nn.ReLU()]

        self.stages = nn.ModuleDict(
            {
                "stem": nn.Sequential(*conv(in_channels, 64, 5), nn.MaxPool2d(3, 2, 1)),
                "layer1": nn.Sequential(*conv(64, 192, 5), nn.MaxPool2d(3, 2, 1)),
                "layer2": nn.Sequential(*conv(192, 384, 3)),
                "layer3": nn.Sequential(*conv(384, 256, 3)),
                "layer4": nn.Sequential(*conv(256, 256, 3)),
            }
        )
        self.fc = nn.Linear(256, num_classes)


def load_backbone_weights(net: nn.Module, path: str | Path) -> None:
    """Load a local state dict (never a hub download); a classifier head of another size is skipped."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"weights file not found: {path}")
    state = torch.load(path, map_location="cpu", weights_only=True)
    own = net.state_dict()
    kept = {k: v for k, v in state.items() if k in own and own[k].shape == v.shape}
    missing = [k for k in own if k not in kept and not k.startswith("fc.")]
    if missing:
        raise ValueError(f"weights file {path} does not fit this model: missing {missing[:3]}...")
    net.load_state_dict(kept, strict=False)


def build_model(
    name: str,
    num_classes: int,
    in_channels: int = 3,
    mean=(0.5, 0.5, 0.5),
    std=(0.25, 0.25, 0.25),
    weights: str | None = None,
) -> GatedClassifier:
    if name in CIFAR_RESNET_DEPTHS:
        return CifarResNet(CIFAR_RESNET_DEPTHS[name], num_classes, in_channels, mean, std)
    if name in TORCHVISION_RESNETS:
        return TorchvisionResNet(name, num_classes, in_channels, mean, std, weights)
    if name == "alexnet":
        return CifarAlexNet(num_classes, in_channels, mean, std)
    raise ValueError(f"unknown model {name!r}; choose one of {', '.join(MODEL_CHOICES)}")
