"""A checkpoint is one dict: unwrapped model state, G, optimizers, schedulers, the fp16 loss
scale, epoch, RNG state, the epoch history so far, and the config that produced it."""
from __future__ import annotations

from pathlib import Path

import torch

STATE_FILE = "state.pt"
SNAPSHOT_FILE = "checkpoint_manager_snapshot.json"  # Ray Train's record of its checkpoints


def save(folder: Path, model, gate, optimizers, schedulers, cfg, epoch: int, history: list,
         scaler: dict | None = None) -> Path:
    state = {
        "scaler": scaler or {},
        "model": model.state_dict(),
        "gate": gate.state_dict() if gate is not None else None,
        "optimizers": {k: o.state_dict() for k, o in optimizers.items()},
        "schedulers": {k: s.state_dict() for k, s in schedulers.items()},
        "epoch": epoch,
        "history": history,
        "config": cfg.to_dict(),
        "rng": torch.get_rng_state(),
    }
    path = Path(folder) / STATE_FILE
    torch.save(state, path)
    return path


def read(folder: Path) -> dict:
    path = Path(folder) / STATE_FILE
    if not path.is_file():
        raise FileNotFoundError(f"no {STATE_FILE} in checkpoint {folder}")
    return torch.load(path, map_location="cpu", weights_only=True)


def load(folder: Path, model, gate, optimizers, schedulers, cfg) -> dict:
    """Restore everything in place; a checkpoint of another model or class count is refused."""
    state = read(folder)
    saved = state["config"]
    for key in ("model", "method", "gate", "scheme"):
        if saved[key] != getattr(cfg, key):
            raise ValueError(f"checkpoint {folder} has {key}={saved[key]!r}, this run has {getattr(cfg, key)!r}")
    saved_classes = state["model"]["fc.weight"].shape[0]
    if saved_classes != model.num_classes:
        raise ValueError(f"checkpoint {folder} has {saved_classes} classes, this run has {model.num_classes}")
    model.load_state_dict(state["model"])
    if gate is not None:
        gate.load_state_dict(state["gate"])
    for key, optimizer in optimizers.items():
        optimizer.load_state_dict(state["optimizers"][key])
    for key, scheduler in schedulers.items():
        scheduler.load_state_dict(state["schedulers"][key])
    torch.set_rng_state(state["rng"])
    return state


def latest_checkpoint(storage: str, run_name: str) -> Path:
    """A Ray Train run's checkpoint with the highest epoch, as a local directory (downloaded
    when the storage is remote): how a run stopped from outside is picked up again."""
    from pyarrow import fs as pafs
    from ray.train import Checkpoint

    from csg.store.results import filesystem_of

    filesystem, base = filesystem_of(storage)
    entries = filesystem.get_file_info(pafs.FileSelector(f"{base}/{run_name}", allow_not_found=True))
    folders = [e.path for e in entries if e.type == pafs.FileType.Directory and e.base_name.startswith("checkpoint_")]
    if not folders:
        raise FileNotFoundError(f"no checkpoint of run {run_name} under {storage}")
    local = [Path(f) if isinstance(filesystem, pafs.LocalFileSystem)
             else Path(Checkpoint(f, filesystem).to_directory()) for f in folders]
    return max(local, key=lambda folder: read(folder)["epoch"])


def latest_registered(storage: str, run_name: str) -> tuple[str, int] | None:
    """The checkpoint Ray Train would resume `run_name` from, as (its directory, its epoch):
    the latest in Ray's checkpoint-manager snapshot, which lists only finished uploads."""
    import json

    from csg.store.results import filesystem_of

    filesystem, base = filesystem_of(storage)
    try:
        with filesystem.open_input_stream(f"{base}/{run_name}/{SNAPSHOT_FILE}") as stream:
            latest = json.loads(stream.read()).get("latest_checkpoint_result")
    except FileNotFoundError:
        return None
    if not latest:
        return None
    return f"{storage.rstrip('/')}/{run_name}/{latest['checkpoint_dir_name']}", latest["metrics"]["epoch"]


def restore_model(folder: Path, state: dict | None = None):
    """(model in eval mode, its TrainConfig, its DatasetInfo) from a checkpoint directory
    (or from its `state`, already read)."""
    from csg.config import TrainConfig
    from csg.data import describe
    from csg.method.models import build_model

    state = read(folder) if state is None else state
    cfg = TrainConfig.from_saved(state["config"])
    info = describe(cfg.dataset, cfg.data)
    model = build_model(cfg.model, info.num_classes, info.in_channels, info.mean, info.std)
    model.load_state_dict(state["model"])
    return model.eval(), cfg, info
