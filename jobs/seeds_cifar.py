"""Train one CSG configuration with many seeds in parallel, then count what each gate learned.

    python jobs/seeds_cifar.py --data ~/data/cifar --seeds 20     # Appendix E: m1 and m2 on CIFAR-10
    python jobs/seeds_cifar.py --dataset digits --epochs 6 --seeds 3
    python jobs/train_cifar.py --fixed-gate-from results ...      # then train with that fixed gate

Every seed is a trial of a Tune grid (a training run writing runs/epochs/gates/mi); the
`gate_stats` table gets a row per (run, class), and the job prints m1 per class and m2 (mean
and std over seeds) and saves <results>/figures/gate_stats_<sweep id>.png.
"""
from __future__ import annotations

import argparse

from analysis import gate_stats
from csg import cli
from csg.distributed import sweeps as sweep
from csg.store.results import ResultStore


def get_args_parser() -> argparse.ArgumentParser:
    managed = tuple(name for name in sweep.MANAGED if name not in sweep.SEARCHED) + ("seed",)
    parser = cli.get_args_parser("cifar10-resnet20", cli.summary(__doc__), exclude=managed)
    group = sweep.add_sweep_arguments(parser)
    group.add_argument("--seeds", type=cli.at_least(1), default=20, help="runs, with seeds 0 .. N-1")
    group.add_argument("--tau", type=float, default=gate_stats.DEFAULT_TAU,
                       help="a class uses filter k when G[c, k] > tau (in [0, 1))")
    return parser


def seed_grid(args: dict, num_classes: int) -> dict:
    from ray import tune

    return {"seed": tune.grid_search(list(range(args["seeds"])))}


def main(argv=None):
    parser = get_args_parser()
    cfg, args = cli.parse_options(parser, argv, (*sweep.SWEEP_FLAGS, "seeds", "tau"))
    if not 0 <= args["tau"] < 1:
        parser.error(f"--tau must be in [0, 1): a gate value lies in [0, 1] and G > tau owns (got {args['tau']})")
    args.update(scheduler="none", num_samples=1, search="grid")
    frame = cli.sweep_or_exit(parser, cfg, args, seed_grid)
    done = frame[frame["stop_reason"] == "completed"]
    if done.empty:
        parser.exit(1, f"{parser.prog}: error: no seed finished; see the tune table under {cfg.results}\n")
    stats = gate_stats.write_gate_stats(ResultStore(cfg.results), dict(zip(done["run_id"], done["seed"])), args["tau"])
    per_class, m2_mean, m2_std = gate_stats.summarize(stats)
    print(f"\n{len(done)} of {len(frame)} seeds finished; tau = {args['tau']}")
    print(per_class.to_string(index=False, float_format="{:.2f}".format))
    print(f"m1 over all classes: {stats['monopolized'].mean():.2f} +- {stats['monopolized'].std():.2f}; "
          f"m2 (shared): {m2_mean:.2f} +- {m2_std:.2f}; unused: {stats['unused'].mean():.2f}")
    figure = f"{cfg.results.rstrip('/')}/figures/gate_stats_{frame['sweep_id'].iloc[0]}.png"
    gate_stats.plot_histogram(stats, figure)
    print(f"\ntables: {cfg.results}/{{gate_stats,tune,runs,gates,mi}}   figure: {figure}")
    return stats


if __name__ == "__main__":
    main()
