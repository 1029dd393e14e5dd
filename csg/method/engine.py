"""The training engine: path schedule, per-path optimizers, one epoch, evaluation.

Plain PyTorch; runs with or without Ray and with or without DDP. Under DDP the gate lives
outside the wrapped model, so the caller passes a `RankSync` that averages its gradient
across ranks (every rank runs the same path in the same epoch, so all of them call it).
"""
from __future__ import annotations

import math
import time
import warnings
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import nn

from csg.method.gate import ClassSpecificGate, sparsity_loss
from csg.method.precision import Precision

if TYPE_CHECKING:  # the engine reads a TrainConfig's fields; it never builds or validates one
    from csg.config import TrainConfig


def epoch_path(epoch: int, cfg: TrainConfig) -> str:
    """'std', 'csg' or 'joint' for a 0-based epoch (Algorithm 1).

    From epoch `warmup` on, an epoch is on the CSG path when its index modulo `period` falls in
    the last `csg_epochs` of the period, as the authors' code decides it; the others train STD.
    """
    if cfg.method == "std" or epoch < cfg.warmup:
        return "std"
    if cfg.scheme == "joint":
        return "joint"
    return "csg" if epoch % cfg.period >= cfg.period - cfg.csg_epochs else "std"


def optimizer_roles(cfg: TrainConfig) -> tuple[str, ...]:
    """Which optimizers a run needs: STD epochs and gated epochs each have their own."""
    if cfg.method == "std":
        return ("std",)
    return ("std", "joint") if cfg.scheme == "joint" else ("std", "csg")


def build_optimizers(model: nn.Module, gate: ClassSpecificGate | None, cfg: TrainConfig):
    """One optimizer per path over every parameter of the model that path does not freeze;
    G only on gated paths. G gets no weight decay: its sparsity is the regulariser's job.
    """
    optimizers = {}
    for role in optimizer_roles(cfg):
        frozen = cfg.csg_frozen if role == "csg" else cfg.std_frozen
        lr = cfg.csg_learning_rate if role == "csg" else cfg.lr
        groups = [{"params": model.trainable_parameters(frozen), "weight_decay": cfg.weight_decay}]
        if role != "std" and gate is not None and gate.learnable:
            groups.append({"params": [gate.weight], "weight_decay": 0.0})
        if cfg.optimizer == "sgd":
            optimizers[role] = torch.optim.SGD(groups, lr=lr, momentum=cfg.momentum, nesterov=cfg.nesterov)
        else:
            optimizers[role] = torch.optim.Adam(groups, lr=lr)
    return optimizers


def build_schedulers(optimizers: dict, cfg: TrainConfig):
    """Per-epoch schedules. Every path's rate follows the global epoch, trained or not, so a
    CSG epoch late in training runs at the same reduced rate as the STD epoch beside it."""
    def factor(epoch: int) -> float:
        if cfg.lr_schedule == "multistep":  # x0.1 at 40%, 60% and 80% of training
            return 0.1 ** sum(epoch >= m * cfg.epochs for m in (0.4, 0.6, 0.8))
        if cfg.lr_schedule == "cosine":
            return 0.5 * (1 + math.cos(math.pi * epoch / cfg.epochs))
        return 1.0

    return {k: torch.optim.lr_scheduler.LambdaLR(o, factor) for k, o in optimizers.items()}


def step_schedulers(schedulers: dict) -> None:
    """Advance every path's schedule by one epoch. The idle path's optimizer may not have
    stepped yet (e.g. CSG before its first CSG epoch); that is expected, not a misuse."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Detected call of `lr_scheduler.step\\(\\)` before")
        for scheduler in schedulers.values():
            scheduler.step()


class DivergedError(RuntimeError):
    """A loss became NaN or inf."""


class RankSync:
    """How ranks agree during an epoch. One process needs no agreement."""

    def average_grad(self, param: torch.Tensor) -> None:
        pass

    def any_nonfinite(self, loss: torch.Tensor) -> bool:
        """Whether the loss is NaN or inf on any rank: the step's one host synchronisation."""
        return not bool(torch.isfinite(loss))


LOSS_TERMS = ("total", "ce_std", "ce_csg", "sparsity")


@dataclass
class EpochStats:
    loss_total: float = 0.0
    loss_ce_std: float = math.nan
    loss_ce_csg: float = math.nan
    loss_sparsity: float = math.nan
    train_acc: float = 0.0
    seconds: float = 0.0
    samples: int = 0
    data_wait_s: float = 0.0  # of `seconds`, spent waiting for the loader's next batch


@dataclass(frozen=True)
class CSGLoss:
    """The gated paths' loss: lambda1 * CE(csg) + lambda2 * psi(ReLU(||G||_1 - g)), plus CE(std)
    on the joint path (Sec. 3.2)."""

    lambda1: float
    lambda2: float
    psi: str
    g: float

    @classmethod
    def of(cls, cfg: TrainConfig, g: float) -> CSGLoss:
        return cls(cfg.lambda1, cfg.lambda2, cfg.psi, g)


def train_one_epoch(model: nn.Module, gate: ClassSpecificGate | None, loader, path: str,
                    optimizer: torch.optim.Optimizer, loss: CSGLoss, device: torch.device, *, epoch: int = 0,
                    sync: RankSync = RankSync(), precision: Precision = Precision()) -> EpochStats:
    """Train one epoch on `path`; returns this rank's mean losses and accuracy.

    A non-finite loss on any rank stops every rank at the same step, before it reaches the
    weights or G (a lone rank raising would leave the others waiting in the gradient
    all-reduce). That check is the step's only host synchronisation: losses and the accuracy
    count are summed on the device and read once, at the end of the epoch. `precision` runs the
    network under autocast; G and the sparsity term stay in fp32.

    The time spent waiting for the loader is the host's wall time inside its `next()`: the
    step's host synchronisation has already waited for the device, so no read is added for it.
    """
    model.train()
    zero = torch.zeros((), device=device)
    sums = torch.zeros(len(LOSS_TERMS) + 1, dtype=torch.float64, device=device)  # the terms, then correct
    seen = 0
    waited = WaitClock()
    start = time.perf_counter()
    for step, (images, labels) in enumerate(waited.over(loader)):
        images = precision.images(device_pixels(images, device))
        labels = labels.to(device, non_blocking=True)
        optimizer.zero_grad(set_to_none=True)
        terms, logits = _path_loss(model, gate, images, labels, path, loss, precision)
        if sync.any_nonfinite(terms["total"]):
            raise DivergedError(f"loss is not finite at epoch {epoch}, step {step} ({path} path)")
        precision.backward(terms["total"])
        if path != "std" and gate.learnable:
            sync.average_grad(gate.weight)
            precision.step(optimizer)
            gate.project_()  # after a step the scaler skipped, G is already projected: no change
        else:
            precision.step(optimizer)
        n = labels.numel()
        seen += n
        with torch.no_grad():
            sums[:-1] += torch.stack([terms.get(name, zero).detach().double() for name in LOSS_TERMS]) * n
            sums[-1] += (logits.argmax(1) == labels).sum()
    stats = _epoch_stats(sums, seen, path, time.perf_counter() - start)
    stats.data_wait_s = waited.seconds
    return stats


def device_pixels(images, device: torch.device) -> torch.Tensor:
    """A batch on `device` as float pixels in [0, 1]. A uint8 batch crosses to the device at a
    quarter of float's size and is made float there, where the conversion is cheap, and
    contiguous in the same pass (the loader stacks its crops channels-last); a batch still
    encoded (`--decode gpu`: it has `on_device`) is decoded there first."""
    if hasattr(images, "on_device"):
        images = images.on_device(device)
    images = images.to(device, non_blocking=True)
    if images.dtype != torch.uint8:
        return images.contiguous()
    return images.to(torch.float32, memory_format=torch.contiguous_format).div_(255)


class WaitClock:
    """Wall time a loop spends inside its iterable's `next()`: how long training waited for data."""

    def __init__(self):
        self.seconds = 0.0

    def over(self, iterable):
        batches = iter(iterable)
        while True:
            begin = time.perf_counter()
            try:
                item = next(batches)
            except StopIteration:
                return
            finally:
                self.seconds += time.perf_counter() - begin
            yield item


def _path_loss(model, gate, images, labels, path: str, loss: CSGLoss, precision: Precision):
    """({'total', and the terms `path` uses}, the logits its accuracy counts) for one batch."""
    terms = {}
    if path == "std":
        with precision.autocast():
            logits = model(images)
            terms["ce_std"] = F.cross_entropy(logits, labels)
        terms["total"] = terms["ce_std"]
        return terms, logits
    rows = gate(labels)
    with precision.autocast():
        if path == "joint":
            logits, csg_logits = model(images, rows, both_paths=True)
            terms["ce_std"] = F.cross_entropy(logits, labels)
        else:
            logits = csg_logits = model(images, rows)
        terms["ce_csg"] = F.cross_entropy(csg_logits, labels)
    terms["sparsity"] = sparsity_loss(gate.matrix, loss.g, loss.psi)
    terms["total"] = loss.lambda1 * terms["ce_csg"] + loss.lambda2 * terms["sparsity"]
    if path == "joint":
        terms["total"] = terms["total"] + terms["ce_std"]
    return terms, logits


def _epoch_stats(sums: torch.Tensor, seen: int, path: str, seconds: float) -> EpochStats:
    """The epoch's means from its device-side sums, read once; the terms `path` does not use are NaN."""
    totals = (sums / max(seen, 1)).tolist()
    stats = EpochStats(loss_total=totals[0], train_acc=totals[-1], seconds=seconds, samples=seen)
    for index, name in enumerate(LOSS_TERMS[1:], start=1):
        used = name == "ce_std" and path != "csg" or name != "ce_std" and path != "std"
        setattr(stats, f"loss_{name}", totals[index] if used else math.nan)
    return stats


@torch.no_grad()
def evaluate(model: nn.Module, loader, device: torch.device, precision: Precision = Precision()) -> tuple[int, int]:
    """(correct, total) on the STD path: testing never uses the gate."""
    model.eval()
    correct, total = torch.zeros((), dtype=torch.long, device=device), 0
    for images, labels in loader:
        with precision.autocast():
            logits = model(precision.images(device_pixels(images, device)))
        correct += (logits.argmax(1) == labels.to(device, non_blocking=True)).sum()
        total += labels.numel()
    return int(correct), total
