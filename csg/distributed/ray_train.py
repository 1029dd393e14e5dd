"""The one module that adapts the engine to Ray Train: the per-worker loop and the driver.

Rank 0 alone writes tables and checkpoints; every rank reports once per epoch (a barrier).
"""
from __future__ import annotations

import functools
import logging
import math
import os
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import ray.train
import torch
import torch.distributed as dist
from ray.train import (
    CheckpointConfig,
    FailureConfig,
    LoggingConfig,
    RunConfig,
    ScalingConfig,
)
from ray.train.torch import TorchConfig, TorchTrainer
from torch.utils.data import DataLoader, Dataset, DistributedSampler, IterableDataset, Subset

from csg import data as data_lib
from csg.config import TrainConfig, resolved_g_density
from csg.distributed import progress, ray_data
from csg.method import engine
from csg.method.features import gap_features
from csg.method.gate import ClassSpecificGate, FixedGate, g_from_density, l1_density
from csg.method.models import build_model
from csg.method.precision import Precision, resolve_amp
from csg.store import checkpoint as ckpt_lib
from csg.store import run_record
from csg.store.results import ResultStore


@dataclass
class _Worker:
    """What one rank trains with, built once from the run's config."""

    cfg: TrainConfig
    rank: int
    world: int
    device: torch.device
    info: data_lib.DatasetInfo
    test_set: Dataset
    epochs: DistributedSampler | IterableDataset | ray_data.WorkerBatches  # set_epoch(e); len: samples per epoch
    train_loader: DataLoader | ray_data.WorkerBatches
    test_loader: DataLoader
    model: torch.nn.Module
    gate: ClassSpecificGate | None
    precision: Precision
    optimizers: dict
    schedulers: dict
    loss: engine.CSGLoss
    wrapped: torch.nn.Module | None = None


def train_loop_per_worker(loop_config: dict) -> dict | None:
    cfg = TrainConfig(**loop_config["cfg"])
    run_id, progress_queue = loop_config["run_id"], loop_config.get("progress")
    worker = _build_worker(cfg)
    state = _resume(worker, progress_queue)
    worker.wrapped = _wrap(worker)
    store = ResultStore(cfg.results)
    history = state["history"]
    if history and state["epoch"] + 1 >= cfg.epochs:
        # Resumed with every epoch checkpointed (stopped before it finished): report the last
        # epoch again, so whoever listens to this attempt (a sweep's Tune trial) hears its score.
        ray.train.report({"epoch": state["epoch"], run_record.SCORE: history[-1]["test_acc"]})
    for epoch in range(state["epoch"] + 1, cfg.epochs):
        diverged = _train_epoch(worker, epoch, run_id, store, history, progress_queue)
        if diverged is not None:
            # Every rank stops here together. Ending normally (not raising) keeps Ray from
            # restarting a run that would only diverge again from the same checkpoint.
            return {"diverged": diverged, "epochs_completed": len(history)}
    if worker.rank != 0:
        return None
    return _finish(worker, run_id, store, history)


def _build_worker(cfg: TrainConfig) -> _Worker:
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    device = ray.train.torch.get_device()
    torch.set_num_threads(cfg.cpus_per_worker)  # the cores Ray gave this worker, no more
    if not cfg.verbose:
        _quiet_report_lines()
    torch.manual_seed(cfg.seed)

    info = data_lib.describe(cfg.dataset, cfg.data)
    train_set, test_set = data_lib.load(cfg.dataset, cfg.data, cfg.image_size, cfg.skip_bad_images, cfg.augment,
                                         cfg.decode)
    if cfg.ingest == "ray-data":
        train_loader = epochs = ray_data.WorkerBatches(ray.train.get_dataset_shard(ray_data.DATASET),
                                                       cfg.batch_size // world, info.train_size // world)
    else:
        sampler, epochs = data_lib.rank_input(train_set, rank, world, cfg.seed)
        train_loader = DataLoader(train_set, batch_size=cfg.batch_size // world, sampler=sampler,
                                  **data_lib.loader_options(cfg.loader_workers, cfg.seed, rank, device.type == "cuda",
                                                            train_set))
    # Each rank scores a disjoint slice of the test set; the counts are summed, so no padding.
    test_shard = Subset(test_set, range(rank, len(test_set), world))
    test_loader = DataLoader(test_shard, batch_size=cfg.batch_size // world,
                             **data_lib.loader_options(cfg.loader_workers, cfg.seed, rank, device.type == "cuda"))

    model = build_model(cfg.model, info.num_classes, info.in_channels, info.mean, info.std, cfg.weights, cfg.layer)
    gate = make_gate(cfg, info.num_classes, model.num_filters)
    precision = Precision(resolve_amp(cfg.amp, device), device.type, cfg.channels_last)
    precision.model(model.to(device))
    if gate is not None:
        gate.to(device)
    optimizers = engine.build_optimizers(model, gate, cfg)
    g = g_from_density(resolved_g_density(cfg, info.num_classes), info.num_classes, model.num_filters)
    return _Worker(cfg, rank, world, device, info, test_set, epochs, train_loader, test_loader, model, gate,
                   precision, optimizers, engine.build_schedulers(optimizers, cfg), engine.CSGLoss.of(cfg, g))


def _resume(worker: _Worker, progress_queue) -> dict:
    """The latest checkpoint's state loaded into the worker, or a fresh start (epoch -1)."""
    checkpoint = ray.train.get_checkpoint()
    if checkpoint is None:
        return {"epoch": -1, "history": []}
    with checkpoint.as_directory() as folder:
        state = ckpt_lib.load(Path(folder), worker.model, worker.gate, worker.optimizers, worker.schedulers,
                              worker.cfg)
    worker.precision.load_state_dict(state.get("scaler", {}))
    if worker.rank == 0:
        progress.send(progress_queue, "resumed", state["epoch"])
    return state


def _wrap(worker: _Worker) -> torch.nn.Module:
    """DDP wraps the model only: the gate stays outside, used on gated epochs alone, and its
    gradient is averaged by hand, so no step pays for unused-parameter detection."""
    wrapped = ray.train.torch.prepare_model(
        worker.model, move_to_device=False, parallel_strategy_kwargs={"find_unused_parameters": False}
    )
    if worker.cfg.compile:
        wrapped = torch.compile(wrapped)  # over DDP, so the compiled graph sees its buckets
    return wrapped


def _train_epoch(worker: _Worker, epoch: int, run_id: str, store: ResultStore, history: list,
                 progress_queue) -> str | None:
    """One epoch, its row in `history`, and its report (with a checkpoint from rank 0); the
    divergence message instead when the loss stopped being finite."""
    w, cfg = worker, worker.cfg
    w.epochs.set_epoch(epoch)
    path = engine.epoch_path(epoch, cfg)
    try:
        stats = engine.train_one_epoch(
            w.wrapped, w.gate, w.train_loader, path, w.optimizers[path], w.loss, w.device, epoch=epoch,
            sync=DistributedSync(w.device) if w.world > 1 else engine.RankSync(), precision=w.precision,
        )
    except engine.DivergedError as exc:
        return str(exc)
    lrs = {k: o.param_groups[0]["lr"] for k, o in w.optimizers.items()}
    engine.step_schedulers(w.schedulers)
    test_acc = _global_accuracy(w.wrapped, w.test_loader, w.device, w.world, w.precision)
    if w.world > 1 and w.gate is not None:
        _check_gate_identical(w.gate, epoch)
    mean = functools.partial(_mean_across, world=w.world, device=w.device)
    row = {
        "epoch": epoch, "path": path, "lr_std": lrs["std"],
        "lr_csg": lrs.get("csg", lrs.get("joint", math.nan)),
        "loss_total": mean(stats.loss_total), "loss_ce_std": mean(stats.loss_ce_std),
        "loss_ce_csg": mean(stats.loss_ce_csg), "loss_sparsity": stats.loss_sparsity,
        "train_acc": mean(stats.train_acc),
        "test_acc": test_acc, "l1_density": l1_density(w.gate.matrix.detach()) if w.gate is not None else math.nan,
        "epoch_time_s": stats.seconds,
        "data_wait": mean(stats.data_wait_s / max(stats.seconds, 1e-9)),
        "skipped_images": _sum_across(len(w.epochs) - stats.samples, w.world, w.device),
    }
    history.append(row)
    metrics = {"epoch": epoch, run_record.SCORE: test_acc}
    if w.rank != 0:
        ray.train.report(metrics)
        return None
    run_record.write_epochs(store, run_id, history)
    progress.send(progress_queue, "epoch", row, stats.samples * w.world / max(stats.seconds, 1e-9))
    with tempfile.TemporaryDirectory() as folder:
        ckpt_lib.save(Path(folder), w.model, w.gate, w.optimizers, w.schedulers, cfg, epoch, history,
                      w.precision.state_dict())
        ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(folder))
    return None


def _finish(worker: _Worker, run_id: str, store: ResultStore, history: list) -> dict:
    """Rank 0, after the last epoch: MI matrix on the whole test set, gate and MI tables."""
    cfg, gate = worker.cfg, worker.gate
    loader = DataLoader(worker.test_set, batch_size=max(cfg.batch_size, 256), num_workers=cfg.loader_workers,
                        collate_fn=data_lib.collate_skipping_bad)
    features = gap_features(worker.model, loader, worker.device)
    matrix = gate.matrix.detach().cpu().numpy() if gate is not None else None
    return run_record.write_final(store, run_id, cfg, features, worker.info.num_classes, matrix, history,
                                  worker.loss.g if gate is not None else math.nan)


def _quiet_report_lines() -> None:
    """Ray Train (2.60) names the logger of its per-report line after its file, outside the
    `ray.train` tree that `LoggingConfig` filters; hide that line unless asked."""
    from ray.train.v2._internal.execution import context

    logging.getLogger(context.__file__).setLevel(logging.WARNING)


def make_gate(cfg: TrainConfig, num_classes: int, num_filters: int) -> ClassSpecificGate | None:
    if cfg.method == "std":
        return None
    if cfg.gate == "fixed":
        return FixedGate(num_classes, num_filters, cfg.m1, cfg.m2)
    return ClassSpecificGate(num_classes, num_filters)


class DistributedSync(engine.RankSync):
    """Collectives over the default process group, on the worker's device (NCCL needs CUDA)."""

    def __init__(self, device: torch.device):
        self.device = device

    def average_grad(self, param: torch.Tensor) -> None:
        if param.grad is None:
            param.grad = torch.zeros_like(param)
        dist.all_reduce(param.grad)
        param.grad.div_(dist.get_world_size())

    def any_nonfinite(self, loss: torch.Tensor) -> bool:
        flag = (~torch.isfinite(loss.detach())).to(torch.float32).reshape(1)
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        return bool(flag.item())


def _global_accuracy(model, loader, device, world, precision) -> float:
    correct, total = engine.evaluate(model, loader, device, precision)
    counts = torch.tensor([correct, total], dtype=torch.float64, device=device)
    if world > 1:
        dist.all_reduce(counts)
    return float(counts[0] / counts[1])


def _mean_across(value: float, world: int, device: torch.device) -> float:
    """Mean of a per-rank number over ranks (tensors on `device`: NCCL cannot reduce CPU ones)."""
    if world == 1 or math.isnan(value):
        return value
    t = torch.tensor([value], dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return float(t) / world


def _sum_across(count: int, world: int, device: torch.device) -> int:
    if world == 1:
        return count
    t = torch.tensor([count], dtype=torch.int64, device=device)
    dist.all_reduce(t)
    return int(t)


def _check_gate_identical(gate: ClassSpecificGate, epoch: int) -> None:
    """Every rank must hold the same G bit for bit; a mismatch is a bug, never averaged away."""
    mine = gate.matrix.detach().contiguous()
    gathered = [torch.empty_like(mine) for _ in range(dist.get_world_size())]
    dist.all_gather(gathered, mine)
    if not all(torch.equal(mine, other) for other in gathered):
        raise RuntimeError(f"gate differs across ranks after epoch {epoch}")


def scaling_config(cfg: TrainConfig) -> ScalingConfig:
    """`--workers` ranks of `--cpus-per-worker` CPUs; with `--gpu`, each also asks for
    `--gpus-per-worker` GPUs (a fraction lets several runs of a sweep share one)."""
    cpus = {"CPU": cfg.cpus_per_worker}
    if not cfg.gpu:
        return ScalingConfig(num_workers=cfg.workers, resources_per_worker=cpus)
    return ScalingConfig(num_workers=cfg.workers, use_gpu=True,
                         resources_per_worker={**cpus, "GPU": cfg.gpus_per_worker})


def placement_attempts() -> int:
    """Ray Train retries placing its workers forever by default, one attempt per worker-group
    start timeout (60 s): on a cluster whose CPUs a leaked placement group holds, a run would
    wait for ever. Bounded, it fails after CSG_RESOURCE_WAIT_S (default 30 min) with Ray's
    startup-timeout error."""
    attempt_s = float(os.environ.get("RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S", 60))
    return max(1, math.ceil(resource_wait_s() / attempt_s))


def resource_wait_s() -> float:
    return float(os.environ.get("CSG_RESOURCE_WAIT_S", 1800))


def unplaced(exc: BaseException, cfg: TrainConfig) -> str | None:
    """What to tell the user when `fit` gave up placing the workers (placement_attempts)."""
    from ray.train.v2._internal.exceptions import WorkerGroupStartupTimeoutError

    if not isinstance(getattr(exc, "controller_failure", None), WorkerGroupStartupTimeoutError):
        return None
    each = scaling_config(cfg).resources_per_worker
    return (f"{cfg.workers} worker(s) of {each} each could not be placed within {resource_wait_s():g} s "
            f"(CSG_RESOURCE_WAIT_S): "
            f"other jobs or a leaked placement group hold the cluster; see `ray status`")


def fit(cfg: TrainConfig, run_id: str, callbacks=(), progress_queue=None) -> tuple[dict, ray.train.Result]:
    """Run one training under Ray Train; returns rank 0's summary and the Ray result.
    `callbacks` are Ray Train callbacks (a Tune trial passes the one that reports to Tune);
    rank 0 sends its epochs to `progress_queue` when one is given. Ray Train's own lines show
    with `cfg.verbose` only; its warnings and errors always do."""
    trainer = TorchTrainer(
        train_loop_per_worker,
        train_loop_config={"cfg": cfg.to_dict(), "run_id": run_id, "progress": progress_queue},
        datasets={ray_data.DATASET: ray_data.training_dataset(cfg)} if cfg.ingest == "ray-data" else None,
        torch_config=TorchConfig(backend="nccl" if cfg.gpu else "gloo"),
        scaling_config=scaling_config(cfg),
        run_config=RunConfig(
            name=run_id,
            storage_path=cfg.storage_path,
            checkpoint_config=CheckpointConfig(
                num_to_keep=cfg.keep_checkpoints or None,
                checkpoint_score_attribute=run_record.SCORE,
                checkpoint_score_order="max",
            ),
            failure_config=FailureConfig(max_failures=cfg.max_failures,
                                         controller_failure_limit=placement_attempts()),
            callbacks=list(callbacks),
            logging_config=LoggingConfig(log_level="INFO" if cfg.verbose else "WARNING"),
        ),
    )
    start = time.time()
    result = trainer.fit()
    summary = dict(result.return_value or {})
    summary["wall_time_s"] = time.time() - start
    return summary, result
