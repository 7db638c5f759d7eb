"""Two sources in: which alpha objective should `osnas search` use? (README.md: the question,
the options and the rule that decides between them, written before the run.)

    python experiments/two_sources/run.py --out runs/two_sources --data-root data   # about 1 hour, 2 cores
    python experiments/two_sources/run.py --out runs/two_sources-quick --quick      # minutes: the machinery

Writes results.json beside this file (or --results); results.py turns it into RESULTS.md.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from expkit import jobs, protocol, provenance  # noqa: E402

CONFIGS = {"style2": HERE / "style2.yaml", "geometry2": HERE / "geometry2.yaml"}
# round 1: the two alpha objectives with both sources in the weights; round 2 (README.md): each supernet
# trained on one source and judged on the other; everything else is the package's default
METHODS = {"identities": {"search": ["search.objective=identities"]}, "lodo": {"search": ["search.objective=lodo"]},
           "unseen": {"search": ["search.objective=unseen"]}}
SEEDS, ANSWERS = (1, 2, 3), (1, 2, 3)
QUICK = ["search.epochs=2", "search.steps_per_epoch=4", "train.epochs=1", "train.steps_per_epoch=6"]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", required=True, help="folder for every run (cached: a rerun continues)")
    ap.add_argument("--data-root", default="data", help="where the synthetic domains are (generated once)")
    ap.add_argument("--results", default=str(HERE / "results.json"))
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--quick", action="store_true", help="tiny schedules and one answer: checks the machinery")
    a = ap.parse_args(argv)
    from osnas.data.synth import ensure_synth
    from osnas.utils import load_yaml

    t0 = time.time()
    pool = jobs.Pool(a.workers)
    from osnas.utils import environment

    args = ["python", "experiments/two_sources/run.py"] + list(argv if argv is not None else sys.argv[1:])
    out = {"command": provenance.command(args, a.out, a.data_root), "commit": provenance.commit(HERE),  # at the start
           "started": time.strftime("%Y-%m-%d %H:%M"), "environment": environment(), "configs": {}}
    for name, cfg in CONFIGS.items():
        d = load_yaml(cfg)["data"]
        ensure_synth(Path(a.data_root), d["sources"] + d["targets"])
        out["configs"][name] = protocol.run_family(
            pool, str(cfg), a.data_root, Path(a.out) / name, SEEDS[:1] if a.quick else SEEDS,
            ANSWERS[:1] if a.quick else ANSWERS, METHODS, pick=False, analyze=False, overrides=QUICK if a.quick else ())
    pool.close()
    out["minutes"] = round((time.time() - t0) / 60, 1)
    out = provenance.scrub(out, a.out, a.data_root, HERE.parents[1])  # no path outside the repository
    Path(a.results).write_text(json.dumps(out, indent=1, sort_keys=True) + "\n")
    print(f"wrote {a.results} ({out['minutes']} min)", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
