"""RESULTS.md and the figures of the candidate-defaults study, from the summaries committed here
(results_style.json, results_geometry.json, run.json, bench_search_step.json): byte-identical
on every run (tests/test_experiments.py regenerates it).

    python experiments/synthetic/defaults/results.py [--out RESULTS.md]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

import results_protocol  # noqa: E402


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=str(HERE / "RESULTS.md"), help="the RESULTS.md to write (figures beside it)")
    a = ap.parse_args(argv)
    results_protocol.regenerate(HERE, Path(a.out))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
