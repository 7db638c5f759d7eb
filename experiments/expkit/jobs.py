"""Jobs of the experiment scripts, each a plain function of a dict (so a worker process can run
it), each built on the package's own `run_*` entry points and cached in its own run folder: a job
whose result is on disk returns it; one that was interrupted resumes from its checkpoint.

One thread per job (retrains are bit-exact on one machine and library set only when the thread
count is fixed), `workers` jobs at a time.
"""

from __future__ import annotations

import json
import os
import statistics
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Callable, List, Sequence

QUIET = ["run.progress=false"]


def _init_worker() -> None:
    import torch

    torch.set_num_threads(1)
    os.environ["OMP_NUM_THREADS"] = "1"


def _finished_retrain(out: Path) -> bool:
    from osnas.utils import load_checkpoint, load_yaml

    ck = out / "checkpoint.pth"
    if not ck.is_file():
        return False
    return load_checkpoint(ck)["epoch"] >= load_yaml(out / "config.yaml")["train"]["epochs"]


def retrain_eval(job: dict) -> dict:
    """Retrain `job["genotype"]` (a file or a published name) with `job["seed"]` on the
    configuration's sources (or `job["sources"]`) and evaluate it on its targets (or
    `job["targets"]`): {"targets": {name: {mAP, rank1}}, "mAP", "rank1"} (fractions; the
    means over the targets). Keys: out, genotype, config, root, seed, [sources, targets, overrides]."""
    from osnas.evaluate import run_eval_crossdomain
    from osnas.retrain import run_retrain
    from osnas.utils import load_yaml

    out = Path(job["out"])
    metrics = out / "eval" / "metrics.json"
    if not metrics.is_file():
        if not _finished_retrain(out):
            t0 = time.time()
            resume = (out / "checkpoint.pth").is_file()
            sources = ",".join(job["sources"]) if job.get("sources") else None
            # a resumed run reads its own config.yaml: the file again would put its settings over the job's
            run_retrain(genotype=job["genotype"], sources=None if resume else sources, data_root=job["root"],
                        config_file=None if resume else job["config"], out=str(out), resume=resume,
                        overrides=[] if resume else [f"run.seed={job['seed']}", *QUIET, *job.get("overrides", [])])
            if not resume:  # the wall time of one whole retrain (a resumed one would not be)
                (out / "retrain.seconds").write_text(f"{time.time() - t0:.1f}\n")
        targets = job.get("targets") or load_yaml(out / "config.yaml")["data"]["targets"]
        run_eval_crossdomain([str(out / "checkpoint.pth")], ",".join(targets), data_root=job["root"],
                             out=str(out / "eval"))
    m = json.loads(metrics.read_text())
    t = next(iter(m["models"].values()))["targets"]
    took = out / "retrain.seconds"
    return {"targets": {k: {"mAP": v["mAP"], "rank1": v["rank1"]} for k, v in t.items()},
            "mAP": statistics.mean(v["mAP"] for v in t.values()),
            "rank1": statistics.mean(v["rank1"] for v in t.values()),
            "seconds": float(took.read_text()) if took.is_file() else None}


def search(job: dict) -> dict:
    """`osnas search` of the configuration with `job["seed"]` into `job["out"]` (its supernets'
    seeds follow it): {"out", "seconds"} (the wall time of the searching done by this call)."""
    from osnas.rundir import FINAL_ALPHAS, supernet_dirs
    from osnas.search import run_search

    out = Path(job["out"])
    done = out / "search.seconds"
    if not done.is_file():
        t0 = time.time()
        resume = (out / "run.json").is_file()
        run_search(data_root=job["root"], config_file=None if resume else job["config"], out=str(out), resume=resume,
                   overrides=[] if resume else [f"run.seed={job['seed']}", *QUIET, *job.get("overrides", [])])
        dirs = supernet_dirs(out) or [out]
        assert all((d / FINAL_ALPHAS).is_file() for d in dirs), out
        done.write_text(f"{time.time() - t0:.1f}\n")
    return {"out": str(out), "seconds": float(done.read_text())}


def derive(job: dict) -> dict:
    """`osnas derive` of `job["run"]` into `job["out"]` with DeriveConfig fields `job["options"]`:
    the genotype's plan, choices, decision and the derive's wall time."""
    from osnas.derive import DeriveConfig, run_derive
    from osnas.models.genotype import load_genotype

    out = Path(job["out"])
    took = out.with_suffix(".seconds")
    if not out.is_file():
        out.parent.mkdir(parents=True, exist_ok=True)
        t0 = time.time()
        run_derive(job["run"], out=str(out), cfg=DeriveConfig(data_root=job["root"], measure=False,
                                                               **job.get("options", {})))
        took.write_text(f"{time.time() - t0:.1f}\n")
    g = load_genotype(out)
    return {"file": str(out), "plan": g.plan, "name": g.name, "in_sites": g.in_sites(),
            "choices": {p: v["choice"] for p, v in g.positions.items()}, "agreement": dict(g.agreement),
            "decision": dict(g.decision), "seconds": float(took.read_text())}


def analyze(job: dict) -> dict:
    """`osnas analyze` of the configuration's sources with `job["seed"]` into `job["out"]`."""
    from osnas.analyze import run_analyze
    from osnas.models.genotype import load_genotype

    out = Path(job["out"])
    took = out / "analyze.seconds"
    if not took.is_file():
        t0 = time.time()
        run_analyze(data_root=job["root"], config_file=job["config"], out=str(out),
                    overrides=[f"run.seed={job['seed']}", *QUIET, *job.get("overrides", [])])
        took.write_text(f"{time.time() - t0:.1f}\n")
    g = load_genotype(out / "genotype.yaml")
    return {"file": str(out / "genotype.yaml"), "plan": g.plan, "in_sites": g.in_sites(),
            "seconds": float(took.read_text()), "analysis": json.loads((out / "analysis.json").read_text())}


class Pool:
    """Runs lists of jobs on `workers` one-thread processes, in order, saying how far it got."""

    def __init__(self, workers: int = 2):
        self.ex = ProcessPoolExecutor(workers, initializer=_init_worker) if workers > 1 else None
        if self.ex is None:
            _init_worker()
        self.t0 = time.time()

    def map(self, fn: Callable[[dict], object], jobs: Sequence[dict], what: str) -> List:
        if not jobs:
            return []
        print(f"[{(time.time() - self.t0) / 60:6.1f} min] {what}: {len(jobs)} jobs", file=sys.stderr, flush=True)
        if self.ex is None:
            out = [fn(j) for j in jobs]
        else:
            out = list(self.ex.map(fn, jobs))
        print(f"[{(time.time() - self.t0) / 60:6.1f} min] {what}: done", file=sys.stderr, flush=True)
        return out

    def close(self) -> None:
        if self.ex is not None:
            self.ex.shutdown()
