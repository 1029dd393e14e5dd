"""The state of every run under a results root; with --check, every part file read back whole.

    python jobs/status.py --results results            # running / stale / interrupted / finished / ...
    python jobs/status.py --results results --check    # also name each unreadable part file; exit 1 if any

A run is `running` while its driver's heartbeat (results/_leases/<run>.json) is fresh, and
`stale` when its row still says running but the heartbeat stopped: its driver was killed.
Rerunning a stale or interrupted run's id resumes it from its latest checkpoint.
"""
from __future__ import annotations

from pathlib import Path

import pandas as pd

from csg.cli import OneLineParser, summary
from csg.store.results import ResultStore
from csg.store.run_status import run_states, unreadable_parts


def get_args_parser() -> OneLineParser:
    parser = OneLineParser(description=summary(__doc__))
    parser.add_argument("--results", required=True, help="results root: a local path or a pyarrow filesystem URI")
    parser.add_argument("--check", action="store_true",
                        help="read every part file of every table back; name the unreadable ones and exit 1")
    return parser


def main(argv=None) -> pd.DataFrame:
    parser = get_args_parser()
    args = parser.parse_args(argv)
    if "://" not in args.results and not Path(args.results).is_dir():
        parser.error(f"--results: directory does not exist (got {args.results})")
    store = ResultStore(args.results)
    if not store.has_table("runs"):
        parser.error(f"--results: no runs table under {args.results}")
    states = run_states(store)
    # Checkpoints under the results root print relative to it, to keep the table one screen wide.
    checkpoints = states["checkpoint"]
    for prefix in (store.base, store.root.rstrip("/")):
        checkpoints = checkpoints.str.removeprefix(f"{prefix}/")
    shown = states.assign(checkpoint=checkpoints)
    with pd.option_context("display.width", 250, "display.max_colwidth", 100):
        print(shown.to_string(index=False, na_rep="-") if len(states) else "no readable runs")
    if args.check:
        bad = unreadable_parts(store)
        for path, reason in bad.items():
            print(f"unreadable: {path}: {reason}")
        print(f"check: {len(bad)} unreadable part file(s); the other tables read whole")
        if bad:
            parser.exit(1)
    return states


if __name__ == "__main__":
    main()
