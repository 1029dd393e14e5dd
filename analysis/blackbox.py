"""Black-box robustness (Appendix J): attacks that see only the model's output probabilities.

- one-pixel: torchattacks' differential-evolution attack (Su et al., 2019);
- local search: Narodytska and Kasiviswanathan (2016), LocSearchAdv, written here. Images
  are centred to [-1, 1]; each round probes every candidate pixel by setting it to p times its
  sign (PERT; p > 1 probes beyond the valid range, as the paper does, so even saturated
  pixels say something), keeps the `per_round` pixels that lower the true class's probability most,
  multiplies them by `r` wrapped back into range (CYC), and moves the candidates to their
  neighbourhoods (half-width `radius`). It stops once the top-1 prediction changes, after
  `rounds` rounds, or when `max_pixels` pixels have been changed: never more.

Both attack a fixed sample of test images; success is counted over the images the model gets
right, as the share whose prediction the attack changes.
"""
from __future__ import annotations

import numpy as np
import torch

from csg.data import stacked

BLACK_BOX = ("onepixel", "localsearch")
LOCAL_SEARCH_DEFAULTS = {"rounds": 150, "per_round": 5, "radius": 5, "p": 10.0, "r": 1.2,
                         "initial_fraction": 0.1, "max_pixels": 50}


@torch.no_grad()
def probabilities(model, images: torch.Tensor) -> torch.Tensor:
    return torch.softmax(model(images), dim=1)


@torch.no_grad()
def local_search(model, image: torch.Tensor, label: int, rng: np.random.Generator, rounds=150, per_round=5,
                 radius=5, p=10.0, r=1.2, initial_fraction=0.1, max_pixels=50) -> tuple[torch.Tensor, int]:
    """One image (C, H, W) in [0, 1] -> (adversarial image, pixels changed)."""
    _, height, width = image.shape
    centred = image * 2 - 1
    changed = np.zeros((height, width), dtype=bool)
    count = max(1, int(initial_fraction * height * width))
    candidates = [divmod(int(i), width) for i in rng.choice(height * width, count, replace=False)]
    for _ in range(rounds):
        if changed.sum() >= max_pixels or not candidates:
            break
        probes = centred.repeat(len(candidates), 1, 1, 1)
        for n, (y, x) in enumerate(candidates):
            probes[n, :, y, x] = torch.where(centred[:, y, x] >= 0, p, -p)  # PERT
        scores = probabilities(model, (probes + 1) / 2)[:, label]
        budget = int(max_pixels - changed.sum())
        best = [candidates[i] for i in torch.argsort(scores)[:min(per_round, budget)].tolist()]
        for y, x in best:
            centred[:, y, x] = _cyclic(r * centred[:, y, x])
            changed[y, x] = True
        if probabilities(model, ((centred + 1) / 2)[None]).argmax(1).item() != label:
            break
        candidates = sorted({(y + dy, x + dx) for y, x in best for dy in range(-radius, radius + 1)
                             for dx in range(-radius, radius + 1)
                             if 0 <= y + dy < height and 0 <= x + dx < width})
    return (centred + 1) / 2, int(changed.sum())


def _cyclic(values: torch.Tensor) -> torch.Tensor:
    """CYC: wrap values into [-1, 1]."""
    return torch.remainder(values + 1, 2) - 1


def attack_sample(checkpoint: str, name: str, indices: np.ndarray, options: dict, seed: int) -> dict:
    """Attack the listed test images of a run's checkpoint: which were classified right, and
    which predictions the attack changed."""
    from csg.store.checkpoint import checkpoint_split, restore_model

    model, _, _ = restore_model(checkpoint)
    images, labels = stacked(checkpoint_split(checkpoint, "test"), indices)
    clean = probabilities(model, images).argmax(1)
    if name == "onepixel":
        import torchattacks

        torch.manual_seed(seed)
        np.random.seed(seed)  # scipy's differential evolution inside draws from numpy's global state
        adversarial = torchattacks.OnePixel(model, **options)(images, labels)
    else:
        rng = np.random.default_rng(seed)
        settings = {**LOCAL_SEARCH_DEFAULTS, **options}
        adversarial = torch.stack([local_search(model, image.clone(), int(label), rng, **settings)[0]
                                   for image, label in zip(images, labels)])
    attacked = probabilities(model, adversarial).argmax(1)
    return {"correct": (clean == labels).numpy(), "changed": (attacked != clean).numpy()}


def blackbox_row(outcome: dict) -> dict:
    correct = outcome["correct"]
    return {
        "n_images": len(correct),
        "clean_accuracy": float(correct.mean()),
        "success_rate": float(outcome["changed"][correct].mean()) if correct.any() else float("nan"),
    }
