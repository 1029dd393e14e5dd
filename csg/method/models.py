"""The models csg-ray builds by name, each gated through `csg.method.attach`.

A model spec is one of:
    resnet20 ... resnet110, resnet18 ... resnet152, alexnet   the built-in ones (Appendix B)
    torchvision:NAME                                          any torchvision classification model
    timm:NAME                                                 any timm model (the `timm` extra)
    package.module:callable                                   callable(num_classes) -> nn.Module
"""
from __future__ import annotations

import importlib
import importlib.util
import os
import re
import sys
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from csg.method.attach import GatedModel, attach

CIFAR_RESNET_DEPTHS = {"resnet20": 20, "resnet32": 32, "resnet56": 56, "resnet110": 110}
TORCHVISION_RESNETS = ("resnet18", "resnet34", "resnet50", "resnet101", "resnet152")
BUILT_IN = (*CIFAR_RESNET_DEPTHS, *TORCHVISION_RESNETS, "alexnet")


class ModelSpecError(ValueError):
    """A model spec that does not resolve: one line."""


class WeightsError(ValueError):
    """A weights file that is absent or does not fit the model: one line."""


class StagedNet(nn.Module):
    """The built-in networks: `stages` (an ordered ModuleDict ending at the last conv layer),
    then GAP and the linear layer `fc`. A stage name freezes it and every stage before it."""

    def forward(self, x):
        for stage in self.stages.values():
            x = stage(x)
        return self.fc(x.mean(dim=(2, 3)))


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


class CifarResNet(StagedNet):
    """ResNet-20/32/56/110: three stages of 16-32-64 filters, K = 64."""

    def __init__(self, depth: int, num_classes: int, in_channels: int):
        super().__init__()
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


class TorchvisionResNet(StagedNet):
    """torchvision ResNet-18...152 for ImageNet-sized inputs; the last conv map is layer4's output."""

    def __init__(self, name: str, num_classes: int, in_channels: int, weights=None):
        import torchvision  # here, not above: see csg.data.cifar

        super().__init__()
        net = getattr(torchvision.models, name)(weights=None)
        if weights is not None:
            load_weights(net, weights, 1000)
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


class CifarAlexNet(StagedNet):
    """AlexNet for 32x32 inputs (five conv layers, K = 256), with a GAP + linear head so the
    gate acts on the last conv map exactly as in the ResNets."""

    def __init__(self, num_classes: int, in_channels: int):
        super().__init__()

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


def classifier_head(net: nn.Module, num_classes: int) -> str | None:
    """The name of the Linear layer that emits the logits: the last with num_classes outputs."""
    heads = [name for name, m in net.named_modules() if isinstance(m, nn.Linear) and m.out_features == num_classes]
    return heads[-1] if heads else None


def load_weights(net: nn.Module, path: str | Path, num_classes: int) -> list[str]:
    """Load a local state dict (never a download) into `net`: every tensor that fits is kept,
    torchvision's legacy names (DenseNet's `norm.1`) are read as today's, and the classifier
    head is left as built when its class count differs. Returns the keys it left (and says so)."""
    path = Path(path)
    if not path.is_file():
        raise WeightsError(f"weights file not found: {path}")
    state = torch.load(path, map_location="cpu", weights_only=True)
    own = net.state_dict()
    state = {_current_name(key, own): value for key, value in state.items()}
    kept = {k: v for k, v in state.items() if k in own and own[k].shape == v.shape}
    head = classifier_head(net, num_classes)
    left = [k for k in own if k not in kept]
    missing = [k for k in left if head is None or not k.startswith(head + ".")]
    if missing:
        raise WeightsError(f"weights file {path} does not fit this model: missing {missing[:3]}...")
    net.load_state_dict(kept, strict=False)
    if left:
        print(f"weights {path.name}: kept {len(kept)} tensors, replaced the head {head!r} "
              f"({num_classes} classes): {', '.join(left)}", flush=True)
    return left


def _current_name(key: str, own: dict) -> str:
    """A key of an older torchvision release under today's name, when only that one exists."""
    if key in own:
        return key
    renamed = re.sub(r"\.(\d+)\.(weight|bias|running_mean|running_var|num_batches_tracked)$", r"\1.\2", key)
    return renamed if renamed in own else key


def model_factory(spec: str):
    """`factory(num_classes, in_channels) -> nn.Module` for a model spec; ModelSpecError
    (one line) when it does not resolve."""
    if spec in CIFAR_RESNET_DEPTHS:
        return lambda classes, channels: CifarResNet(CIFAR_RESNET_DEPTHS[spec], classes, channels)
    if spec in TORCHVISION_RESNETS:  # loads its weights itself, before its head is replaced
        return lambda classes, channels, weights=None: TorchvisionResNet(spec, classes, channels, weights)
    if spec == "alexnet":
        return lambda classes, channels: CifarAlexNet(classes, channels)
    kind, _, name = spec.partition(":")
    if not name:
        raise ModelSpecError(f"unknown model {spec!r}: one of {', '.join(BUILT_IN)}, torchvision:NAME, "
                             "timm:NAME or package.module:callable")
    if kind == "torchvision":
        import torchvision

        known = torchvision.models.list_models(module=torchvision.models)
        if name not in known:
            raise ModelSpecError(f"torchvision has no classification model {name!r} "
                                 f"(torchvision.models.list_models() names them)")
        return lambda classes, channels: torchvision.models.get_model(name, weights=None, num_classes=classes)
    if kind == "timm":
        if importlib.util.find_spec("timm") is None:
            raise ModelSpecError(f"{spec} needs timm: pip install 'csg-ray[timm]'")
        import timm

        if not timm.is_model(name):
            raise ModelSpecError(f"timm has no model {name!r} (timm.list_models() names them)")
        return lambda classes, channels: timm.create_model(name, pretrained=False, num_classes=classes,
                                                           in_chans=channels)
    return _user_factory(kind, name)


def _user_factory(module_name: str, attribute: str):
    """package.module:callable, imported here and on every node that builds the model. The
    working directory is searched too, as `python -m` searches it (a job's script directory is
    on the path instead); Ray hands the driver's path on to its workers."""
    if os.getcwd() not in sys.path:
        sys.path.append(os.getcwd())
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ModelSpecError(f"cannot import {module_name!r} for the model ({exc}); it must be importable "
                             "on every node (docs/cluster.md: --working-dir, py_modules)") from None
    factory = getattr(module, attribute, None)
    if not callable(factory):
        raise ModelSpecError(f"{module_name} has no callable {attribute!r} to build the model")
    return lambda classes, channels: factory(classes)


def build_model(spec: str, num_classes: int, in_channels: int = 3, mean=(0.5, 0.5, 0.5),
                std=(0.25, 0.25, 0.25), weights: str | None = None, layer: str | None = None) -> GatedModel:
    """The model a spec names with `num_classes` outputs, `weights` loaded, gated on `layer`
    (default: its last feature map before global pooling). ModelSpecError, WeightsError or
    csg.method.attach.AttachError name what does not fit."""
    factory = model_factory(spec)
    if spec in TORCHVISION_RESNETS:
        net = factory(num_classes, in_channels, weights)
    else:
        net = factory(num_classes, in_channels)
        if not isinstance(net, nn.Module):
            raise ModelSpecError(f"{spec} returned a {type(net).__name__}, not an nn.Module")
        if weights is not None:
            load_weights(net, weights, num_classes)
    return attach(net, num_classes, layer, in_channels=in_channels, mean=mean, std=std, quiet=True)
