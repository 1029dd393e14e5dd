"""Sweep the CSG hyper-parameters (period, csg_epochs, lambda1, lambda2, g, psi) with Ray Tune.

    python jobs/tune_cifar.py --data ~/data/cifar --num-samples 32            # CIFAR-10 ResNet-20
    python jobs/tune_cifar.py --dataset digits --epochs 6 --num-samples 4     # minutes on a laptop
    python jobs/tune_cifar.py --resume --sweep-id <id>                         # after an interruption

Every trial is a CSG training run writing the runs/epochs/gates/mi tables; the sweep adds a
`tune` row per trial, prints the top trials and the accuracy-MIS Pareto front, and saves
<results>/figures/tune_<sweep id>.png.
"""
from __future__ import annotations

import argparse

from analysis import sweep_front
from csg import cli
from csg.distributed import sweeps as sweep
from csg.method.gate import PSI_CHOICES

SPACE = sweep.SearchSpace()
OPTIONS = sweep.SweepOptions()
SPACE_FLAGS = ("period", "csg_epochs", "lambda1", "lambda2", "g_density", "psi", "num_samples", "search",
               "grid_points", "scheduler", "grace_period", "reduction_factor")


def get_args_parser() -> argparse.ArgumentParser:
    parser = cli.get_args_parser("cifar10-resnet20", cli.summary(__doc__), exclude=sweep.MANAGED)
    space = parser.add_argument_group("search space (lists: choices; LOW HIGH: a log-uniform range)")
    space.add_argument("--period", type=int, nargs="+", default=list(SPACE.period), help="CSG schedule periods")
    space.add_argument("--csg-epochs", type=int, nargs="+", default=list(SPACE.csg_epochs),
                       help="CSG epochs per period; pairs with csg_epochs > period are left out")
    space.add_argument("--lambda1", type=float, nargs="+", metavar="V", default=list(SPACE.lambda1),
                       help="weight of the CSG-path cross-entropy: LOW HIGH, or one value")
    space.add_argument("--lambda2", type=float, nargs="+", metavar="V", default=list(SPACE.lambda2),
                       help="weight of the sparsity term: LOW HIGH, or one value")
    space.add_argument("--g-density", type=float, nargs="+", metavar="V", default=None,
                       help="sparsity target g/(C*K) within [1/C, 1]: LOW HIGH, or one value (default 1/C to 4/C)")
    space.add_argument("--psi", nargs="+", choices=PSI_CHOICES, default=list(SPACE.psi), help="sparsity norms")
    tuning = sweep.add_sweep_arguments(parser)
    tuning.add_argument("--num-samples", type=cli.at_least(1), default=OPTIONS.num_samples,
                        help="trials (grid search: repeats of the whole grid)")
    tuning.add_argument("--search", choices=("random", "grid"), default=OPTIONS.search,
                        help="random sampling, or a grid over the lists and --grid-points values per range")
    tuning.add_argument("--grid-points", type=cli.at_least(1), default=OPTIONS.grid_points,
                        help="grid search: log-spaced values per range")
    tuning.add_argument("--scheduler", choices=("asha", "none"), default=OPTIONS.scheduler,
                        help="ASHA early stopping on test accuracy, or none")
    tuning.add_argument("--grace-period", type=cli.at_least(0), default=OPTIONS.grace_period,
                        help="ASHA: epochs before a trial may be stopped (0: a quarter of --epochs)")
    tuning.add_argument("--reduction-factor", type=cli.at_least(2), default=OPTIONS.reduction_factor, help="ASHA reduction factor")
    tuning.add_argument("--top", type=cli.at_least(0), default=5, help="trials printed at the end")
    return parser


def main(argv=None):
    parser = get_args_parser()
    cfg, args = cli.parse_options(parser, argv, (*SPACE_FLAGS, *sweep.SWEEP_FLAGS, "top"))
    frame = cli.sweep_or_exit(parser, cfg, args, sweep.search_space)
    sweep_front.print_summary(frame, args["top"])
    figure = sweep_front.figure_path(cfg, frame)
    sweep_front.plot_sweep(frame, figure)
    print(f"\ntables: {cfg.results}/{{tune,runs,epochs,gates,mi}}   figure: {figure}")
    return frame


if __name__ == "__main__":
    main()
