"""The synthetic test-bed: the published designs against search recipes of recipes.py, on one family.

1. domain gap   OSNet trained on the first source alone, evaluated on that source's own
                query/gallery (identity is learnable) and on the first target (the gap);
2. designs      OSNet, OSNet-IBN and OSNet-AIN retrained with every seed on the sources and
                evaluated on the held-out targets;
3. recipes      every recipe of --recipes (recipes.py): answer s derived from its searches
                (search seed s; a recipe of K runs per answer reads the seeds (s-1)K+1 .. sK) and
                retrained with seed s. Recipes that read the same search variant share its searches
                (uniform-pooled and uniform-pooled-stem derive the same supernets two ways).

results.json (everything the tables are made from) and RESULTS.md (--results): held-out mAP and
rank-1 per model, each recipe minus OSNet-AIN and minus OSNet paired by seed, what each seed
chose. Every job is cached in its folder under --out, so an interrupted run continues.

    python experiments/synthetic/run_testbed.py --out runs/testbed --seeds 1,2,3 --recipes argmax
    python experiments/synthetic/run_testbed.py --out runs/synth --config osnas/configs/demo.yaml \\
        --seeds 1,2,3,4,5 --recipes uniform-pooled,uniform-pooled-stem,vote3-stem
    python experiments/synthetic/run_testbed.py --render runs/synth/results.json --results RESULTS.md
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections import Counter
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from expkit import jobs, provenance, stats  # noqa: E402
from expkit.protocol import plan_id  # noqa: E402

import recipes  # noqa: E402
from recipes import RECIPES, SEARCHES  # noqa: E402

DESIGNS = ("osnet", "osnet_ibn", "osnet_ain")
# --quick: every job at a tiny size, after the recipe's own settings (checks the machinery in minutes)
QUICK = ["search.epochs=2", "search.steps_per_epoch=5", "search.warmup_epochs=0", "train.epochs=1",
         "train.steps_per_epoch=10"]


def _ms(values) -> str:
    return stats.fmt(*stats.mean_sd(list(values)))


class Testbed:
    """One configuration file's runs under `out`: the jobs of every stage, built on expkit's."""

    def __init__(self, a: argparse.Namespace, pool: jobs.Pool):
        from osnas.config import build_config
        from osnas.data import data_root
        from osnas.data.synth import ensure_synth

        self.a, self.pool, self.out = a, pool, Path(a.out)
        self.extra = QUICK if a.quick else []
        self.cfg = build_config(a.config, self.extra)
        self.root = str(data_root(a.data_root or self.cfg.data.root))
        ensure_synth(self.root, self.cfg.data.sources + self.cfg.data.targets)
        self.base = {"root": self.root, "config": a.config, "overrides": list(self.extra)}

    def gap(self) -> dict:
        """OSNet on the first source alone, evaluated on it and on the first target."""
        src, tgt = self.cfg.data.sources[0], self.cfg.data.targets[0]
        job = dict(self.base, genotype="osnet", seed=self.a.seeds[0], sources=[src], targets=[src, tgt],
                   out=str(self.out / "gap" / f"seed{self.a.seeds[0]}"))
        return self.pool.map(jobs.retrain_eval, [job], "domain gap")[0]["targets"]

    def retrain(self, genotypes: list, what: str) -> dict:
        """[(genotype file or name, plan, seed)] retrained on the sources: {(plan id, seed): result}."""
        todo = {(plan_id(p), s): dict(self.base, genotype=g, seed=s,
                                      out=str(self.out / "retrain" / plan_id(p) / f"seed{s}")) for g, p, s in genotypes}
        return dict(zip(todo, self.pool.map(jobs.retrain_eval, list(todo.values()), what)))

    def search_dir(self, variant: str, seed: int) -> str:
        return str(self.out / "search" / variant / f"seed{seed}")

    def answers(self) -> dict:
        """Every recipe's searches, then its derives: {recipe: [derive result per seed]}."""
        need = {(v, j) for m in self.a.recipes for s in self.a.seeds
                for v in RECIPES[m].searches for j in RECIPES[m].answer_seeds(s)}
        sjobs = [dict(self.base, seed=j, out=self.search_dir(v, j), overrides=[*SEARCHES[v].overrides, *self.extra])
                 for v, j in sorted(need)]
        self.pool.map(jobs.search, sjobs, "searches")
        djobs = [dict(root=self.root, options=RECIPES[m].derive_options(),
                      out=str(self.out / "derived" / f"{m}-seed{s}.yaml"),
                      run=[self.search_dir(v, j) for v in RECIPES[m].searches for j in RECIPES[m].answer_seeds(s)])
                 for m in self.a.recipes for s in self.a.seeds]
        res = iter(self.pool.map(jobs.derive, djobs, "derive"))
        return {m: [next(res) for _ in self.a.seeds] for m in self.a.recipes}


def check_moves(a: argparse.Namespace) -> None:
    """A recipe that moves IN into the stem needs a space that searches the stem: refused before any work."""
    from osnas.config import build_config
    from osnas.derive.moves import stem_index
    from osnas.errors import OsnasError
    from osnas.models.space import load_space

    moving = [m for m in a.recipes if "stem_first" in RECIPES[m].moves]
    if moving:
        space = load_space(build_config(a.config).search.space)
        try:
            stem_index(space)
        except OsnasError as e:
            raise SystemExit(f"run_testbed: --recipes {','.join(moving)} on {a.config}: {e}") from None


def run(a: argparse.Namespace) -> dict:
    """Every stage (module docstring); the summary results.json keeps."""
    from osnas.models.genotype import named_genotype

    check_moves(a)
    t0 = time.time()
    pool = jobs.Pool(a.workers)
    try:
        tb = Testbed(a, pool)
        gap = tb.gap()
        answers = tb.answers()
        todo = [(n, named_genotype(n).plan, s) for n in DESIGNS for s in a.seeds]
        todo += [(d["file"], d["plan"], s) for ds in answers.values() for d, s in zip(ds, a.seeds)]
        done = tb.retrain(todo, "retrain and evaluate")
    finally:
        pool.close()
    score = lambda plan, s: {k: done[(plan_id(plan), s)][k] for k in ("mAP", "rank1", "targets")}  # noqa: E731
    cfg = tb.cfg
    return {"command": a.command, "commit": provenance.commit(HERE), "minutes": round((time.time() - t0) / 60, 1),
            "config": {"file": a.config_name, "sources": cfg.data.sources, "targets": cfg.data.targets,
                       "arch": cfg.model.arch, "size": f"{cfg.data.height}x{cfg.data.width}",
                       "retrain_steps": cfg.train.epochs * cfg.train.steps_per_epoch},
            "seeds": list(a.seeds), "quick": a.quick, "gap": gap,
            "designs": {n: [score(named_genotype(n).plan, s) for s in a.seeds] for n in DESIGNS},
            "recipes": {m: {"text": RECIPES[m].text, "select": RECIPES[m].select,
                            "runs_per_answer": RECIPES[m].runs_per_answer, "moves": list(RECIPES[m].moves),
                            "searches": {v: " ".join(SEARCHES[v].overrides) for v in RECIPES[m].searches},
                            "answers": [dict(score(d["plan"], s), seed=s, choices=d["choices"], in_sites=d["in_sites"])
                                        for d, s in zip(ds, a.seeds)]}
                        for m, ds in answers.items()}}


# ----------------------------------------------------------------------------- RESULTS.md
def _paired(rows: list, ref: list) -> str:
    return _ms([x["mAP"] - y["mAP"] for x, y in zip(rows, ref)])


def model_lines(s: dict) -> list:
    """One row per published design and per recipe: held-out mAP and rank-1 over seeds, and the
    recipe's paired differences with OSNet-AIN and OSNet."""
    ain, plain = s["designs"]["osnet_ain"], s["designs"]["osnet"]
    lines = ["| model | held-out mAP | rank-1 | minus OSNet-AIN, paired | minus OSNet, paired | IN sites per seed |",
             "|---|---:|---:|---:|---:|---|"]
    for n, rows in s["designs"].items():
        lines.append(f"| {n} | {_ms(r['mAP'] for r in rows)} | {_ms(r['rank1'] for r in rows)} | | | published |")
    for m, r in s["recipes"].items():
        rows = r["answers"]
        lines.append(f"| {m} | {_ms(x['mAP'] for x in rows)} | {_ms(x['rank1'] for x in rows)} | "
                     f"{_paired(rows, ain)} | {_paired(rows, plain)} | "
                     + ", ".join(str(len(x["in_sites"])) for x in rows) + " |")
    return lines


def recipe_lines(s: dict) -> list:
    lines = ["| recipe | what it is | its searches (--set over the configuration) | each run read by | runs per "
             "answer | moves |", "|---|---|---|---|---:|---|"]
    for m, r in s["recipes"].items():
        searches = "; ".join(f"{v}: `{o}`" for v, o in r["searches"].items())
        lines.append(f"| {m} | {r['text']} | {searches} | {r['select']} | {r['runs_per_answer']} | "
                     f"{', '.join(r['moves']) or '–'} |")
    return lines


def seed_lines(s: dict) -> list:
    lines = ["| recipe | seed | held-out mAP | OSNet-AIN | OSNet | IN at |", "|---|---:|---:|---:|---:|---|"]
    ain, plain = s["designs"]["osnet_ain"], s["designs"]["osnet"]
    for m, r in s["recipes"].items():
        for x, y, z in zip(r["answers"], ain, plain):
            lines.append(f"| {m} | {x['seed']} | {100 * x['mAP']:.1f} | {100 * y['mAP']:.1f} | {100 * z['mAP']:.1f} | "
                         f"{', '.join(x['in_sites']) or 'nowhere'} |")
    return lines


def agreement_lines(s: dict) -> list:
    lines = []
    for m, r in s["recipes"].items():
        rows = r["answers"]
        keys = [json.dumps(x["choices"], sort_keys=True) for x in rows]
        n_same = Counter(keys).most_common(1)[0][1]
        per = [f"{p} {Counter(x['choices'][p] for x in rows).most_common(1)[0][1]}/{len(rows)}"
               for p in rows[0]["choices"]]
        lines.append(f"- {m}: the most frequent genotype found by {n_same} of {len(rows)} seeds ({len(set(keys))} "
                     f"distinct); per position, the modal choice's share: {', '.join(per)}.")
    return lines


def _at(commit: str) -> str:
    if commit.endswith("-dirty"):
        return f"; osnas at {commit[:-len('-dirty')]} with uncommitted changes"
    return f"; osnas at commit {commit}: `git checkout {commit}` runs it as it ran" if commit else ""


def render(s: dict) -> str:
    """RESULTS.md of one test-bed run, from its results.json alone."""
    c = s["config"]
    src = c["sources"][0]
    lines = ["# Synthetic test-bed: the published designs against search recipes", "",
             "Produced by one command (CPU, 2 cores, one thread per job" + _at(s.get("commit") or "") + "):", "",
             "    " + s["command"], "",
             f"Configuration `{c['file']}` ({c['arch']}, {c['size']}, retrain {c['retrain_steps']} steps); sources "
             f"{', '.join(c['sources'])}, held-out targets {', '.join(c['targets'])}. Wall time {s['minutes']:.0f} "
             "min. Values in %; held-out mAP is the mean over the targets, differences are paired by retrain seed "
             "(mean ± std over seeds)." + (" **Quick form: sizes too small to conclude anything.**"
                                            if s.get("quick") else ""), "",
             f"## 1. Domain gap (OSNet trained on {src} only)", "",
             "| evaluated on | rank-1 | mAP |", "|---|---:|---:|"]
    lines += [f"| {t}{' (same domain)' if t == src else ' (other domain)'} | {100 * r['rank1']:.1f} | "
              f"{100 * r['mAP']:.1f} |" for t, r in s["gap"].items()]
    lines += ["", f"## 2. Held-out, over {len(s['seeds'])} seeds ({', '.join(map(str, s['seeds']))})", ""]
    lines += model_lines(s) + ["", "## 3. The recipes (experiments/synthetic/recipes.py as it ran)", ""]
    lines += recipe_lines(s) + ["", "## 4. Per seed", ""] + seed_lines(s)
    lines += ["", "## 5. Agreement between seeds", ""] + agreement_lines(s)
    return "\n".join(lines) + "\n"


# ----------------------------------------------------------------------------- command line
def parse_args(argv: list) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="runs/testbed", help="folder for every run (cached: a rerun continues)")
    ap.add_argument("--data-root", default=None)
    ap.add_argument("--seeds", default="1,2,3", help="retrain seeds, one answer per recipe each")
    ap.add_argument("--config", default=str(HERE / "testbed.yaml"), help="the family, sizes and schedules")
    ap.add_argument("--recipes", default="argmax", help="comma-separated, of " + ", ".join(recipes.RUNNABLE))
    ap.add_argument("--results", default=None, help="RESULTS.md to write (default OUT/RESULTS.md)")
    ap.add_argument("--workers", type=int, default=2, help="jobs at a time, one thread each")
    ap.add_argument("--quick", action="store_true", help="tiny schedules and domains: checks the machinery in "
                                                         "minutes (the sizes conclude nothing)")
    ap.add_argument("--render", default=None, metavar="JSON",
                    help="run nothing: RESULTS.md (--results) from a results.json this script wrote")
    a = ap.parse_args(argv)
    a.recipes = [m for m in a.recipes.split(",") if m.strip()]
    for m in a.recipes:
        why = recipes.refusal(m)
        if why:
            raise SystemExit(f"run_testbed: {why}")
    try:
        a.seeds = [int(x) for x in a.seeds.split(",") if x.strip()]
    except ValueError:
        raise SystemExit(f"run_testbed: --seeds {a.seeds!r}: expected comma-separated integers") from None
    if not a.seeds or not a.recipes:
        raise SystemExit("run_testbed: expected at least one seed (--seeds) and one recipe (--recipes)")
    # as results.json records them: the configuration inside the repository by its path there, the run
    # folder and data root (outside it) as OUT and DATA
    cfg = Path(a.config).resolve()
    a.config_name = str(cfg.relative_to(HERE.parents[1])) if HERE.parents[1] in cfg.parents else cfg.name
    a.command = "python experiments/synthetic/run_testbed.py " + provenance.command(argv, a.out, a.data_root,
                                                                                   {a.config: a.config_name})
    return a


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    a = parse_args(argv)
    results = Path(a.results or (Path(a.render).parent if a.render else Path(a.out)) / "RESULTS.md")
    if a.render:
        summary = json.loads(Path(a.render).read_text())
    else:
        if a.quick:  # smaller generated domains too (unless the caller chose a preset)
            os.environ.setdefault("OSNAS_SYNTH_PRESET", "small")
        summary = run(a)
        (Path(a.out) / "results.json").write_text(json.dumps(summary, indent=1) + "\n")
    results.write_text(render(summary))
    print(results)
    return 0


if __name__ == "__main__":
    from osnas.errors import OsnasError

    try:
        raise SystemExit(main())
    except OsnasError as e:  # bad input: one line, exit 2, as the osnas commands do
        print(f"run_testbed: {e}", file=sys.stderr)
        sys.exit(2)
