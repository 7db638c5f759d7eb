"""Derive's time with shared work, as a ratio to derive computing everything afresh, in the
same run: the same search folder, the same genotype file.

`osnas derive` scores dozens of subnets of each supernet, and each score re-estimates the
subnet's BN statistics and embeds the kept-out images. Two savings leave every number as it was
(osnas/derive/prefix.py, tests/test_derive_prefix.py):
  shared   the package: subnets that share the first steps of the network compute them once,
           and a run's images are loaded once for its two scorers (choice and check);
  whole    every subnet from the first step, every scorer loading its own images (the
           package before these savings).
Each pair runs `whole` then `shared` in fresh processes, one after the other; the figures are
the median of the pairs' ratios (shared / whole) and both genotype files, which must be equal
byte for byte.

    python experiments/benchmarks/bench_derive.py [--pairs 3] [--threads 1] [--json F]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

# the test-bed's budget (experiments/preregistered/geometry.yaml's size); derive's cost does not
# depend on how long the search trained, so the search is short
BUDGET = ["model.arch=osnet_x0_25", "data.height=64", "data.width=32", "data.batch_size=36",
          "data.num_instances=3", "data.workers=0", "run.progress=false", "search.epochs=2",
          "search.steps_per_epoch=25", "search.warmup_epochs=1"]


def child(mode: str, run: str, out: str, root: str) -> None:
    """One derive in this process; `whole` takes the savings away."""
    import osnas.derive as D
    from osnas.derive import DeriveConfig, run_derive

    if mode == "whole":
        class Whole(D.SubnetScorer):
            def __init__(self, *a, loaded=None, **k):  # noqa: ARG002  (each scorer loads its own)
                super().__init__(*a, **k)
                self.forward.budget = 0  # nothing kept: every step of every path runs

        D.SubnetScorer = Whole
    run_derive(run, out=out, cfg=DeriveConfig(data_root=root, measure=False))


def timed(argv, env) -> float:
    t0 = time.time()
    p = subprocess.run([sys.executable, __file__, *argv], env=env, capture_output=True, text=True)
    if p.returncode:
        sys.exit(f"bench_derive: {' '.join(argv[:2])} failed:\n{p.stderr[-2000:]}")
    return time.time() - t0


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--pairs", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1, help="torch threads of every derive")
    ap.add_argument("--sources", default="synth0,synth1,synth2")
    ap.add_argument("--json", default=None, help="write the figures here too")
    ap.add_argument("--child", nargs=4, metavar=("MODE", "RUN", "OUT", "ROOT"), help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    if a.child:
        child(*a.child)
        return 0
    work = Path(tempfile.mkdtemp(prefix="bench_derive_"))
    root = str(work / "data")
    env = {**os.environ, "OMP_NUM_THREADS": str(a.threads)}
    sets = [x for s in BUDGET for x in ("--set", s)]
    for argv in (["data", "synth", "--out", str(Path(root) / "synth")],
                 ["search", "--sources", a.sources, "--data-root", root, "--out", str(work / "search"), *sets]):
        subprocess.run([sys.executable, "-m", "osnas", *argv], env=env, capture_output=True, check=True)
    rows = []
    for k in range(a.pairs):
        w = timed(["--child", "whole", str(work / "search"), str(work / f"whole{k}.yaml"), root], env)
        s = timed(["--child", "shared", str(work / "search"), str(work / f"shared{k}.yaml"), root], env)
        same = (work / f"whole{k}.yaml").read_bytes() == (work / f"shared{k}.yaml").read_bytes()
        rows.append({"whole_s": round(w, 1), "shared_s": round(s, 1), "ratio": round(s / w, 3), "same_file": same})
        print(f"pair {k + 1}: whole {w:.1f} s, shared {s:.1f} s, ratio {s / w:.3f}, same genotype file: {same}")
    out = {"pairs": rows, "median_ratio": statistics.median(r["ratio"] for r in rows),
           "same_file": all(r["same_file"] for r in rows), "sources": a.sources, "budget": BUDGET,
           "threads": a.threads, "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores",
           "date": time.strftime("%Y-%m-%d")}
    print(f"derive with shared work / derive afresh: median ratio {out['median_ratio']:.3f} over {a.pairs} pairs; "
          f"genotype files equal: {out['same_file']}")
    if a.json:
        Path(a.json).write_text(json.dumps(out, indent=1) + "\n")
    return 0 if out["same_file"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
