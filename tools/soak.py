#!/usr/bin/env python3
"""Random-kill soak on the fakes (see upgrader/testing/soak.py): whole runs of five kinds (forward
+ decommission, operator rollback, automatic rollback, automatic abort, operator abort), every
command SIGKILLed at random and driven on until the run ends; each end state is checked.

    .venv/bin/python tools/soak.py --kills 300 --seed 1      # the published figure (docs/reliability.md)
    .venv/bin/python tools/soak.py --kills 30                # what CI runs (tests/engine/test_soak.py)

Exit 0 if every trial ended where it should, 1 otherwise (the failing trials are listed)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from upgrader.testing.soak import Trial, soak


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--kills", type=int, default=300, help="stop once this many SIGKILLs landed (default 300)")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--keep", type=Path, help="keep every trial's state and world under this directory")
    parser.add_argument("-v", "--verbose", action="store_true", help="a line per trial")
    args = parser.parse_args()

    def progress(t: Trial) -> None:
        if args.verbose or not t.ok:
            print(f"{'ok  ' if t.ok else 'FAIL'} {t.kind}: {t.kills} kill(s), typed {' '.join(t.commands)}"
                  + (f"\n     {t.problem}" if t.problem else ""), flush=True)

    result = soak(args.kills, seed=args.seed, progress=progress, keep=args.keep)
    print(f"\n| kind of run | trials | SIGKILLs | of them mid-run | failures |\n|---|---:|---:|---:|---:|")
    for kind, (trials, kills, interrupted, failures) in result.by_kind().items():
        print(f"| {kind} | {trials} | {kills} | {interrupted} | {failures} |")
    print(f"| **all** | {len(result.trials)} | {result.kills} | {result.interrupted} | {len(result.failures)} |")
    print("\nSIGKILLs by the command they landed in: "
          + ", ".join(f"{verb} {n}" for verb, n in result.by_command().most_common()))
    print(f"\n{len(result.trials)} trials, {result.kills} SIGKILLs ({result.interrupted} left a run unfinished), "
          f"{len(result.failures)} failures, {result.seconds:.0f} s (seed {args.seed})")
    return 1 if result.failures else 0


if __name__ == "__main__":
    sys.exit(main())
