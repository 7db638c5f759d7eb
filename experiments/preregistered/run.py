"""The pre-registered test (PLAN.md): the package's default recipe against what a practitioner
would do instead, on families never used to develop it, and on the old ones.

For each family: first its validity check (PLAN.md, "Families"): the constant designs retrained
with every seed, plus the block-IN designs on `tex`; a family that fails its check gets no
search, pick or analyze. Then the protocol (experiments/expkit/protocol.py): the constant designs,
the practitioner's pick, `osnas analyze`, and `osnas search` + `osnas derive` with no settings
changed, 5 answers, every architecture retrained with 5 seeds.

    python experiments/preregistered/run.py --out runs/prereg --data-root data              # the new families
    python experiments/preregistered/run.py --out runs/prereg --data-root data --families synth,style,geometry
    python experiments/preregistered/run.py --out runs/prereg-quick --data-root data --quick  # minutes
    python experiments/preregistered/results.py                                            # RESULTS.md

Every job is cached under --out, so a rerun continues where it stopped. The families' results are
merged into results.json beside this file (or --results).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from expkit import jobs, protocol, provenance, report, stats  # noqa: E402

NEW = ("tex", "duo", "clear")
OLD = ("synth", "style", "geometry")
# the block-IN designs of tex's validity check: sites that differ from plain OSNet (a BN stem)
BLOCK_DESIGNS = {"ain_blocks": {"conv2.0.end": "in", "conv2.1.end": "in", "conv3.1.end": "in", "conv4.0.end": "in"},
                 "conv2_res": {"conv2.0.end": "in", "conv2.1.end": "in"}}
CLEAR_FLOOR = 0.20  # clear: plain OSNet's held-out mAP must reach this (a larger signal)
METHODS = {"default": {"search": [], "derive": {}}}  # the package's defaults: nothing changed
SEEDS, ANSWERS = (1, 2, 3, 4, 5), (1, 2, 3, 4, 5)
QUICK = ["search.epochs=2", "search.steps_per_epoch=4", "train.epochs=1", "train.steps_per_epoch=6",
         "analyze.epochs=1", "analyze.steps_per_epoch=4", "analyze.batches=2"]


def validity(name: str, fam: dict) -> dict:
    """The family's check (PLAN.md): tex, a block-IN design above IN in the stem alone by more than
    2 standard errors of the paired difference; clear, plain OSNet at CLEAR_FLOOR or above."""
    if name == "tex":
        vs = {b: report.compare(report.per_seed(fam, b), report.per_seed(fam, "stem")) for b in BLOCK_DESIGNS}
        ok = any(r["mean"] > 2 * r["se"] for r in vs.values())
        return {"rule": "a block-IN design above the stem alone by > 2 SE (paired)", "pass": ok,
                "block_minus_stem": vs}
    if name == "clear":
        m = stats.mean_sd(list(report.per_seed(fam, "osnet").values()))[0]
        return {"rule": f"plain OSNet held-out mAP >= {100 * CLEAR_FLOOR:.0f}", "pass": m >= CLEAR_FLOOR, "osnet": m}
    return {"rule": "none", "pass": True}


def run_one(pool, name: str, a) -> dict:
    from osnas.data.synth import ensure_synth
    from osnas.utils import load_yaml

    cfg = str(HERE / f"{name}.yaml")
    d = load_yaml(cfg)["data"]
    ensure_synth(Path(a.data_root), d["sources"] + d["targets"])
    seeds, answers = (SEEDS[:2], ANSWERS[:1]) if a.quick else (SEEDS, ANSWERS)
    over = QUICK if a.quick else []
    extra = BLOCK_DESIGNS if name == "tex" else None
    out = Path(a.out) / name
    check = validity(name, protocol.run_designs(pool, cfg, a.data_root, out, seeds, extra, over))
    print(f"{name}: validity check {'passed' if check['pass'] else 'FAILED'} ({check['rule']})", file=sys.stderr)
    if (not check["pass"] and not a.quick) or a.check_only:
        return {"check": check, "check_only": bool(a.check_only and check["pass"]), "sources": d["sources"],
                "targets": d["targets"]}
    fam = protocol.run_family(pool, cfg, a.data_root, out, seeds, answers, METHODS, overrides=over,
                              extra_designs=extra)
    return {"check": check, **fam}


def job_span(folder: Path, t0: float) -> tuple:
    """When the family's first job started and its last one ended: the oldest and the newest file
    in its cached folder. A run that was stopped and resumed says `minutes` for its last stretch
    only; `span_minutes` is the whole, any interruption included."""
    times = [p.stat().st_mtime for p in folder.rglob("*") if p.is_file()] or [t0, time.time()]
    return min(times), max(times)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", required=True, help="folder for every run (cached: a rerun continues)")
    ap.add_argument("--data-root", default="data", help="where the synthetic domains are (generated once)")
    ap.add_argument("--families", default=",".join(NEW), help=f"comma list of {', '.join(NEW + OLD)}")
    ap.add_argument("--results", default=str(HERE / "results.json"))
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--quick", action="store_true", help="tiny schedules, 2 seeds, 1 answer: checks the machinery")
    ap.add_argument("--check-only", action="store_true",
                    help="the families' validity checks only (the constant designs), no search, pick or analyze")
    a = ap.parse_args(argv)
    from osnas.utils import environment

    names = [n.strip() for n in a.families.split(",") if n.strip()]
    bad = [n for n in names if n not in NEW + OLD]
    if bad:
        ap.error(f"unknown family {bad[0]!r}; expected {', '.join(NEW + OLD)}")
    path = Path(a.results)
    pool = jobs.Pool(a.workers)
    commit = provenance.commit(HERE)  # the code that runs, as it stands when the run starts
    for name in names:
        t0 = time.time()
        fam = run_one(pool, name, a)
        args = ["python", "experiments/preregistered/run.py"] + list(argv if argv is not None else sys.argv[1:])
        first, last = job_span(Path(a.out) / name, t0)
        fam.update(command=provenance.command(args, a.out, a.data_root), commit=commit,
                   started=time.strftime("%Y-%m-%d %H:%M", time.localtime(t0)),
                   minutes=round((time.time() - t0) / 60, 1), environment=environment(), quick=a.quick,
                   first_job=time.strftime("%Y-%m-%d %H:%M", time.localtime(first)),
                   span_minutes=round((last - first) / 60, 1))
        results = json.loads(path.read_text()) if path.is_file() else {"families": {}}  # as it is now on disk
        results["families"][name] = provenance.scrub(fam, a.out, a.data_root, HERE.parents[1])
        path.write_text(json.dumps(results, indent=1, sort_keys=True) + "\n")  # after every family
        print(f"{name}: {fam['minutes']} min -> {path}", file=sys.stderr)
    pool.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
