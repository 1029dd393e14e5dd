"""One validated config for every training run, and the paper's presets (Appendix B)."""
from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass
from pathlib import Path

from csg import data as data_lib
from csg.method.gate import PSI_CHOICES
from csg.method.precision import AMP_CHOICES, compile_unavailable


class ConfigError(ValueError):
    """One line naming the option and what is allowed."""


@dataclass
class TrainConfig:
    # what to train
    dataset: str = "digits"
    data: str | None = None
    num_classes: int | None = None
    image_size: int = 224
    augment: str | None = None  # imagefolder: imagenet | cifar | crop | none; default by image size
    decode: str | None = None  # imagefolder training: uint8 | pil | gpu; default uint8
    ingest: str = "loader"  # loader (a DataLoader per worker) | ray-data (imagefolder only)
    model: str = "resnet20"
    layer: str | None = None  # the gated layer; default: the last feature map before global pooling
    weights: str | None = None
    # how to train
    method: str = "csg"  # csg | std
    scheme: str = "alternate"  # alternate | joint (csg only)
    gate: str = "learned"  # learned | fixed (Appendix E)
    m1: int = 6
    m2: int = 4
    fixed_gate_from: str | None = None  # results root whose gate_stats set m1, m2
    epochs: int = 200
    batch_size: int = 256
    optimizer: str = "sgd"  # sgd | adam
    lr: float = 0.1
    csg_lr: float | None = None  # defaults to lr
    momentum: float = 0.9
    nesterov: bool = True
    weight_decay: float = 1e-4
    lr_schedule: str = "multistep"  # multistep | cosine | constant
    warmup: int = 0
    period: int = 3
    csg_epochs: int = 1
    lambda1: float = 1.0
    lambda2: float = 0.01
    g_density: float | None = None  # defaults to 1/C: at most one class per filter on average
    psi: str = "l1"
    std_frozen: str = "none"
    csg_frozen: str = "none"
    seed: int = 0
    # where and how much
    workers: int = 1
    gpu: bool = False
    gpus_per_worker: float = 1.0
    cpus_per_worker: int = 1
    loader_workers: int = 0
    amp: str | None = None  # bf16 | fp16 | off; default bf16 on a GPU that has it, off elsewhere
    channels_last: bool = False
    compile: bool = False
    skip_bad_images: bool = False
    results: str = "results"
    storage: str | None = None  # Ray Train checkpoint storage; defaults to <results>/checkpoints
    keep_checkpoints: int = 2
    max_failures: int = 0
    run_id: str | None = None
    mi_neighbors: int = 3
    verbose: bool = False  # Ray's own per-report and worker-group lines, and every epoch's line
    preset: str | None = None  # the PRESETS entry the options started from (set by --preset, not a flag)

    @property
    def csg_learning_rate(self) -> float:
        return self.lr if self.csg_lr is None else self.csg_lr

    @property
    def storage_path(self) -> str:
        return self.storage or f"{self.results.rstrip('/')}/checkpoints"

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_saved(cls, saved: dict) -> "TrainConfig":
        """A config as a checkpoint or sweep saved it, older names included: runs saved before
        `augment` named their ImageFolder augmentation `train_crop` (resized or padded)."""
        saved = dict(saved)
        legacy_crop = saved.pop("train_crop", None)
        if legacy_crop is not None and saved.get("augment") is None:
            saved["augment"] = {"resized": "imagenet", "padded": "cifar"}[legacy_crop]
        return cls(**saved)


PRESETS: dict[str, dict] = {
    "cifar10-resnet20": dict(
        dataset="cifar10", model="resnet20", batch_size=256, optimizer="sgd", lr=0.1,
        momentum=0.9, epochs=200, warmup=0, period=3, csg_epochs=1, loader_workers=2,
    ),
    "imagenet-resnet18": dict(
        dataset="imagefolder", model="resnet18", batch_size=256, optimizer="sgd", lr=0.1,
        momentum=0.9, epochs=120, warmup=0, period=3, csg_epochs=1, workers=4, image_size=224,
        loader_workers=8,
        g_density=0.1,  # Table 1: interval [0.001, 0.1]
    ),
    "voc-resnet152": dict(
        dataset="imagefolder", model="resnet152", batch_size=32, optimizer="adam", lr=1e-5,
        csg_lr=1e-3, weight_decay=0.0, epochs=150, loader_workers=4, warmup=10, period=3, csg_epochs=2,
        std_frozen="layer2", csg_frozen="layer3", image_size=128, augment="cifar",
        g_density=0.2,  # Table 1: interval [0.1667, 0.2]
        lambda2=1e-3,  # the authors' VOC code
    ),
    # One's own ImageFolder tree, no paper behind it: a ResNet-18 at ImageNet's resolution with
    # a schedule short enough for a few thousand images (cosine, no step points to tune), and
    # the augmentation that fits the size (--augment). Chosen by `--dataset imagefolder`.
    "imagefolder-resnet18": dict(
        dataset="imagefolder", model="resnet18", batch_size=64, optimizer="sgd", lr=0.05,
        momentum=0.9, epochs=60, warmup=0, period=3, csg_epochs=1, image_size=224, loader_workers=4,
        lr_schedule="cosine",
    ),
    # The embedded default: real 8x8 handwritten digits, minutes on a laptop CPU.
    # 30 epochs is ~23 CSG-path optimizer steps per CSG epoch x 10; lambda2 is raised so the
    # L1-density reaches its interval within them (Appendix A: lambda2 "relatively large"),
    # but no further: at 0.5 the gate's columns went one-hot within the second CSG epoch and
    # 3 of 5 seeds left a class without any filter; 0.15 spreads the split over several CSG
    # epochs and left none without in 5 seeds (bench/gate_balance.py, docs/sweeps.md "Gate balance on digits").
    "digits-resnet20": dict(
        dataset="digits", model="resnet20", batch_size=64, optimizer="sgd", lr=0.05,
        momentum=0.9, epochs=30, warmup=0, period=3, csg_epochs=1, lambda2=0.15,
        lr_schedule="cosine",
    ),
    # Digits on a 32 x 32 canvas with distractors and object masks (csg/data/scenes.py), for
    # localization: the same recipe, fewer epochs (each costs about 16 times a digits epoch).
    "digits-scenes-resnet20": dict(
        dataset="digits-scenes", model="resnet20", batch_size=64, optimizer="sgd", lr=0.05,
        momentum=0.9, epochs=15, warmup=0, period=3, csg_epochs=1, lambda2=0.3, workers=2,
        lr_schedule="cosine",
    ),
}

# The recipe `--dataset NAME` brings when no --preset is given and the job's own does not fit.
DATASET_PRESETS = {"digits": "digits-resnet20", "digits-scenes": "digits-scenes-resnet20",
                   "cifar10": "cifar10-resnet20", "imagefolder": "imagefolder-resnet18"}


def preset_changes(cfg: TrainConfig) -> dict:
    """The options of `cfg` that differ from its preset (TrainConfig's defaults where the preset
    is silent): what the start line lists, so a run says which recipe it followed and how not."""
    if cfg.preset is None:
        return {}
    preset = PRESETS[cfg.preset]
    return {f.name: getattr(cfg, f.name) for f in dataclasses.fields(cfg)
            if f.name != "preset" and getattr(cfg, f.name) != preset.get(f.name, f.default)}


CHOICES = {
    "dataset": data_lib.DATASET_CHOICES,
    "augment": data_lib.AUGMENTS,
    "decode": data_lib.DECODES,
    "ingest": ("loader", "ray-data"),
    "method": ("csg", "std"),
    "scheme": ("alternate", "joint"),
    "gate": ("learned", "fixed"),
    "optimizer": ("sgd", "adam"),
    "lr_schedule": ("multistep", "cosine", "constant"),
    "psi": PSI_CHOICES,
    "amp": AMP_CHOICES,
}


def validate(cfg: TrainConfig, fixed_gate_classes: int | None = None) -> data_lib.DatasetInfo:
    """Check every option against the others and the data; raise ConfigError on the first problem.

    Reads only metadata (class folders, pickle headers), except that CIFAR-10/100 is downloaded
    into --data (default ./data) when it is absent and the network allows (a failed download
    leaves nothing behind). `fixed_gate_classes`
    is the class count of the gate_stats a --fixed-gate-from gate was sized from."""
    _check_values(cfg)
    _check_files(cfg)
    _check_spec(cfg)  # before the data, which may mean a download
    try:
        data_lib.prepare(cfg.dataset, cfg.data or data_lib.DEFAULT_DATA_ROOT)
        info = data_lib.describe(cfg.dataset, cfg.data or data_lib.DEFAULT_DATA_ROOT)
    except data_lib.DataError as exc:
        raise ConfigError(str(exc)) from None
    _check_against_data(cfg, info, _check_model(cfg, info), fixed_gate_classes)
    _check_device(cfg)
    return info


def _check_values(cfg: TrainConfig) -> None:
    """Each option alone: its choices, its range."""
    for name, allowed in CHOICES.items():
        value = getattr(cfg, name)
        if value is not None and value not in allowed:  # None: the default that fits the data or device
            _fail(name, f"must be one of {', '.join(allowed)}", value)
    for name in ("epochs", "batch_size", "period", "workers", "cpus_per_worker", "image_size", "mi_neighbors"):
        if getattr(cfg, name) < 1:
            _fail(name, "must be >= 1", getattr(cfg, name))
    for name in ("warmup", "loader_workers", "keep_checkpoints", "max_failures", "weight_decay", "momentum"):
        if getattr(cfg, name) < 0:
            _fail(name, "must be >= 0", getattr(cfg, name))
    for name in ("lr", "csg_learning_rate", "gpus_per_worker"):
        if getattr(cfg, name) <= 0:
            _fail(name.replace("_learning_rate", "_lr"), "must be > 0", getattr(cfg, name))
    for name in ("lambda1", "lambda2"):
        if getattr(cfg, name) < 0:
            _fail(name, "must be >= 0", getattr(cfg, name))
    if not 1 <= cfg.csg_epochs <= cfg.period:
        _fail("csg_epochs", f"must be between 1 and --period ({cfg.period})", cfg.csg_epochs)


def _check_files(cfg: TrainConfig) -> None:
    if cfg.weights is not None and not Path(cfg.weights).is_file():
        _fail("weights", "file does not exist", cfg.weights)
    for name in ("augment", "decode"):
        if getattr(cfg, name) is not None and cfg.dataset != "imagefolder":
            _fail(name, "applies to imagefolder only (the other data sets have their own)", getattr(cfg, name))
    if cfg.ingest == "ray-data" and cfg.dataset != "imagefolder":
        _fail("ingest", "ray-data reads imagefolder trees and their shards only", cfg.ingest)
    if cfg.decode == "gpu":
        if not cfg.gpu:
            _fail("decode", "gpu decodes on the workers' GPUs: add --gpu", cfg.decode)
        if cfg.skip_bad_images or cfg.ingest == "ray-data":
            _fail("decode", "gpu cannot skip bad images or decode in Ray Data's tasks: use --decode uint8 there",
                  cfg.decode)
    if cfg.data is not None and "://" not in cfg.data and not Path(cfg.data).is_dir():  # a URI: shards
        _fail("data", "is not a directory" if Path(cfg.data).exists() else "directory does not exist", cfg.data)


def _check_spec(cfg: TrainConfig) -> None:
    """The model spec resolves to a factory: a name, an installed package, an importable module."""
    from csg.method.models import ModelSpecError, model_factory

    try:
        model_factory(cfg.model)
    except ModelSpecError as exc:
        _fail("model", str(exc), cfg.model)


def _check_model(cfg: TrainConfig, info: data_lib.DatasetInfo) -> int:
    """Build the model once, on the CPU: its spec resolves, its weights and gated layer fit,
    the frozen modules are its own. Returns K, the gated channels."""
    from csg.method.attach import AttachError
    from csg.method.models import ModelSpecError, WeightsError, build_model

    try:
        model = build_model(cfg.model, info.num_classes, info.in_channels, info.mean, info.std, cfg.weights,
                            cfg.layer)
    except ModelSpecError as exc:
        _fail("model", str(exc), cfg.model)
    except WeightsError as exc:
        _fail("weights", str(exc), cfg.weights)
    except AttachError as exc:
        _fail("layer" if cfg.layer else "model", str(exc), cfg.layer or cfg.model)
    for name in ("std_frozen", "csg_frozen"):
        try:
            model.frozen_prefixes(getattr(cfg, name))
        except ValueError as exc:
            _fail(name, str(exc), getattr(cfg, name))
    return model.num_filters


def _check_against_data(cfg: TrainConfig, info: data_lib.DatasetInfo, K: int, fixed_gate_classes: int | None) -> None:
    if cfg.num_classes is not None and cfg.num_classes != info.num_classes:
        _fail("num_classes", f"{cfg.dataset} at {cfg.data} has {info.num_classes} classes", cfg.num_classes)
    if cfg.batch_size > info.train_size:
        _fail("batch_size", f"must be <= the training set size ({info.train_size})", cfg.batch_size)
    if cfg.batch_size < cfg.workers:
        _fail("batch_size", f"must be >= --workers ({cfg.workers}), it is split across them", cfg.batch_size)
    C = info.num_classes
    if cfg.g_density is not None and not 1 / C - 1e-12 <= cfg.g_density <= 1:
        _fail("g_density", f"must be in [1/C, 1] = [{1 / C:.6g}, 1] so that g >= K", cfg.g_density)
    if fixed_gate_classes is not None and fixed_gate_classes != C:
        _fail("fixed_gate_from", f"its gate_stats cover {fixed_gate_classes} classes, this data set has {C}",
              cfg.fixed_gate_from)
    if cfg.method == "csg" and cfg.gate == "fixed" and (cfg.m1 < 1 or cfg.m2 < 0 or cfg.m1 * C + cfg.m2 > K):
        _fail("m1", f"need m1 >= 1, m2 >= 0 and m1*C + m2 <= K = {K} for C = {C}", f"m1={cfg.m1}, m2={cfg.m2}")


def _check_device(cfg: TrainConfig) -> None:
    import torch

    if cfg.gpu and not torch.cuda.is_available() and "RAY_ADDRESS" not in os.environ:
        _fail("gpu", "no CUDA device here and no cluster (RAY_ADDRESS) to find one on", True)
    if cfg.compile and (not cfg.gpu or torch.cuda.is_available()):  # else the workers' nodes decide
        reason = compile_unavailable("cuda" if cfg.gpu else "cpu")
        if reason:
            _fail("compile", f"{reason}; run without --compile", True)


def with_absolute_paths(cfg: TrainConfig) -> TrainConfig:
    """Workers do not share the driver's working directory: pin local paths before launch."""
    def absolute(path):
        return path if path is None or "://" in path else str(Path(path).expanduser().absolute())

    return dataclasses.replace(
        cfg, data=absolute(cfg.data), weights=absolute(cfg.weights),
        results=absolute(cfg.results), storage=absolute(cfg.storage),
    )


def resolved_g_density(cfg: TrainConfig, num_classes: int) -> float:
    return 1.0 / num_classes if cfg.g_density is None else cfg.g_density


def _fail(option: str, allowed: str, got) -> None:
    raise ConfigError(f"--{option.replace('_', '-')}: {allowed} (got {got})")
