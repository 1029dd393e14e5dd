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

from dataclasses import asdict, dataclass, fields

import numpy as np
import pandas as pd
import pyarrow as pa
import torch

from analysis.fan_out import fan_out
from analysis.options import Compared, option
from analysis.studies import StudyError, resolve_runs
from csg.data import stacked
from csg.store.results import register_schemas

BLACK_BOX = ("onepixel", "localsearch")

SCHEMAS = register_schemas({
    "blackbox": pa.schema([("attack", pa.string()), ("n_images", pa.int64()), ("clean_accuracy", pa.float64()),
                           ("success_rate", pa.float64())]),
})


@dataclass(frozen=True)
class LocalSearch:
    """LocSearchAdv's settings (each a `--ls-` flag of the blackbox command)."""

    rounds: int = option(150, "rounds at most")
    per_round: int = option(5, "pixels changed per round")
    radius: int = option(5, "half-width of the neighbourhood searched next")
    p: float = option(10.0, "probe value p*sign(pixel), in [-1, 1] units")
    r: float = option(1.2, "factor applied to a chosen pixel (wrapped into range)")
    initial_fraction: float = option(0.1, "share of pixels probed in the first round")
    max_pixels: int = option(50, "pixels changed at most")


LOCAL_SEARCH_DEFAULTS = asdict(LocalSearch())


@dataclass(frozen=True)
class Options(Compared):
    attacks: tuple[str, ...] = option(BLACK_BOX, "attacks to run", choices=BLACK_BOX)
    images: int = option(100, "test images attacked (a fixed sample, every run)")
    pixels: int = option(1, "one-pixel: pixels changed")
    de_steps: int = option(10, "one-pixel: differential-evolution iterations")
    popsize: int = option(10, "one-pixel: population size multiplier")
    # the local search's settings, each as --ls-<name>
    ls_rounds: int = option(LocalSearch.rounds, "local search: rounds at most")
    ls_per_round: int = option(LocalSearch.per_round, "local search: pixels changed per round")
    ls_radius: int = option(LocalSearch.radius, "local search: half-width of the neighbourhood searched next")
    ls_p: float = option(LocalSearch.p, "local search: probe value p*sign(pixel), in [-1, 1] units")
    ls_r: float = option(LocalSearch.r, "local search: factor applied to a chosen pixel (wrapped into range)")
    ls_initial_fraction: float = option(LocalSearch.initial_fraction,
                                        "local search: share of pixels probed in the first round")
    ls_max_pixels: int = option(LocalSearch.max_pixels, "local search: pixels changed at most")
    seed: int = option(0, "seed of the image sample and the attacks")

    def attack_options(self) -> dict:
        return {"onepixel": {"pixels": self.pixels, "steps": self.de_steps, "popsize": self.popsize},
                "localsearch": {f.name: getattr(self, f"ls_{f.name}") for f in fields(LocalSearch)}}


@torch.no_grad()
def probabilities(model, images: torch.Tensor) -> torch.Tensor:
    return torch.softmax(model(images), dim=1)


@torch.no_grad()
def local_search(model, image: torch.Tensor, label: int, rng: np.random.Generator,
                 settings: LocalSearch = LocalSearch()) -> tuple[torch.Tensor, int]:
    """One image (C, H, W) in [0, 1] -> (adversarial image, pixels changed)."""
    rounds, per_round, radius, p, r, max_pixels = (settings.rounds, settings.per_round, settings.radius, settings.p,
                                                   settings.r, settings.max_pixels)
    _, height, width = image.shape
    centred = image * 2 - 1
    changed = np.zeros((height, width), dtype=bool)
    count = max(1, int(settings.initial_fraction * height * width))
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
    from csg.store import checkpoint as ckpt_lib

    model, cfg, _ = ckpt_lib.restore_model(checkpoint, ckpt_lib.read(checkpoint))
    images, labels = stacked(ckpt_lib.evaluation_split(cfg, "test"), indices)
    clean = probabilities(model, images).argmax(1)
    if name == "onepixel":
        import torchattacks

        torch.manual_seed(seed)
        np.random.seed(seed)  # scipy's differential evolution inside draws from numpy's global state
        adversarial = torchattacks.OnePixel(model, **options)(images, labels)
    else:
        rng = np.random.default_rng(seed)
        settings = LocalSearch(**options)
        adversarial = torch.stack([local_search(model, image.clone(), int(label), rng, settings)[0]
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


def table4(frame: pd.DataFrame, names: dict[str, str] | None = None) -> pd.DataFrame:
    """Success rate (%) per attack, one column per run (as Table 4)."""
    table = frame.pivot_table(index="attack", columns="run_id", values="success_rate", observed=True) * 100
    return table.rename(columns=names or {})


def attack_runs(checkpoints: dict[str, str], attacks, indices: np.ndarray, options: dict, seed: int,
                echo=print) -> pd.DataFrame:
    """A Ray task per (run, attack) on the images at `indices`: rows of the `blackbox` table."""
    def report(key, outcome, done, total):
        row = blackbox_row(outcome)
        echo(f"{key[0]} {key[1]}: success {row['success_rate']:.3f} on {row['n_images']} images", flush=True)

    found = fan_out("blackbox", {(run, name): (attack_sample, (checkpoint, name, indices, options[name], seed))
                                 for run, checkpoint in checkpoints.items() for name in attacks}, on_result=report)
    return pd.DataFrame([{"run_id": run, "attack": name, **blackbox_row(outcome)}
                         for (run, name), outcome in found.items()])


def main(store, options: Options, start=None, echo=print) -> pd.DataFrame:
    """Table 4 for `options.runs`: refuse bad input (StudyError), `start()` Ray, attack a fixed
    sample of test images, write the `blackbox` table and print the table."""
    from csg.store.checkpoint import checkpoint_split

    runs = resolve_runs(store, options.runs)
    size = len(checkpoint_split(runs[0].checkpoint, "test"))
    if not 1 <= options.images <= size:
        raise StudyError(f"--images: must be between 1 and the test set's {size} (got {options.images})")
    indices = np.sort(np.random.default_rng(options.seed).choice(size, options.images, replace=False))
    if start is not None:
        start()
    frame = attack_runs({run.run_id: run.checkpoint for run in runs}, options.attacks, indices,
                        options.attack_options(), options.seed, echo)
    for run, run_rows in frame.groupby("run_id", sort=False):
        store.write("blackbox", run, run_rows)
    echo("\nattack success rate (%) on correctly classified images, as Table 4")
    echo(table4(frame, {run.run_id: run.label for run in runs}).to_string(float_format="{:.2f}".format))
    return frame
