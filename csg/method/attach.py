"""A Class-Specific Gate on any classifier.

The gate multiplies the output of one layer - the last feature map before global pooling,
(N, K, h, w), or for a transformer the token sequence (N, S, K) its head reads - by the row
G[y] of each sample's class; everything after that layer (the model's own head: GAP + linear,
an MLP, a LayerNorm) runs unchanged. The built-in models go through here as any other.

    gated = attach(torchvision.models.mobilenet_v3_small(num_classes=10), num_classes=10)
    logits = gated(images)                 # the STD path
    logits = gated(images, gate(labels))   # the CSG path
"""
from __future__ import annotations

import functools
import math

import torch
from torch import nn


class AttachError(ValueError):
    """A model the gate cannot be attached to as asked: one line saying why."""


class _Reached(Exception):
    """Raised by the gate's hook to stop a forward pass once the gated layer has run."""


class GatedModel(nn.Module):
    """`net` with its layer `layer` gated. Takes images in [0, 1] and normalises them inside
    (mean/std buffers), so attacks and saliency maps work in pixel space.

    forward(x) is the STD path, forward(x, gate_rows) the CSG path (gate_rows (N, K)), and
    forward(x, gate_rows, both_paths=True) both from one pass: the layers after the gate then
    see the batch twice over, ungated and gated.
    """

    def __init__(self, net: nn.Module, num_classes: int, layer: str, found: _Found, mean, std, example_size):
        super().__init__()
        self.net = net
        self.layer = layer
        self.num_classes = num_classes
        self.num_filters = found.num_filters
        self.tokens = found.tokens
        self.producer = found.producer  # the Conv2d whose output channels are the K gated ones, or None
        self.in_channels = found.in_channels
        self.example_shape = (1, len(mean), *example_size)  # an input the model takes, for probing it
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1))
        self._rows, self._both, self._captured, self._stop = None, False, None, False
        net.get_submodule(layer).register_forward_hook(self._at_gate)
        self.register_load_state_dict_pre_hook(_previous_layout)

    def _at_gate(self, module, inputs, output):
        if self._captured is not None:
            self._captured.append(output)
            if self._stop:
                raise _Reached
        if self._rows is None:
            return None
        rows = self._rows[:, None, :] if self.tokens else self._rows[:, :, None, None]
        return torch.cat([output, output * rows]) if self._both else output * rows

    def _normalised(self, x: torch.Tensor) -> torch.Tensor:
        x = (x - self.mean) / self.std
        return x.expand(-1, self.in_channels, -1, -1) if x.shape[1] != self.in_channels else x

    def forward(self, x, gate_rows=None, both_paths=False):
        """STD logits, or CSG logits when `gate_rows` (N, K) is given, or (STD, CSG) for both."""
        x = self._normalised(x)
        if gate_rows is None:
            return self.net(x)
        self._rows, self._both = gate_rows, both_paths
        try:
            logits = self.net(x)
        finally:
            self._rows, self._both = None, False
        return (logits[:len(x)], logits[len(x):]) if both_paths else logits

    def features_and_logits(self, x: torch.Tensor, logits: bool = True):
        """(A, STD logits) from one pass: A the gated layer's output as a map (N, K, h, w), a
        transformer's patch tokens reshaped to one; without `logits` the pass stops at A."""
        self._captured, self._stop = [], not logits
        try:
            out = self.net(self._normalised(x))
        except _Reached:
            out = None
        finally:
            captured, self._captured, self._stop = self._captured, None, False
        return self.as_map(captured[-1]), out

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """(N, K, h, w): the gated layer's output on the STD path."""
        return self.features_and_logits(x, logits=False)[0]

    def as_map(self, output: torch.Tensor) -> torch.Tensor:
        """The gated output as (N, K, h, w): a token sequence loses the leading tokens that are
        not patches (a class token) and its patches are laid out on their square grid."""
        if not self.tokens:
            return output
        side = math.isqrt(output.shape[1])
        patches = output[:, output.shape[1] - side * side:]
        return patches.transpose(1, 2).reshape(len(output), -1, side, side)

    @functools.cached_property
    def linear_head(self) -> nn.Linear | None:
        """The nn.Linear when the logits are exactly Linear(GAP(A)) - what CAM and the analyses
        that read the head's weights need - found by trying each candidate on a random input;
        None for any other head (an MLP, a norm before the linear layer, a class token)."""
        candidates = [m for m in self.net.modules() if isinstance(m, nn.Linear)
                      and (m.in_features, m.out_features) == (self.num_filters, self.num_classes)]
        if not candidates or self.tokens:
            return None
        training, parameter = self.training, next(self.parameters())
        try:
            with torch.no_grad():
                activation, logits = self.eval().features_and_logits(
                    torch.rand(self.example_shape, device=parameter.device, dtype=parameter.dtype))
                pooled = activation.mean(dim=(2, 3))
                return next((m for m in reversed(candidates)
                             if torch.allclose(m(pooled), logits, rtol=1e-4, atol=1e-5)), None)
        finally:
            self.train(training)

    def top_level_modules(self) -> list[str]:
        return [name for name, _ in self.net.named_children()]

    def frozen_prefixes(self, frozen: str | None) -> tuple[str, ...]:
        """Module-name prefixes of `net` that `frozen` names: 'none', a comma-separated list of
        module names, or, for a model with a `stages` ModuleDict, a stage and every one before it."""
        if frozen in (None, "", "none"):
            return ()
        stages = getattr(self.net, "stages", None)
        if isinstance(stages, nn.ModuleDict) and frozen in stages:
            names = list(stages)
            return tuple(f"stages.{name}" for name in names[:names.index(frozen) + 1])
        prefixes = tuple(part.strip() for part in frozen.split(","))
        modules = dict(self.net.named_modules())
        unknown = [prefix for prefix in prefixes if prefix not in modules or not prefix]
        if unknown:
            known = list(stages) if isinstance(stages, nn.ModuleDict) else self.top_level_modules()
            raise ValueError(f"no module {unknown[0]!r} in {type(self.net).__name__}; "
                             f"its top-level modules: {', '.join(known)}")
        return prefixes

    def trainable_parameters(self, frozen: str | None = None) -> list[nn.Parameter]:
        """Every parameter of `net` that requires a gradient and is outside the `frozen` modules."""
        prefixes = self.frozen_prefixes(frozen)
        return [param for name, param in self.net.named_parameters() if param.requires_grad
                and not any(name == prefix or name.startswith(prefix + ".") for prefix in prefixes)]


class _Found:
    """What one dummy forward pass tells about a model: the candidates for the gated layer in
    the order they finished, each layer with weights that ran, and the channels it takes."""

    def __init__(self, net: nn.Module, example: torch.Tensor, num_classes: int):
        self.in_channels = example.shape[1]
        finished = []
        handles = [module.register_forward_hook(lambda m, i, out, name=name: finished.append((name, m, out)))
                   for name, module in net.named_modules() if name]
        training = net.training
        try:
            with torch.no_grad():
                logits = net.eval()(example)
        except Exception as exc:
            raise AttachError(f"a {tuple(example.shape)} input does not run through {type(net).__name__} "
                             f"({type(exc).__name__}: {exc}); give the model an `image_size` attribute or "
                             f"pass `example=`") from None
        finally:
            net.train(training)
            for handle in handles:
                handle.remove()
        if not (isinstance(logits, torch.Tensor) and logits.shape == (len(example), num_classes)):
            shape = tuple(logits.shape) if isinstance(logits, torch.Tensor) else type(logits).__name__
            raise AttachError(f"{type(net).__name__} returns {shape} for {len(example)} images, not "
                             f"({len(example)}, {num_classes}) logits: build it with num_classes={num_classes}")
        self.finished = finished

    def candidates(self) -> list[str]:
        """Modules whose output is a map (N, K, h, w) with h*w > 1 or a token sequence (N, S, K)."""
        return [name for name, _, out in self.finished if _is_map(out) or _is_tokens(out)]

    def choose(self, layer: str | None) -> str:
        names = self.candidates()
        if layer is None:
            if not names:
                raise AttachError("no layer of the model outputs a feature map (N, K, h, w) or tokens "
                                 "(N, S, K): name one with layer=")
            layer = names[-1]
        elif layer not in names:
            ran = {name for name, _, _ in self.finished}
            why = "does not output a feature map or tokens" if layer in ran else "is not a module that ran"
            raise AttachError(f"layer {layer!r} {why}; candidates: {', '.join(names[-5:]) or 'none'}")
        output = [out for name, _, out in self.finished if name == layer][-1]
        self.tokens = output.dim() == 3
        self.num_filters = output.shape[-1] if self.tokens else output.shape[1]
        self.producer = self._producer(layer)
        return layer

    def _producer(self, layer: str) -> str | None:
        """The last layer with weights to finish before the gated one did; kept only when it is
        a plain Conv2d emitting the K gated channels (DenseNet concatenates, ConvNeXt ends on a
        Linear: no conv's filters are the gated ones there)."""
        end = max(i for i, (name, _, _) in enumerate(self.finished) if name == layer)
        weighted = [(name, m) for name, m, _ in self.finished[:end] if isinstance(m, (nn.Conv2d, nn.Linear))]
        if not weighted:
            return None
        name, module = weighted[-1]
        fits = isinstance(module, nn.Conv2d) and module.groups == 1 and module.out_channels == self.num_filters
        return name if fits else None


def _is_map(out) -> bool:
    return isinstance(out, torch.Tensor) and out.dim() == 4 and out.shape[2] * out.shape[3] > 1


def _is_tokens(out) -> bool:
    return isinstance(out, torch.Tensor) and out.dim() == 3 and out.shape[1] > 1


def _previous_layout(module, state_dict, prefix, *args) -> None:
    """Checkpoints written before models were attached hold the network's tensors at the top
    (stages.*, fc.*); they live under net. now."""
    for key in [key for key in state_dict if key.startswith(prefix)]:
        own = key[len(prefix):]
        if own not in ("mean", "std") and not own.startswith("net."):
            state_dict[f"{prefix}net.{own}"] = state_dict.pop(key)


def input_channels(net: nn.Module) -> int | None:
    """The channels the model's first conv takes; None when it has no conv."""
    first = next((m for m in net.modules() if isinstance(m, nn.Conv2d)), None)
    return first.in_channels if first is not None else None


def attach(model: nn.Module, num_classes: int, layer: str | nn.Module | None = None, *,
           in_channels: int | None = None, mean=None, std=None, example: torch.Tensor | None = None,
           quiet: bool = False) -> GatedModel:
    """`model` (an nn.Module returning (N, num_classes) logits) with a Class-Specific Gate on
    `layer`: a module name, the module itself, or None for the last feature map before global
    pooling (found from one forward pass of `example`, default a 64 px image or the model's
    `image_size`). Images with fewer channels than the model takes (1 for 3) are repeated;
    `mean`/`std` normalise them inside (default 0.5/0.25 per channel). Says which layer it
    picked unless `quiet`."""
    channels = input_channels(model) or in_channels or 3
    data_channels = in_channels or channels
    if data_channels not in (1, channels):
        raise AttachError(f"the model's first conv takes {channels} channels, the images have {data_channels}")
    if isinstance(layer, nn.Module):
        layer = next((name for name, m in model.named_modules() if m is layer), None)
        if layer is None:
            raise AttachError("layer= is a module that is not part of the model")
    if example is None:
        size = getattr(model, "image_size", 64)
        example = torch.rand(1, channels, size, size)
    found = _Found(model, example, num_classes)
    chosen = found.choose(layer)
    if layer is None and not quiet:
        print(f"csg.attach: gating {chosen!r} of {type(model).__name__} (K = {found.num_filters})", flush=True)
    mean = (0.5,) * data_channels if mean is None else tuple(mean)
    std = (0.25,) * data_channels if std is None else tuple(std)
    return GatedModel(model, num_classes, chosen, found, mean, std, tuple(example.shape[2:]))
