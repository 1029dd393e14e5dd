"""Where a filter, or a class, looks (paper Appendix G): GradMap and ActivMap segment the input
by one filter, CAM by all filters weighted for one class. Each method is a small class with one
`segments` step: a batch of images in, (B, F, H, W) bool segmentations out, F the filters it
was asked for (CAM: F = 1, the labelled class's map).

The appendix and the authors' code (which produced Table 2) differ for GradMap; every
difference is a field of `GradMapSettings`, the text's values by default, `AUTHORS` the code's.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

CHANNEL_REDUCTIONS = ("max-abs", "l2")
REFERENCE_SIZE = 128  # the image side at which the paper's blur sigmas are given
SCORINGS = ("focus", "top-filters")


@dataclass(frozen=True)
class GradMapSettings:
    """GradMap's choices. The text: blur sigma 5 px, every filter scored with its focus class;
    it names no colour-channel reduction, so the default is the max of |gradient| of the
    saliency maps it cites (Simonyan et al.), and "normalised with its second moment" is read as
    divided by the root of its second moment (the only reading under which a fixed threshold of
    1.0 does not depend on the gradient's scale; the code does the same)."""

    sigma: float = 5.0  # in pixels of a 128-px image (the paper's size), scaled to the input's size
    truncate: float = 3.0  # blur kernel radius in sigmas (the code's kernel is 2*sigma+1 wide: 1)
    channels: str = "max-abs"
    scoring: str = "focus"
    top_filters: int = 30  # with scoring 'top-filters': the filters most activated by the class
    threshold: float = 1.0


TEXT = GradMapSettings()
AUTHORS = GradMapSettings(sigma=30.0, truncate=1.0, channels="l2", scoring="top-filters")


def resize(maps: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """(B, F, h, w) -> (B, F, H, W), bilinear as in the appendix (identity at the same size)."""
    if tuple(maps.shape[-2:]) == tuple(size):
        return maps
    return F.interpolate(maps, size=size, mode="bilinear", align_corners=False)


@dataclass
class Forward:
    """One batch's forward pass, shared by every block of filters scored on it: the input
    (a leaf that requires grad when gradients are wanted), its labels, the last-conv map and
    the head's weights (C, K)."""

    images: torch.Tensor
    labels: torch.Tensor
    activation: torch.Tensor
    fc_weight: torch.Tensor | None  # the Linear(GAP(A)) head's, for CAM; None for another head

    @classmethod
    def of(cls, model, images, labels, gradients: bool = False) -> Forward:
        x = images.detach().clone().requires_grad_(gradients)
        with torch.set_grad_enabled(gradients):
            head = model.linear_head
            return cls(x, labels, model.features(x), None if head is None else head.weight.detach())

    @property
    def size(self) -> tuple[int, int]:
        return tuple(self.images.shape[-2:])


def gradient_maps(forward: Forward, filters, channels: str = "max-abs") -> torch.Tensor:
    """(B, F, H, W): d GAP(A_k) / d input for each filter k, reduced over colour channels and
    divided by its root mean square over pixels. In eval mode the images of a batch are
    independent, so one backward of the batch sum gives every image's gradient: F backwards.
    (Batching the F backwards with `is_grads_batched` was slower on CPU.)"""
    pooled = forward.activation.mean(dim=(2, 3))
    maps = []
    for k in filters:
        (grad,) = torch.autograd.grad(pooled[:, int(k)].sum(), forward.images, retain_graph=True)
        reduced = grad.abs().amax(dim=1) if channels == "max-abs" else grad.norm(dim=1)
        rms = reduced.square().mean(dim=(1, 2), keepdim=True).sqrt().clamp_min(torch.finfo(grad.dtype).tiny)
        maps.append(reduced / rms)
    return torch.stack(maps, dim=1)


def gaussian_blur(maps: torch.Tensor, sigma: float, truncate: float) -> torch.Tensor:
    """Separable Gaussian blur of (B, F, H, W) maps, reflected at the border; the radius is
    round(truncate * sigma), capped so the reflection fits inside the image."""
    height, width = maps.shape[-2:]
    radius = max(0, min(round(truncate * sigma), height - 1, width - 1))
    if radius == 0 or sigma <= 0:
        return maps
    offsets = torch.arange(-radius, radius + 1, dtype=maps.dtype, device=maps.device)
    kernel = torch.exp(-0.5 * (offsets / sigma) ** 2)
    kernel = kernel / kernel.sum()
    b, f = maps.shape[:2]
    flat = F.pad(maps.reshape(b * f, 1, height, width), (radius, radius, radius, radius), mode="reflect")
    flat = F.conv2d(flat, kernel.view(1, 1, 1, -1))
    flat = F.conv2d(flat, kernel.view(1, 1, -1, 1))
    return flat.reshape(b, f, height, width)


class Method:
    """One localization technique. `per_filter`: it scores filters (Appendix H.1), otherwise
    the labelled class's map (H.2). `ap`: the AP threshold (%) Table 2 reports for it, by
    which a filter's focus class is chosen."""

    name = ""
    per_filter = True
    ap = 30
    gradients = False

    def forward(self, model, images, labels) -> Forward:
        return Forward.of(model, images, labels, self.gradients)

    def segments(self, forward: Forward, filters=None, thresholds=None) -> torch.Tensor:
        """(B, F, H, W) bool segmentations of the batch by each of `filters` (CAM: F = 1)."""
        raise NotImplementedError


class GradMap(Method):
    name, ap, gradients = "gradmap", 20, True

    def __init__(self, settings: GradMapSettings = GradMapSettings()):
        self.settings = settings

    def segments(self, forward, filters=None, thresholds=None):
        s = self.settings
        maps = gradient_maps(forward, filters, s.channels)
        sigma = s.sigma * min(forward.size) / REFERENCE_SIZE
        return gaussian_blur(maps, sigma, s.truncate) > s.threshold


class ActivMap(Method):
    """Filter k's map resized to the input, segmented at or above the top-30% value of that
    filter over the whole split (`thresholds`, (K,))."""

    name = "activmap"

    @staticmethod
    def maps(forward: Forward, filters) -> torch.Tensor:
        index = torch.tensor(np.asarray(filters), dtype=torch.long, device=forward.activation.device)
        return resize(forward.activation[:, index], forward.size)

    def segments(self, forward, filters=None, thresholds=None):
        index = torch.tensor(np.asarray(filters), dtype=torch.long)
        return self.maps(forward, filters) >= thresholds[index].to(forward.images)[None, :, None, None]


class CAM(Method):
    """sum_k W[y, k] A_k for the labelled class y, resized, segmented at its own top 30%."""

    name, per_filter = "cam", False
    top = 0.3

    @staticmethod
    def maps(forward: Forward) -> torch.Tensor:
        """(B, 1, H, W) class activation maps of each image's labelled class."""
        weights = forward.fc_weight[forward.labels.to(forward.activation.device)]
        return resize(torch.einsum("bkhw,bk->bhw", forward.activation, weights)[:, None], forward.size)

    def segments(self, forward, filters=None, thresholds=None):
        cam = self.maps(forward)
        flat = cam.flatten(1)
        keep = max(1, int(flat.shape[1] * self.top))
        cut = flat.kthvalue(flat.shape[1] - keep + 1, dim=1).values
        return cam >= cut[:, None, None, None]


MAP_METHODS = ("gradmap", "activmap", "cam")


def build_method(name: str, settings: GradMapSettings = GradMapSettings()) -> Method:
    return {"gradmap": lambda: GradMap(settings), "activmap": ActivMap, "cam": CAM}[name]()


def iou(segments: torch.Tensor, truth: torch.Tensor) -> torch.Tensor:
    """(B, F, H, W) bool against (B, H, W) bool -> (B, F) intersection over union (0 when both
    are empty)."""
    truth = truth[:, None]
    inter = (segments & truth).flatten(2).sum(-1)
    union = (segments | truth).flatten(2).sum(-1)
    return inter.double() / union.clamp_min(1).double()


# Top-30% thresholds of each filter over a split, from a streaming histogram: LOG_BINS bins
# log-spaced over [LOW, HIGH], one bin below (zeros and values under LOW) and one above.
LOW, HIGH, LOG_BINS = 1e-6, 1e6, 4096
BIN_RATIO = (HIGH / LOW) ** (1 / LOG_BINS)  # 1.0068: a threshold is at most 0.68% below exact


def histogram_edges() -> torch.Tensor:
    return torch.logspace(math.log10(LOW), math.log10(HIGH), LOG_BINS + 1, dtype=torch.float64)


def activation_histogram(activation: torch.Tensor) -> torch.Tensor:
    """(B, K, h, w) -> (K, LOG_BINS + 2) counts: bin 0 below LOW, the last at or above HIGH."""
    k = activation.shape[1]
    values = activation.detach().transpose(0, 1).reshape(k, -1).double()
    bins = torch.bucketize(values, histogram_edges().to(values.device), right=True)
    offsets = torch.arange(k, device=values.device)[:, None] * (LOG_BINS + 2)
    return torch.bincount((bins + offsets).flatten(), minlength=k * (LOG_BINS + 2)).view(k, -1).cpu()


def top_thresholds(histogram: torch.Tensor, top: float = 0.3) -> torch.Tensor:
    """(K,) per filter: the lower edge of the bin holding its int(top * n)-th largest value, so
    the segmentation holds at least that share of the split's map positions; 0 when that value
    is below LOW (a ReLU map's zeros). Exact up to one bin: within a factor BIN_RATIO."""
    counts = histogram.double()
    rank = (counts.sum(1) * top).floor().clamp_min(1)
    from_top = counts.flip(1).cumsum(1).flip(1)  # values in this bin or above
    bin_index = (from_top >= rank[:, None]).sum(1) - 1
    if (bin_index == LOG_BINS + 1).any():
        raise ValueError(f"activations at or above {HIGH:g}: the threshold histogram cannot place them")
    lower = torch.cat([torch.zeros(1, dtype=torch.float64), histogram_edges()])
    return lower[bin_index].float()
