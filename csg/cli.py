"""The command-line face of TrainConfig, shared by every training job.

Each config field becomes `--field-name`; a `--preset` supplies the paper's defaults and
any option given on the command line overrides it.
"""
from __future__ import annotations

import argparse
import dataclasses
import sys
import typing

from csg.config import (
    CHOICES,
    DATASET_PRESETS,
    PRESETS,
    ConfigError,
    TrainConfig,
    validate,
)
from csg.data import DatasetInfo
from csg.store.fixed_gate import with_fixed_gate_from

HELP = {
    "dataset": "data set: the embedded digits (8x8) or digits-scenes (32x32, with object masks), CIFAR "
               "pickles, or an ImageFolder tree",
    "data": "data directory (CIFAR: holds cifar-10-batches-py/; imagefolder: holds train/ and val/)",
    "num_classes": "expected class count; an error if the data disagrees",
    "image_size": "training and evaluation resolution for imagefolder",
    "augment": "imagefolder training augmentation: imagenet (RandomResizedCrop + flip; evaluation resizes to "
               "size*256/224 and center-crops), cifar (whole image, random crop padded by 1/8, flip), crop "
               "(cifar without the flip: digits, text), none; the others evaluate the whole image resized. "
               "Unset: cifar below 64 px, imagenet from 64 px",
    "decode": "imagefolder training images: uint8 (torchvision's libjpeg-turbo decoder, augmentation on uint8, "
              "float on the device: about 2x the images per loader core, bench/ingest.py), pil (PIL and float "
              "transforms, torchvision's reference path) or gpu (with --gpu: each batch's JPEGs decoded together "
              "on the GPU, cropped and flipped there; the loader only reads files); evaluation always uses PIL. "
              "Unset, uint8",
    "ingest": "how imagefolder training images reach the workers: loader (a DataLoader in each worker, "
              "--loader-workers processes) or ray-data (Ray Data tasks on any node with CPUs decode and "
              "augment, each worker takes an equal part: CPU-only nodes can decode for GPU nodes)",
    "model": "network: resnet20/32/56/110 (K = 64), alexnet (256), resnet18/34 (512), resnet50/101/152 (2048), "
             "torchvision:NAME (any torchvision classifier), timm:NAME (with the timm extra), or "
             "package.module:callable (callable(num_classes) -> nn.Module, importable on every node)",
    "layer": "module whose output the gate multiplies; unset, the last feature map before global pooling",
    "weights": "local state-dict file to initialise the model (never downloaded); a head of another class "
               "count is replaced",
    "method": "csg (class-specific gate) or std (baseline, no gate)",
    "scheme": "alternate (Algorithm 1: whole epochs on one path) or joint (both paths every batch)",
    "gate": "learned G, or fixed (Appendix E: m1 filters per class, m2 shared)",
    "m1": "fixed gate: filters each class monopolizes",
    "m2": "fixed gate: filters shared by all classes",
    "fixed_gate_from": "results root with a gate_stats table: fixed gate, m1 and m2 from its seed statistics",
    "epochs": "training epochs",
    "batch_size": "global batch size, split evenly across workers",
    "optimizer": "sgd (with --momentum) or adam",
    "lr": "initial learning rate of the STD path (and of the joint scheme)",
    "csg_lr": "initial learning rate of the CSG path, G included; unset, --lr",
    "momentum": "SGD momentum",
    "nesterov": "Nesterov momentum for SGD",
    "weight_decay": "weight decay on network weights (never on G)",
    "lr_schedule": "per-epoch schedule: multistep (x0.1 at 40/60/80%% of epochs), cosine, constant",
    "warmup": "STD epochs before the first CSG epoch",
    "period": "CSG schedule period in epochs",
    "csg_epochs": "CSG epochs per period: epoch %% period >= period - csg_epochs (1 <= csg_epochs <= period)",
    "lambda1": "weight of the CSG-path cross-entropy",
    "lambda2": "weight of the sparsity term d(||G||_1, g)",
    "g_density": "sparsity target g/(C*K), in [1/C, 1]; unset, 1/C (g = K)",
    "psi": "norm psi in d = psi(ReLU(||G||_1 - g))",
    "std_frozen": "STD path: modules not trained, comma-separated (a built-in model's stage: it and every "
                  "stage before it)",
    "csg_frozen": "CSG path: modules not trained, comma-separated (a built-in model's stage: it and every "
                  "stage before it)",
    "seed": "random seed of the run",
    "workers": "Ray Train workers (DDP ranks)",
    "gpu": "GPUs for the workers, NCCL backend (gloo on CPU otherwise)",
    "gpus_per_worker": "with --gpu: GPUs each worker asks Ray for (a fraction packs several on one GPU)",
    "cpus_per_worker": "CPUs each worker asks Ray for; its torch threads are set to match",
    "loader_workers": "DataLoader processes per worker",
    "amp": "mixed precision of the network: bf16, fp16 (with loss scaling) or off; G, the sparsity term and "
           "the projection stay fp32; unset, bf16 on a GPU that supports it, off otherwise",
    "channels_last": "channels-last memory format for the model and its inputs (faster convolutions on GPUs)",
    "compile": "torch.compile the model (the first epoch pays the compilation)",
    "skip_bad_images": "skip (and count, in the epochs table) ImageFolder files that cannot be decoded",
    "results": "results root: a local path or a pyarrow filesystem URI",
    "storage": "where each run's checkpoints go, as <storage>/<run_id>; unset, <results>/checkpoints "
               "(so <results>/checkpoints/<run_id>)",
    "keep_checkpoints": "best checkpoints kept by test accuracy (the latest is kept too); 0 keeps all",
    "max_failures": "worker-group restarts allowed; each resumes from the latest checkpoint",
    "run_id": "run id (unset: generated); rerunning an id resumes it and replaces its rows",
    "mi_neighbors": "k of the k-NN mutual-information estimator",
    "verbose": "show Ray's own lines (reports, checkpoints, worker groups) and a progress line per epoch",
}


class DefaultsFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Each option's default once, as it applies: not appended where the help already says
    what an unset option means (a default of None) or names its default itself."""

    def _get_help_string(self, action):
        if action.default is None or "%(default)" in (action.help or ""):
            return action.help
        return super()._get_help_string(action)


class OneLineParser(argparse.ArgumentParser):
    """Bad input is one line naming the problem, exit status 2. Options are named in full: a
    prefix (`--result` for `--results`) is an error, not a guess."""

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("allow_abbrev", False)
        kwargs.setdefault("formatter_class", DefaultsFormatter)
        super().__init__(*args, **kwargs)

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message}\n")


def summary(doc: str) -> str:
    """A script's docstring's first paragraph on one line: its `--help` description, whole."""
    return " ".join(doc.split("\n\n")[0].split())


def at_least(low: int):
    """An argparse type: an integer no smaller than `low` (else a one-line error naming the flag)."""
    def parse(text: str) -> int:
        value = int(text)
        if value < low:
            raise argparse.ArgumentTypeError(f"must be at least {low} (got {value})")
        return value

    parse.__name__ = "int"  # argparse names the type in "invalid int value"
    return parse


def get_args_parser(default_preset: str, description: str, exclude=()) -> argparse.ArgumentParser:
    """Every TrainConfig field as a flag, except those in `exclude` (a job that sets them itself)."""
    parser = OneLineParser(description=description)
    parser.add_argument("--preset", choices=sorted(PRESETS), default=default_preset,
                        help="the paper's settings (Appendix B); any option below overrides them, and "
                             "--help shows the values under the preset given; by default the recipe of "
                             "--dataset (%(default)s when --dataset is not given)")
    hints = typing.get_type_hints(TrainConfig)
    for f in dataclasses.fields(TrainConfig):
        if f.name in exclude or f.name == "preset":
            continue
        flag = "--" + f.name.replace("_", "-")
        kind = next((t for t in typing.get_args(hints[f.name]) if t is not type(None)), hints[f.name])
        if kind is bool:
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, default=f.default, help=HELP[f.name])
        else:
            parser.add_argument(flag, type=kind, default=f.default, choices=CHOICES.get(f.name),
                                help=HELP[f.name])
    return parser


def training_main(default_preset: str, description: str, argv=None) -> dict:
    """A training job: parse and validate, train, and turn a failed run into one line, exit 1."""
    from csg.distributed.driver import train

    parser = get_args_parser(default_preset, description)
    cfg, info, _ = parse_config(parser, argv)
    return run_or_exit(parser, train, cfg, info)


def run_or_exit(parser: argparse.ArgumentParser, launch, *args):
    """Call `launch`; bad storage or run ids exit 2, failed runs and refused writes exit 1, an
    interrupted run exits 130 (as a shell reports Ctrl-C), each with one line."""
    from csg.distributed.cluster import ClusterUnresponsive, StorageError
    from csg.distributed.driver import RunError, RunInterrupted
    from csg.store.results import StoreError

    try:
        return launch(*args)
    except (StorageError, ConfigError) as exc:
        parser.error(str(exc))
    except (RunError, StoreError, ClusterUnresponsive) as exc:
        parser.exit(130 if isinstance(exc, RunInterrupted) else 1, f"{parser.prog}: error: {exc}\n")


def parse_config(parser: argparse.ArgumentParser, argv=None, extra=()) -> tuple[TrainConfig, DatasetInfo, dict]:
    """Apply the preset, parse, validate; any problem exits 2 with one line before Ray starts.
    Returns the config, its data set, and the parsed options named in `extra` (not config fields)."""
    cfg, others = parse_options(parser, argv, extra)
    return (*check_config(parser, cfg), others)


def parse_options(parser: argparse.ArgumentParser, argv=None, extra=()) -> tuple[TrainConfig, dict]:
    """Apply the preset and parse, reading nothing: the config, not yet validated, and the
    options named in `extra`."""
    argv = sys.argv[1:] if argv is None else argv
    # The preset first, without --help, so that help shows the values the preset gives.
    known, _ = parser.parse_known_args([arg for arg in argv if arg not in ("-h", "--help")])
    preset = known.preset if _given(argv, "--preset") else _preset_for(known.dataset, argv, known.preset)
    parser.set_defaults(**{k: v for k, v in PRESETS[preset].items() if k in vars(known) and k not in extra})
    args = vars(parser.parse_args(argv))
    args["preset"] = preset
    others = {name: args.pop(name) for name in extra}
    return TrainConfig(**args), others


def check_config(parser: argparse.ArgumentParser, cfg: TrainConfig) -> tuple[TrainConfig, DatasetInfo]:
    """Validate (this may read, or download, the data set); a problem exits 2 with one line."""
    try:
        cfg, fixed_gate_classes = with_fixed_gate_from(cfg)
        return cfg, validate(cfg, fixed_gate_classes)
    except ConfigError as exc:
        parser.error(str(exc))


def sweep_or_exit(parser: argparse.ArgumentParser, cfg: TrainConfig, args: dict, make_space):
    """A sweep job's start: `--resume` continues the saved sweep with its own config, so the
    command line's data set is never read; else the config is checked and the sweep launched."""
    from csg.distributed import sweeps

    if args["resume"]:
        return run_or_exit(parser, sweeps.resume_sweep, cfg.storage_path, args["sweep_id"], make_space)
    cfg, info = check_config(parser, cfg)
    return run_or_exit(parser, sweeps.launch_sweep, cfg, info, args, make_space)


def _given(argv, flag: str) -> bool:
    return any(arg == flag or arg.startswith(flag + "=") for arg in argv)


def _preset_for(dataset: str, argv, default: str) -> str:
    """The recipe of a --dataset given on the command line: the job's own preset when it has
    that data set, else the data set's (DATASET_PRESETS; the job's for one without a recipe)."""
    if not _given(argv, "--dataset") or PRESETS[default]["dataset"] == dataset:
        return default
    return DATASET_PRESETS.get(dataset, default)
