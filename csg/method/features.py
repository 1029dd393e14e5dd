"""GAP features of a model's gated map (and optionally of every conv layer): what MI, the
studies and the attacks' detectors read."""
from __future__ import annotations

import torch
from torch import nn


def default_device() -> torch.device:
    """The device an analysis runs on: the GPU of its Ray task or machine when there is one."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


class _ConvOutputs:
    """Forward hooks that keep the GAP of every conv layer's output; released on exit."""

    def __init__(self, model):
        self.pooled = []
        self.handles = [m.register_forward_hook(self._keep) for m in model.modules() if isinstance(m, nn.Conv2d)]

    def _keep(self, module, inputs, output):
        self.pooled.append(output.mean(dim=(2, 3)))

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        for handle in self.handles:
            handle.remove()


@torch.no_grad()
def gap_features(model: nn.Module, loader, device, all_layers: bool = False) -> dict:
    """STD path, eval mode: {'features': (N, K) last-conv GAP, 'labels', 'predictions'} and,
    with `all_layers`, 'all_layers': (N, sum of channels) GAP after every conv layer."""
    model.eval()
    out = {"features": [], "labels": [], "predictions": [], "all_layers": []}
    for images, labels in loader:
        with _ConvOutputs(model) as convs:
            activation, logits = model.features_and_logits(images.to(device))
        out["features"].append(activation.mean(dim=(2, 3)).cpu())
        out["predictions"].append(logits.argmax(1).cpu())
        out["labels"].append(labels)
        if all_layers:
            out["all_layers"].append(torch.cat(convs.pooled, dim=1).cpu())
    if not all_layers:
        out.pop("all_layers")
    return {name: torch.cat(parts).numpy() for name, parts in out.items()}
