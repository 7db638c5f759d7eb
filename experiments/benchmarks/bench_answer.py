"""Time to an answer: the default `osnas search` + `osnas derive`, as a ratio to one retrain of
the derived network at the same budget, in the same run.

A practitioner who compares the three published designs pays three retrains; the search should
cost at most one (the goal: a ratio of 1.0 or less). All three commands run as a user runs them
(`python -m osnas ...`, one process each, one after the other) with the package's default
schedules: the search's `search.epochs` x `search.steps_per_epoch` steps for each of its
`search.runs` supernets, derive's defaults, and the retrain's `train.epochs` passes over the
sources. What both share is the budget a user shrinks a run with: the width, the input size
and the batch (`--set` below). The data are the built-in synthetic domains unless --sources
names others. Wall times, in seconds, and the ratio go to stdout and --json.

To shorten the bench, shrink both schedules by the same factor (`--set search.epochs=10 --set
search.warmup_epochs=1 --set train.epochs=30` is half of each): derive's cost does not shrink
with them, so the ratio measured so is an upper bound on the ratio at the full schedules.

    python experiments/benchmarks/bench_answer.py [--sources synth0,synth1,synth2] [--threads 2] [--json F]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

BUDGET = ["model.arch=osnet_x0_25", "data.height=64", "data.width=32", "data.batch_size=32", "data.workers=0",
          "run.progress=false"]


def timed(argv, env) -> float:
    t0 = time.time()
    p = subprocess.run([sys.executable, "-m", "osnas", *argv], env=env, capture_output=True, text=True)
    if p.returncode:
        sys.exit(f"bench_answer: osnas {' '.join(argv[:3])} failed:\n{p.stderr[-2000:]}")
    return time.time() - t0


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sources", default="synth0,synth1,synth2")
    ap.add_argument("--data-root", default=None, help="datasets folder (default: a temporary one, built-in data)")
    ap.add_argument("--threads", type=int, default=2, help="torch threads of every command")
    ap.add_argument("--set", dest="overrides", action="append", default=[], help="more budget keys, for all three")
    ap.add_argument("--json", default=None, help="write the figures here too")
    a = ap.parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="bench_answer_"))
    root = a.data_root or str(work / "data")
    env = {**os.environ, "OMP_NUM_THREADS": str(a.threads)}
    sets = [x for s in BUDGET + a.overrides for x in ("--set", s)]
    subprocess.run([sys.executable, "-m", "osnas", "data", "synth", "--out", str(Path(root) / "synth")], env=env,
                   capture_output=True, check=True)  # generated once, before any clock starts
    search = timed(["search", "--sources", a.sources, "--data-root", root, "--out", str(work / "search"), *sets], env)
    derive = timed(["derive", "--run", str(work / "search")], env)
    genotype = str(work / "search" / "genotype.yaml")
    retrain = timed(["retrain", "--genotype", genotype, "--sources", a.sources, "--data-root", root,
                     "--out", str(work / "retrain"), *sets], env)
    from osnas.config import build_config
    from osnas.models.genotype import load_genotype

    c = build_config(overrides=BUDGET + a.overrides)  # the schedules the commands ran with
    train_log = [json.loads(x) for x in (work / "retrain" / "train_log.jsonl").read_text().splitlines() if x]
    out = {"search_s": round(search, 1), "derive_s": round(derive, 1), "retrain_s": round(retrain, 1),
           "ratio": round((search + derive) / retrain, 3), "answer": load_genotype(genotype).in_sites(),
           "search_steps": c.search.runs * c.search.epochs * c.search.steps_per_epoch,
           "retrain_epochs": len(train_log), "sources": a.sources, "budget": BUDGET + a.overrides,
           "threads": a.threads, "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores",
           "date": time.strftime("%Y-%m-%d")}
    print(f"search {search / 60:.1f} min ({out['search_steps']} steps over {c.search.runs} supernets) + derive "
          f"{derive / 60:.1f} min = {(search + derive) / 60:.1f} min; one retrain of the answer "
          f"{retrain / 60:.1f} min ({out['retrain_epochs']} epochs): ratio {out['ratio']:.2f}x (goal <= 1.0; "
          f"the three published designs cost 3 retrains)")
    if a.json:
        Path(a.json).write_text(json.dumps(out, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
