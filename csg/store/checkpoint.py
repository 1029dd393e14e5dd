"""A checkpoint is one dict: unwrapped model state, G, optimizers, schedulers, the fp16 loss
scale, epoch, RNG state, the epoch history so far, and the config that produced it."""
from __future__ import annotations

import time
from pathlib import Path

import torch

STATE_FILE = "state.pt"
SNAPSHOT_FILE = "checkpoint_manager_snapshot.json"  # Ray Train's record of its checkpoints


def save(folder: Path, model, gate, optimizers, schedulers, cfg, epoch: int, history: list,
         scaler: dict | None = None) -> Path:
    state = {
        "scaler": scaler or {},
        "model": model.state_dict(),
        "num_classes": model.num_classes,
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
    for key in ("model", "layer", "method", "gate", "scheme"):
        if saved.get(key) != getattr(cfg, key):
            raise ValueError(f"checkpoint {folder} has {key}={saved.get(key)!r}, this run has {getattr(cfg, key)!r}")
    saved_classes = state.get("num_classes") or state["model"]["fc.weight"].shape[0]  # before: the head's rows
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


def latest_registered(storage: str, run_name: str, attempts: int = 10) -> tuple[str, int] | None:
    """The checkpoint Ray Train would resume `run_name` from, as (its directory, its epoch):
    the latest in Ray's checkpoint-manager snapshot, which lists only finished uploads.

    Ray rewrites the snapshot in place, so a reader can find it empty or cut short while a
    run reports (or just after its driver was killed): read again for up to `attempts` x
    0.1 s, then None, as for a run with no checkpoint yet."""
    import json

    from csg.store.results import filesystem_of

    filesystem, base = filesystem_of(storage)
    for attempt in range(attempts):
        try:
            with filesystem.open_input_stream(f"{base}/{run_name}/{SNAPSHOT_FILE}") as stream:
                latest = json.loads(stream.read()).get("latest_checkpoint_result")
            break
        except FileNotFoundError:
            return None
        except ValueError:  # not JSON yet: caught mid-write
            if attempt == attempts - 1:
                return None
            time.sleep(0.1)
    if not latest:
        return None
    return f"{storage.rstrip('/')}/{run_name}/{latest['checkpoint_dir_name']}", latest["metrics"]["epoch"]


def saved_config(state: dict):
    """The TrainConfig a checkpoint state was written under (older option names included)."""
    from csg.config import TrainConfig

    return TrainConfig.from_saved(state["config"])


def saved_gate(state: dict):
    """The (C, K) float64 gate a checkpoint state holds, learned or fixed; None for an STD run."""
    if not state.get("gate"):
        return None
    tensor = state["gate"].get("weight", state["gate"].get("fixed"))
    return tensor.detach().cpu().numpy().astype("float64")


def restore_model(folder: Path, state: dict | None = None):
    """(model in eval mode, its TrainConfig, its DatasetInfo) from a checkpoint directory
    (or from its `state`, already read)."""
    from csg.data import describe
    from csg.method.models import build_model

    state = read(folder) if state is None else state
    cfg = saved_config(state)
    info = describe(cfg.dataset, cfg.data)
    model = build_model(cfg.model, info.num_classes, info.in_channels, info.mean, info.std, layer=cfg.layer)
    model.load_state_dict(state["model"])
    return model.eval(), cfg, info


def evaluation_split(cfg, split: str = "test"):
    """A run's data split ("train" or "test") as its model is evaluated on it."""
    from csg import data as data_lib

    return data_lib.evaluation_set(cfg.dataset, cfg.data, split, cfg.image_size, cfg.skip_bad_images, cfg.augment)


def checkpoint_split(folder: Path, split: str = "test"):
    """The split of the run that wrote checkpoint `folder`, read from its config alone."""
    return evaluation_split(saved_config(read(folder)), split)


def checkpoint_features(folder: Path, split: str = "test", all_layers: bool = False, bounds=None,
                        batch_size: int = 256, state: dict | None = None) -> dict:
    """`gap_features` of a checkpoint's model over its split (items `bounds` = (start, stop)
    only, when given), on the GPU when there is one; the model goes back to the CPU after."""
    from torch.utils.data import DataLoader, Subset

    from csg.data import collate_skipping_bad
    from csg.method.features import default_device, gap_features

    model, cfg, _ = restore_model(folder, state)
    dataset = evaluation_split(cfg, split)
    if bounds is not None:
        dataset = Subset(dataset, range(*bounds))
    device = default_device()
    loader = DataLoader(dataset, batch_size=batch_size, collate_fn=collate_skipping_bad)
    features = gap_features(model.to(device), loader, device, all_layers)
    model.cpu()
    return features
