"""Is the search's answer trustworthy? The whole protocol on the synthetic test-bed, one command.

For each test-bed configuration (testbed_style.yaml: domain shift IN can remove; and
testbed_geometry.yaml: shift IN cannot remove, where IN should not help), `run_config` runs:

1. noise floor   OSNet-AIN retrained with NOISE_SEEDS seeds: std of the held-out mAP (plain
                 OSNet too: the answer "no IN at all", paired with the default below);
2. yardstick     RANDOM architectures drawn uniformly from the searched space, plus OSNet,
                 OSNet-IBN and OSNet-AIN, each retrained once (--yardstick-seeds N: N times,
                 and every method's genotypes too, placed by their means): the held-out mAP
                 distribution;
3. methods       every search recipe of --methods (recipes.py: the search variants it reads, how
                 each run is read, runs per answer, moves) on SEARCH_SEEDS answers; per method:
                 seed agreement, percentile of each derived genotype in the yardstick
                 distribution, held-out mAP;
4. ranking       Kendall tau between the supernet's held-out score of each yardstick
                 architecture (one-hot weights, per search seed: the alpha loss of the variants
                 marked `ranked`; the retrieval score each retrieval recipe derives with, its
                 answer's supernets pooled) and its retrained mAP; and per seed the supernet's
                 own verdict on the stem (held-out loss projected onto BN minus onto IN, ± its
                 error over the alpha batches) for the variants marked `projected`;
5. paired test   the default method's genotype against OSNet-AIN (and plain OSNet) over the
                 noise seeds;
6. budgets       (--budgets, on --budget-configs) cost-aware lodo searches: the space profiled on
                 the LATENCY backend (osnas profile, cost_<backend>.yaml), then BUDGET_SEEDS
                 searches per budget with search.cost_budget, derived by argmax and voted, retrained;
7. latency       every retrained architecture timed on the deployment path (LATENCY: eager
                 fp32, BN folded, one thread's CPU time, batch 1, the test-bed's width at
                 the camera-end input size 256x128), interleaved with the all-BN network: the
                 Pareto front of held-out mAP against measured latency;
8. deployability every derived genotype's (and the published ones') retrained checkpoint exported
                 to ONNX and checked in ONNX Runtime with a dynamic batch (osnas export --check):
                 equality within 1e-4, bf16/fp16 drift per IN site, rank-1 fp32 vs bf16 on the
                 first target.

Every job writes its own run folder under --out and is skipped when its result is there,
so an interrupted protocol continues where it stopped (a resumed job reads its own run's
config.yaml, never the configuration file again; expkit/jobs.py). Two jobs run at a time
(--jobs), one thread each. Results: results.json per configuration, RESULTS.md and figures
(results_protocol.py), with everything they are made from kept beside RESULTS.md.

    python experiments/synthetic/run_protocol.py --out runs/default --methods vote3-stem --yardstick-seeds 3
    python experiments/synthetic/run_protocol.py --out runs/protocol --budgets 1.03,1.06 --budget-configs style
    python experiments/synthetic/run_protocol.py --out runs/protocol-quick --quick   # minutes
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

HERE = Path(__file__).resolve().parent
EXPERIMENTS_DIR = HERE.parent
sys.path.insert(0, str(EXPERIMENTS_DIR))

from expkit import jobs, provenance  # noqa: E402
from expkit.protocol import plan_id  # noqa: E402

import recipes  # noqa: E402
from recipes import RECIPES, SEARCHES  # noqa: E402
from results_protocol import modal, percentile, write_results  # noqa: E402

CONFIGS = {"style": HERE / "testbed_style.yaml", "geometry": HERE / "testbed_geometry.yaml"}
NAMED = ("osnet", "osnet_ibn", "osnet_ain")
METHODS = recipes.RUNNABLE  # the recipes the current package runs (recipes.refusal says why not the others)
# the deployment path timed: eager PyTorch fp32 with BN folded, one thread's CPU time (robust to
# other work on the machine), batch 1, at the camera-end input size 256x128 (the networks are fully
# convolutional: the test-bed's width, at the size a deployment feeds it; 64x32 is too small to time
# IN reliably). ONNX Runtime was tried first: on this machine three copies of the same network,
# each in its own session, timed 2.90-3.34 ms (13% apart), eager 20.08-20.29 ms (1%).
LATENCY = dict(backend="eager", batch=1, threads=1, clock="cpu", height=256, width=128)
FULL = dict(noise_seeds=5, random=20, search_seeds=5, budget_seeds=3, latency_repeats=100)
QUICK = dict(noise_seeds=2, random=4, search_seeds=2, budget_seeds=2, latency_repeats=5,
             overrides=["search.epochs=2", "search.steps_per_epoch=5", "train.epochs=1", "train.steps_per_epoch=10"])


# ----------------------------------------------------------------------------- jobs (run in workers)
def _plan(genotype: str) -> dict:
    from osnas.models.genotype import load_genotype

    return load_genotype(genotype).plan


def retrain(job: dict) -> dict:
    """expkit's retrain_eval, once the run folder is checked to be named by the architecture it
    must hold (a stale genotype label would otherwise train another network into it)."""
    pid = plan_id(_plan(job["genotype"]))
    if pid != Path(job["out"]).parent.name:
        raise RuntimeError(f"retrain {job['out']}: the genotype {job['genotype']} is architecture {pid}, "
                           f"not {Path(job['out']).parent.name}")
    return jobs.retrain_eval(job)


def derive_answer(job: dict) -> dict:
    """expkit's derive, with the genotype's cost record and the derive's wall time under the names
    the summary keeps."""
    from osnas.models.genotype import load_genotype

    d = jobs.derive(job)
    return dict(d, cost=dict(load_genotype(d["file"]).cost or {}), derive_seconds=d["seconds"])


def export_check(job: dict) -> dict:
    """osnas export --check of a retrained checkpoint (cached in the retrain folder)."""
    from osnas.models.export_check import run_export_check

    out = Path(job["out"])
    report = out.with_name(out.name + ".check.json")
    if not report.is_file():
        run_export_check(checkpoint=job["checkpoint"], out=str(out), height=job["height"], width=job["width"],
                         batches="1,3,8", data_root=job["root"], target=job["target"], strict=False)
    r = json.loads(report.read_text())
    worst = {d: max([s[d]["rel_l2"] for s in r["drift"]["sites"]] or [0.0]) for d in ("bf16", "fp16")}
    ret = r.get("retrieval") or {}
    return {"pass": r["pass"], "max_rel_err": max(b["rel_err"] for b in r["equality"]["batches"]),
            "in_sites": len(r["in_sites"]), "worst_site_drift": worst,
            "rank1_fp32": ret.get("fp32"), "rank1_bf16": ret.get("bf16"), "rank1_onnx": ret.get("onnx"),
            "target": ret.get("target")}


def supernet_scores(job: dict) -> list:
    """The supernet's held-out score of each architecture, lower = better: scorer "loss", its
    alpha loss with one-hot weights; "retrieval" ("retrieval-pooled"), minus the retrieval mAP of
    `--select retrieval` (`--select retrieval-pooled`). `runs` (an answer's supernets): their units
    pooled; each run's units are cached in its own folder, so recipes reading the same supernets
    score them once between them."""
    from osnas.derive import PerturbScorer, load_run, onehot
    from osnas.derive.retrieval import GALLERIES, SubnetScorer

    scorer_kind = job.get("scorer", "loss")
    runs = job.get("runs") or [job["run"]]
    if scorer_kind not in GALLERIES:
        cache = Path(runs[0]) / f"scores_{plan_id({'choices': job['choices'], 'batches': job['batches']})}.json"
        if not cache.is_file():
            run = load_run(runs[0])
            scorer = PerturbScorer(run, batches=job["batches"], data_root=job["root"])
            ws = [[onehot(len(p.candidates), p.names.index(c[p.name])) for p in run.space.positions]
                  for c in job["choices"]]
            cache.write_text(json.dumps([scorer(w) for w in ws]))
        return json.loads(cache.read_text())
    key = {"choices": job["choices"], "batches": job["batches"], "scorer": scorer_kind}
    per_run = []
    for r in runs:
        cache = Path(r) / f"units_{plan_id(key)}.json"
        if not cache.is_file():
            run = load_run(r)
            sc = SubnetScorer(run, batches=job["batches"], data_root=job["root"], gallery=GALLERIES[scorer_kind])
            cache.write_text(json.dumps([sc.per_batch([p.names.index(c[p.name]) for p in run.space.positions])
                                         for c in job["choices"]]))
        per_run.append(json.loads(cache.read_text()))
    out = []
    for i in range(len(job["choices"])):
        units = [x for units_of_run in per_run for x in units_of_run[i]]
        out.append(-sum(units) / len(units))
    return out


def stem_projection(job: dict) -> dict:
    """Why seeds disagree, seen at the stem: the supernet's held-out loss with the stem projected
    onto BN minus onto IN (the other positions at their probabilities), per alpha batch; > 0 means
    this seed's supernet prefers IN. Mean and standard error over the batches, cached in the run."""
    from osnas.derive import PerturbScorer, load_run, onehot

    cache = Path(job["run"]) / f"stem_projection_{job['batches']}.json"
    if cache.is_file():
        return json.loads(cache.read_text())
    run = load_run(job["run"])
    names = run.space.positions[0].names
    if run.space.positions[0].name != "stem" or sorted(names) != ["bn", "in"]:
        return {}
    scorer = PerturbScorer(run, batches=job["batches"], data_root=job["root"])
    rest = [p.float() for p in run.probs[1:]]
    loss = {c: scorer.per_batch([onehot(2, names.index(c))] + rest) for c in names}
    d = [b - i for b, i in zip(loss["bn"], loss["in"])]
    out = {"diff": statistics.mean(d), "se": statistics.stdev(d) / len(d) ** 0.5, "batches": len(d),
           "p_in": float(run.probs[0][names.index("in")])}
    cache.write_text(json.dumps(out))
    return out


# ----------------------------------------------------------------------------- one configuration
@dataclass
class Study:
    """One configuration's protocol: its settings, its run folders and the retrain results so far."""

    name: str
    cfg_file: Path
    a: argparse.Namespace
    pool: jobs.Pool
    sizes: dict
    retrains: dict = field(default_factory=dict)  # run folder -> retrain_eval result

    def __post_init__(self):
        from osnas.config import build_config
        from osnas.data import data_root
        from osnas.data.synth import ensure_synth
        from osnas.models.space import load_space

        self.cfg = build_config(str(self.cfg_file), self.extra)
        self.root = str(data_root(self.a.data_root or self.cfg.data.root))
        ensure_synth(self.root, self.cfg.data.sources + self.cfg.data.targets)
        self.out = Path(self.a.out) / self.name
        self.space = load_space(self.cfg.search.space)
        self.noise_seeds = list(range(1, self.sizes["noise_seeds"] + 1))
        self.yseeds = list(range(1, self.a.yardstick_seeds + 1))  # every yardstick architecture's retrain seeds
        self.seeds = list(range(1, (self.a.search_seeds or self.sizes["search_seeds"]) + 1))  # answers per method
        (self.out / "genotypes").mkdir(parents=True, exist_ok=True)

    @property
    def extra(self) -> list:
        return self.sizes.get("overrides", [])

    def base(self, **kw) -> dict:
        """A job's settings: the configuration and its size overrides, then `kw` (a search's own overrides)."""
        return {"root": self.root, "config": str(self.cfg_file), "overrides": list(self.extra), **kw}

    def search_dir(self, variant: str, seed: int) -> str:
        return str(self.out / "search" / variant / f"seed{seed}")

    def answer_runs(self, method: str, answer: int) -> list:
        """The search runs one answer of `method` reads."""
        r = RECIPES[method]
        return [self.search_dir(v, j) for v in r.searches for j in r.answer_seeds(answer)]

    def retrain_dir(self, plan: dict, seed: int) -> str:
        return str(self.out / "retrain" / plan_id(plan) / f"seed{seed}")

    def result(self, plan: dict, seed: int = 1) -> dict:
        return self.retrains[self.retrain_dir(plan, seed)]

    def genotype_file(self, label: str, plan: dict) -> str:
        """genotypes/LABEL.yaml holding `plan`; rewritten when a label (the paired default) now
        names another architecture, so a retrain never reads a stale file."""
        from osnas.models.genotype import Genotype, load_genotype

        path = self.out / "genotypes" / f"{label}.yaml"
        if not path.is_file() or load_genotype(path).plan != plan:
            Genotype(plan=plan, name=label, arch=self.cfg.model.arch, space=self.space.name,
                     space_hash=self.space.sha256).save(path)
        return str(path)

    def retrain_all(self, rjobs: list, what: str) -> None:
        """Retrain the jobs whose folder has no result yet (one job per folder)."""
        todo = _once(rjobs, done=self.retrains)
        self.retrains.update({j["out"]: r for j, r in zip(todo, self.pool.map(retrain, todo, f"{self.name}: {what}"))})

    def retrain_genotypes(self, genotypes: dict, seeds: list, what: str) -> None:
        """{label: (genotype file or name, plan)} retrained with every seed."""
        self.retrain_all([self.base(genotype=g, seed=s, out=self.retrain_dir(p, s))
                          for g, p in genotypes.values() for s in seeds], what)


def _once(jobs_: list, done=()) -> list:
    """The jobs whose run folder is not in `done`, one per folder (two jobs on one folder would
    train into it at once; the later job of a folder is kept)."""
    return list({j["out"]: j for j in jobs_ if j["out"] not in done}.values())


def sample_architectures(space, n: int, seed: int) -> list:
    """n distinct architectures drawn uniformly from the space ({position: candidate})."""
    rng = random.Random(seed)
    seen, out = set(), []
    while len(out) < min(n, space.size()):
        choices = {p.name: rng.choice(p.names) for p in space.positions}
        key = tuple(sorted(choices.items()))
        if key not in seen:
            seen.add(key)
            out.append(choices)
    return out


def yardstick(st: Study) -> tuple:
    """Stages 1-2: the published designs and the random architectures, retrained; OSNet-AIN and
    plain OSNet with every noise seed. (arch {label: plan}, randoms, noise results, yardstick)."""
    from osnas.models.genotype import named_genotype

    randoms = sample_architectures(st.space, st.sizes["random"], seed=12345)
    arch = {n: named_genotype(n).plan for n in NAMED}
    arch.update({f"random{i:02d}": st.space.plan_for(c) for i, c in enumerate(randoms)})
    files = {k: (st.genotype_file(k, p), p) for k, p in arch.items()}
    jobs_ = [st.base(genotype=g, seed=s, out=st.retrain_dir(p, s)) for g, p in files.values() for s in st.yseeds]
    # OSNet-AIN (the noise floor, and the reference a search must beat) and plain OSNet (the answer
    # "no IN at all") with every noise seed
    jobs_ += [st.base(genotype=n, seed=s, out=st.retrain_dir(arch[n], s))
              for n in ("osnet_ain", "osnet") for s in st.noise_seeds[1:]]
    st.retrain_all(jobs_, "noise floor and yardstick retrains")
    noise = [st.result(arch["osnet_ain"], s) for s in st.noise_seeds]
    yard = {k: dict(st.result(p), **({"mAP_seeds": [st.result(p, s)["mAP"] for s in st.yseeds]}
                                     if len(st.yseeds) > 1 else {})) for k, p in arch.items()}
    return arch, randoms, noise, yard


def run_searches(st: Study) -> tuple:
    """Stage 3, the searches every method of --methods reads: (variants, {variant: seeds searched}, cost table)."""
    table_file = cost_table(Path(st.a.out), st.name, st.cfg, st.sizes)
    need: dict = {}  # search variant -> how many seeds of it --methods read
    for m in st.a.methods:
        for v in RECIPES[m].searches:
            need[v] = max(need.get(v, 0), RECIPES[m].answer_seeds(len(st.seeds))[-1])
    variants = [v for v in SEARCHES if v in need]
    sjobs = [st.base(seed=s, out=st.search_dir(v, s),
                     overrides=[o.format(cost_table=table_file) for o in SEARCHES[v].overrides] + st.extra)
             for v in variants for s in range(1, need[v] + 1)]
    st.pool.map(jobs.search, sjobs, f"{st.name}: searches")
    return variants, need, table_file


def derive_methods(st: Study) -> tuple:
    """Stage 3, every method's answers derived and retrained (with every yardstick seed): (djobs, derived)."""
    djobs = [dict(root=st.root, method=m, seed=s, run=st.answer_runs(m, s), options=RECIPES[m].derive_options(),
                  out=str(st.out / "derived" / f"{m}-seed{s}.yaml")) for m in st.a.methods for s in st.seeds]
    derived = st.pool.map(derive_answer, djobs, f"{st.name}: derive ({', '.join(st.a.methods)})")
    files = {d["file"]: (d["file"], d["plan"]) for d in derived}
    st.retrain_genotypes(files, [1], "derived retrains")
    # every method's genotypes with the yardstick's other seeds too: their percentiles are then read on
    # means, every method alike (one retrain cannot place a genotype: OSNet-AIN's own fall in and out of the top 10%)
    st.retrain_genotypes(files, st.yseeds[1:], "the derived genotypes, more seeds")
    return djobs, derived


def ranking(st: Study, variants: list, randoms: list) -> dict:
    """Stage 4: each supernet's score of the random architectures, per ranked variant and per
    retrieval method ({name: [scores per answer]}), for the Kendall tau against retraining."""
    ranked = [v for v in variants if SEARCHES[v].ranked]
    kjobs = [dict(root=st.root, run=st.search_dir(v, s), batches=recipes.ALPHA_BATCHES, choices=list(randoms))
             for v in ranked for s in st.seeds]
    for m in [m for m in st.a.methods if RECIPES[m].scores_subnets]:
        ranked.append(m)
        kjobs += [dict(root=st.root, runs=st.answer_runs(m, s), batches=recipes.RETRIEVAL_BATCHES,
                       choices=list(randoms), scorer=RECIPES[m].select) for s in st.seeds]
    # every supernet a retrieval method reads is scored once, two at a time; the methods then pool the cached units
    ujobs = list({(j["runs"][i], j["scorer"]): dict(j, runs=[j["runs"][i]]) for j in kjobs if "runs" in j
                  for i in range(len(j["runs"]))}.values())
    st.pool.map(supernet_scores, ujobs, f"{st.name}: retrieval scores of the random architectures, per supernet")
    scores = st.pool.map(supernet_scores, kjobs, f"{st.name}: supernet scores of the random architectures")
    return _per_variant(scores, ranked, len(st.seeds))


def projections(st: Study, variants: list) -> dict:
    """Stage 4: each projected variant's supernets' own verdict on the stem, per seed."""
    projected = [v for v in variants if SEARCHES[v].projected]
    pj = [dict(root=st.root, run=st.search_dir(v, s), batches=recipes.ALPHA_BATCHES * 2)
          for v in projected for s in st.seeds]
    return _per_variant(st.pool.map(stem_projection, pj, f"{st.name}: stem projections per search seed"),
                        projected, len(st.seeds))


def paired_tests(st: Study, arch: dict, djobs: list, derived: list) -> tuple:
    """Stage 5: the default's (and --paired methods') modal genotype over the noise seeds against
    OSNet-AIN and plain OSNet: (pairs with OSNet-AIN, pairs with OSNet, {method: its figures})."""
    modals = {m: modal([d["plan"] for j, d in zip(djobs, derived) if j["method"] == m])
              for m in dict.fromkeys([st.a.default] + st.a.paired)}
    files = {m: (st.genotype_file("default" if m == st.a.default else f"paired-{m}", p), p) for m, p in modals.items()}
    st.retrain_genotypes(files, st.noise_seeds, "paired retrains")
    top = modals[st.a.default]
    paired = [(st.result(top, s)["mAP"], st.result(arch["osnet_ain"], s)["mAP"]) for s in st.noise_seeds]
    paired_osnet = [(st.result(top, s)["mAP"], st.result(arch["osnet"], s)["mAP"]) for s in st.noise_seeds]
    paired_methods = {}
    for m, p in modals.items():
        ours = [st.result(p, s)["mAP"] for s in st.noise_seeds]
        paired_methods[m] = {"choices": next(d["choices"] for j, d in zip(djobs, derived)
                                             if j["method"] == m and d["plan"] == p),
                             "mAP": ours, **{f"vs_{ref}": _diff_stats([x - st.result(arch[ref], s)["mAP"]
                                                                       for x, s in zip(ours, st.noise_seeds)])
                                             for ref in ("osnet_ain", "osnet")}}
    return paired, paired_osnet, paired_methods


def budget_searches(st: Study, arch: dict, table_file: Path) -> dict:
    """Stage 6: cost-aware lodo searches at each --budgets value, each seed derived by argmax and
    all seeds voted; the votes retrained with the noise seeds and paired with OSNet-AIN."""
    if not st.a.budgets or st.name not in st.a.budget_configs:
        return {}
    bseeds = list(range(1, st.sizes["budget_seeds"] + 1))
    folder = {b: st.out / "search" / f"budget{b:g}-{LATENCY['backend']}" for b in st.a.budgets}
    lodo = list(SEARCHES["lodo"].overrides)
    bjobs = [st.base(seed=sd, out=str(folder[b] / f"seed{sd}"),
                     overrides=lodo + st.extra + [f"search.cost_table={table_file}", f"search.cost_budget={b:g}"])
             for b in st.a.budgets for sd in bseeds]
    st.pool.map(jobs.search, bjobs, f"{st.name}: cost-aware searches at budgets {', '.join(map(str, st.a.budgets))}")
    bd = []
    for b in st.a.budgets:
        runs = [str(folder[b] / f"seed{sd}") for sd in bseeds]
        stem = str(st.out / "derived" / f"budget{b:g}-{LATENCY['backend']}")
        bd += [dict(root=st.root, method=f"argmax@{b:g}", seed=sd, run=[r], options={"select": "argmax"},
                    out=f"{stem}-seed{sd}.yaml") for sd, r in zip(bseeds, runs)]
        bd.append(dict(root=st.root, method=f"vote@{b:g}", seed="all", run=runs, options={"select": "argmax"},
                       out=f"{stem}-vote.yaml"))
    bderived = st.pool.map(derive_answer, bd, f"{st.name}: derive within budget")
    st.retrain_genotypes({d["file"]: (d["file"], d["plan"]) for d in bderived}, [1], "budget retrains")
    votes = {j["method"]: d for j, d in zip(bd, bderived) if j["method"].startswith("vote@")}
    st.retrain_genotypes({m: (d["file"], d["plan"]) for m, d in votes.items()}, st.noise_seeds,
                         "budget paired retrains")
    budgets: dict = {}
    for j, d in zip(bd, bderived):
        r = st.result(d["plan"])
        budgets.setdefault(j["method"], {"per_seed": [], "budget": float(j["method"].split("@")[1])})
        budgets[j["method"]]["per_seed"].append({"seed": j["seed"], "choices": d["choices"], "mAP": r["mAP"],
                                                 "rank1": r["rank1"], "cost": d.get("cost", {}), "plan": d["plan"]})
    for m, d in votes.items():
        diffs = [st.result(d["plan"], sd)["mAP"] - st.result(arch["osnet_ain"], sd)["mAP"] for sd in st.noise_seeds]
        budgets[m]["paired"] = {"diffs": diffs, **_diff_stats(diffs)}
    return budgets


def latencies(st: Study, arch: dict, derived: list, budgets: dict) -> dict:
    """Stage 7: every retrained architecture timed together; budget rows get their figures here."""
    plans = dict(arch)
    plans.update({Path(d["file"]).stem: d["plan"] for d in derived})
    plans.update({f"{m}-{row['seed']}": row["plan"] for m, v in budgets.items() for row in v["per_seed"]})
    latency = measure_latencies(plans, st.cfg, st.sizes["latency_repeats"])
    for v in budgets.values():
        for row in v["per_seed"]:
            plan = row.pop("plan")
            row["plan_json"] = json.dumps(plan, sort_keys=True)
            row["latency_ms"] = latency[plan_id(plan)]["median_ms"]
            row["relative_latency"] = latency[plan_id(plan)]["relative"]
    return latency


def export_checks(st: Study, arch: dict, derived: list, budgets: dict) -> dict:
    """Stage 8: every derived genotype's and the published ones' seed-1 checkpoint, exported and checked."""
    checked = {k: p for k, p in arch.items() if k in NAMED}
    checked.update({Path(d["file"]).stem: d["plan"] for d in derived})
    checked.update({f"{m}-{row['seed']}": json.loads(row["plan_json"]) for m, v in budgets.items()
                    for row in v["per_seed"]})
    distinct: dict = {}
    for k, p in checked.items():
        distinct.setdefault(plan_id(p), k)
    ejobs = [dict(root=st.root, checkpoint=str(Path(st.retrain_dir(checked[k], 1)) / "checkpoint.pth"),
                  out=str(Path(st.retrain_dir(checked[k], 1)) / "model.onnx"), height=st.cfg.data.height,
                  width=st.cfg.data.width, target=st.cfg.data.targets[0]) for k in distinct.values()]
    return dict(zip(distinct.values(), st.pool.map(export_check, ejobs, f"{st.name}: export --check")))


def run_config(name: str, cfg_file: Path, a, pool: jobs.Pool, sizes: dict) -> dict:
    """The protocol's stages (module docstring) for one configuration; its results.json summary."""
    st = Study(name, cfg_file, a, pool, sizes)
    arch, randoms, noise, yard = yardstick(st)
    variants, need, table_file = run_searches(st)
    djobs, derived = derive_methods(st)
    predicted = ranking(st, variants, randoms)
    projected = projections(st, variants)
    paired, paired_osnet, paired_methods = paired_tests(st, arch, djobs, derived)
    budgets = budget_searches(st, arch, table_file)
    latency = latencies(st, arch, derived, budgets)
    checks = export_checks(st, arch, derived, budgets)
    summary = summarise(st.cfg, st.space, noise, yard, randoms, derived, djobs, st.result, predicted, paired,
                        a.default, st.yseeds)
    summary["paired_osnet"] = {"pairs": paired_osnet, **_diff_stats([x - y for x, y in paired_osnet])}
    summary["paired_methods"] = paired_methods
    summary["export_check"] = checks
    summary["stem_projection"] = projected
    _add_latency(summary, arch, derived, djobs, latency, sizes["latency_repeats"])
    summary["budgets"] = budgets
    summary["search_minutes"] = {v: [search_minutes(st.search_dir(v, sd)) for sd in range(1, need[v] + 1)]
                                 for v in variants}
    # each search variant's own budget (the configuration's search.epochs is only lodo's), from its runs' config.yaml
    summary["config"]["search_steps_by_variant"] = {v: search_steps(st.search_dir(v, 1)) for v in variants}
    # where each search's alphas ended: per seed, every position's probabilities (final_alphas.json)
    summary["final_probs"] = {v: [{k: p["probs"] for k, p in json.loads(
        (Path(st.search_dir(v, sd)) / "final_alphas.json").read_text())["positions"].items()} for sd in st.seeds]
        for v in variants}
    (st.out / "results.json").write_text(json.dumps(summary, indent=2))
    return summary


# ----------------------------------------------------------------------------- latency and summaries
def cost_table(root: Path, name: str, cfg, sizes: dict) -> Path:
    """The configuration's cost table on the LATENCY path (osnas profile). Configurations with the
    same space and width share one: a sibling's table is copied rather than measured again."""
    import shutil

    import yaml

    table = root / name / f"cost_{LATENCY['backend']}.yaml"
    if table.is_file():
        return table
    table.parent.mkdir(parents=True, exist_ok=True)
    for other in sorted(root.glob(f"*/cost_{LATENCY['backend']}.yaml")):
        head = yaml.safe_load(other.read_text())
        if head.get("space") == cfg.search.space and head.get("arch") == cfg.model.arch:
            print(f"{name}: cost table {other} (same space and width)", file=sys.stderr, flush=True)
            shutil.copyfile(other, table)
            return table
    from osnas.profile import run_profile

    run_profile(space=cfg.search.space, arch=cfg.model.arch, backend=LATENCY["backend"], height=LATENCY["height"],
                width=LATENCY["width"], batch=LATENCY["batch"], threads=LATENCY["threads"],
                repeats=sizes["latency_repeats"], out=str(table), clock=LATENCY["clock"], progress=False)
    return table


def measure_latencies(plans: dict, cfg, repeats: int) -> dict:
    """{plan id: {median_ms, iqr_ms, relative}} of every distinct plan, timed interleaved with the
    all-BN network on the LATENCY backend and input size, at the test-bed's width."""
    from osnas.models import build_model
    from osnas.models.genotype import Genotype
    from osnas.models.latency import measure_networks

    nets = {"all_bn": build_model(cfg.model.arch).eval()}
    for p in plans.values():
        nets.setdefault(plan_id(p), build_model(Genotype(plan=p, arch=cfg.model.arch)).eval())
    print(f"latency: {len(nets)} networks, {LATENCY}", file=sys.stderr, flush=True)
    t = measure_networks(nets, LATENCY["backend"], LATENCY["height"], LATENCY["width"], LATENCY["batch"],
                         LATENCY["threads"], repeats, LATENCY["clock"])
    # relative latency: the median over rounds of (this network / the all-BN network) in the same
    # round, so a drift of the machine's speed between rounds cancels (a ratio of medians does not)
    ref = t["all_bn"]["times_ms"]
    out = {}
    for k, v in t.items():
        ratios = [a / b for a, b in zip(v["times_ms"], ref)]
        q1, med, q3 = statistics.quantiles(ratios, n=4)
        out[k] = {"median_ms": v["median_ms"], "iqr_ms": v["iqr_ms"], "relative": med, "relative_iqr": q3 - q1}
    return out


def _add_latency(summary: dict, arch: dict, derived: list, djobs: list, latency: dict, repeats: int) -> None:
    for k, p in arch.items():
        summary["yardstick"][k]["latency_ms"] = latency[plan_id(p)]["median_ms"]
        summary["yardstick"][k]["relative_latency"] = latency[plan_id(p)]["relative"]
    for m, r in summary["methods"].items():
        rows = [d for j, d in zip(djobs, derived) if j["method"] == m]
        for row, d in zip(r["per_seed"], rows):
            row["latency_ms"] = latency[plan_id(d["plan"])]["median_ms"]
            row["relative_latency"] = latency[plan_id(d["plan"])]["relative"]
    summary["latency"] = dict(LATENCY, repeats=repeats, all_bn_ms=latency["all_bn"]["median_ms"],
                              all_bn_iqr_ms=latency["all_bn"]["iqr_ms"],
                              osnet_relative=latency[plan_id(arch["osnet"])]["relative"],
                              osnet_relative_iqr=latency[plan_id(arch["osnet"])]["relative_iqr"])


def search_steps(run_dir) -> int:
    """The weight steps a search ran (search.epochs x search.steps_per_epoch of its own config.yaml)."""
    from osnas.config import build_config
    from osnas.rundir import CONFIG
    from osnas.utils import load_yaml

    cfg = build_config(base=load_yaml(Path(run_dir) / CONFIG, "run config"))
    return cfg.search.epochs * cfg.search.steps_per_epoch


def search_minutes(run_dir) -> float:
    """Running time of a search from its log.txt (HH:MM:SS lines up to the `done:` line), without
    the time a killed run lay idle before it was resumed (the gap before each `resumed` line)."""
    lines = [ln for ln in (Path(run_dir) / "log.txt").read_text().splitlines() if ln[:8].count(":") == 2]
    done = [i for i, ln in enumerate(lines) if " done: " in ln]
    if not lines or not done:
        return float("nan")

    def sec(ln):
        h, m, x = (int(v) for v in ln[:8].split(":"))
        return 3600 * h + 60 * m + x

    lines = lines[:done[-1] + 1]
    return sum((sec(b) - sec(a)) % 86400 for a, b in zip(lines, lines[1:]) if " resumed " not in b) / 60.0


def _diff_stats(diffs: list) -> dict:
    """Mean and std (0 for one value) of paired differences."""
    return {"diff_mean": statistics.mean(diffs), "diff_std": statistics.stdev(diffs) if len(diffs) > 1 else 0.0}


def _per_variant(results: list, variants: list, n: int) -> dict:
    """Results of jobs made variant by variant, n seeds each: {variant: its n results}."""
    return {v: results[i * n:(i + 1) * n] for i, v in enumerate(variants)}


def _method_summary(rows: list, result, population: list, population_mean: list, positions: list,
                    yseeds: list) -> dict:
    """One method's entry of results.json from its (derive job, derived) rows."""
    per_seed = []
    for j, d in rows:
        r = result(d["plan"])
        per_seed.append({"seed": j["seed"], "choices": d["choices"], "mAP": r["mAP"], "rank1": r["rank1"],
                         "derive_seconds": d.get("derive_seconds"),
                         "targets": r["targets"], "percentile": percentile(r["mAP"], population)})
        if len(yseeds) > 1:
            seeds_map = [result(d["plan"], s)["mAP"] for s in yseeds]
            per_seed[-1].update(mAP_seeds=seeds_map,
                                percentile_resolved=percentile(statistics.mean(seeds_map), population_mean))
    plans = [json.dumps(d["plan"], sort_keys=True) for _, d in rows]
    if len(rows) == 1:  # one answer: its agreement is its runs' own
        same = "–"
        agree = {p: float(rows[0][1]["agreement"].get(p, 1.0)) for p in positions}
    else:
        same = f"{max(plans.count(p) for p in plans)}/{len(plans)}"
        agree = {p: max(sum(s["choices"][p] == c for s in per_seed) for c in {s["choices"][p] for s in per_seed})
                 / len(per_seed) for p in positions}
    maps = [s["mAP"] for s in per_seed]
    out = {"per_seed": per_seed, "same_genotype": same,
           "position_agreement": agree, "mean_position_agreement": statistics.mean(agree.values()),
           "mAP_mean": statistics.mean(maps), "mAP_std": statistics.stdev(maps) if len(maps) > 1 else 0.0,
           "min_percentile": min(s["percentile"] for s in per_seed)}
    if len(yseeds) > 1:
        out["min_percentile_resolved"] = min(s["percentile_resolved"] for s in per_seed)
    return out


def summarise(cfg, space, noise, yard, randoms, derived, djobs, result, predicted, paired, default,
              yseeds=(1,)) -> dict:
    """results.json of one configuration. Every method's genotypes are placed among the yardstick
    by one retrain (seed 1 against seed 1); with several yardstick seeds they are placed by their
    mean over those seeds against the yardstick's means too (`percentile_resolved`), and the
    Kendall tau is taken against the means."""
    from scipy.stats import kendalltau

    from results_protocol import mean_map

    rand_maps = [mean_map(yard[f"random{i:02d}"]) for i in range(len(randoms))]
    population = [v["mAP"] for v in yard.values()]
    population_mean = [mean_map(v) for v in yard.values()]
    positions = [p.name for p in space.positions]
    methods = {m: _method_summary([(j, d) for j, d in zip(djobs, derived) if j["method"] == m], result, population,
                                  population_mean, positions, list(yseeds))
               for m in dict.fromkeys(j["method"] for j in djobs)}
    taus = {v: [float(kendalltau([-p for p in pred], rand_maps).statistic)  # lower loss = predicted better
                for pred in preds] for v, preds in predicted.items()}
    nm = [r["mAP"] for r in noise]
    return {
        "config": {"sources": cfg.data.sources, "targets": cfg.data.targets, "space": space.name,
                   "arch": cfg.model.arch, "search_steps": cfg.search.epochs * cfg.search.steps_per_epoch,
                   "retrain_steps": cfg.train.epochs * cfg.train.steps_per_epoch},
        "noise": {"mAP": nm, "rank1": [r["rank1"] for r in noise],
                  "mAP_std": statistics.stdev(nm) if len(nm) > 1 else 0,
                  "rank1_std": statistics.stdev([r["rank1"] for r in noise]) if len(nm) > 1 else 0,
                  "targets": [r["targets"] for r in noise]},
        "yardstick": dict(yard),
        "yardstick_seeds": len(yseeds),
        "random_architectures": randoms,
        "methods": methods,
        "kendall_tau": taus.get("lodo", []),
        "kendall_tau_by_search": taus,
        "paired": {"default": default, "pairs": paired, **_diff_stats([x - y for x, y in paired])},
    }


# ----------------------------------------------------------------------------- command line
def parse_args(argv=None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="runs/protocol")
    ap.add_argument("--data-root", default=None)
    ap.add_argument("--configs", default="style,geometry", help=f"comma-separated, of {', '.join(CONFIGS)}")
    ap.add_argument("--quick", action="store_true", help="a much smaller protocol (minutes): checks the machinery")
    ap.add_argument("--jobs", type=int, default=2, help="jobs run at a time (one thread each)")
    # vote3-stem: three uniform supernets per answer, each derived alone --stem-first, the majority per position;
    # over 10 answers the only recipe at >= 90% agreement on both configurations (experiments/synthetic/defaults/)
    ap.add_argument("--default", default="vote3-stem", help="the method the paired test checks (its most frequent "
                                                            "genotype)")
    ap.add_argument("--methods", default=",".join(METHODS),
                    help="comma-separated recipes of recipes.py, of " + ", ".join(METHODS) + " (default all: about "
                         "4.5 h on 2 cores from scratch; vote3-stem alone about 1 h, 1.75 h with --yardstick-seeds 3)")
    ap.add_argument("--paired", default="", help="more methods whose most frequent genotype is retrained with "
                                                  "the noise seeds and paired (comma-separated)")
    ap.add_argument("--yardstick-seeds", type=int, default=1,
                    help="retrain every yardstick architecture and every derived genotype with this many seeds and "
                         "place the genotypes by the means (one retrain cannot: OSNet-AIN's own retrains fall in and "
                         "out of the top 10%%); each extra seed adds about 30 min per configuration on 2 cores "
                         "with every method")
    ap.add_argument("--search-seeds", type=int, default=0,
                    help="answers per method (default 5; --quick 2): agreement over 5 seeds moved by up to 11 "
                         "points with the seeds drawn (FINDINGS.md), more seeds separate recipes that 5 cannot")
    ap.add_argument("--results", default=None, help="write RESULTS.md here (default: OUT/RESULTS.md)")
    ap.add_argument("--budgets", default="", help="comma-separated relative latency budgets for cost-aware "
                                                   "searches (e.g. 1.01,1.03); none by default")
    ap.add_argument("--budget-configs", default="", help="the configurations the --budgets searches run on "
                                                          "(comma-separated; default: all of --configs)")
    return check_args(ap.parse_args(argv))


def check_args(a: argparse.Namespace) -> argparse.Namespace:
    """Every argument checked before any work; a bad one is one line and a non-zero exit."""
    a.budget_configs = [c for c in (a.budget_configs or a.configs).split(",") if c]
    a.methods = [m for m in a.methods.split(",") if m]
    a.paired = [m for m in a.paired.split(",") if m]
    for m in dict.fromkeys(a.methods + a.paired + [a.default]):
        why = recipes.refusal(m)
        if why:
            raise SystemExit(f"run_protocol: {why}")
    if not a.methods:
        raise SystemExit(f"run_protocol: --methods (none): expected some of {', '.join(METHODS)}")
    if a.default not in a.methods or not set(a.paired) <= set(a.methods):
        raise SystemExit(f"run_protocol: --default {a.default} and --paired {','.join(a.paired)} must be among "
                         f"--methods {','.join(a.methods)}")
    try:
        a.budgets = [float(b) for b in a.budgets.split(",") if b.strip()]
    except ValueError:
        raise SystemExit(f"run_protocol: --budgets {a.budgets!r}: expected comma-separated numbers") from None
    if a.search_seeds < 0 or a.search_seeds == 1:
        raise SystemExit(f"run_protocol: --search-seeds {a.search_seeds}: expected 2 or more (agreement needs two)")
    if a.yardstick_seeds < 1:
        raise SystemExit(f"run_protocol: --yardstick-seeds {a.yardstick_seeds}: expected 1 or more")
    a.names = [c for c in a.configs.split(",") if c]
    bad = [c for c in a.names if c not in CONFIGS]
    if bad:
        raise SystemExit(f"run_protocol: unknown configuration {bad}; valid: {', '.join(CONFIGS)}")
    return a


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    a = parse_args(argv)
    sizes = QUICK if a.quick else FULL
    if a.quick:  # smaller generated domains too (unless the caller chose a preset)
        os.environ.setdefault("OSNAS_SYNTH_PRESET", "small")
    pool = jobs.Pool(a.jobs)
    t0 = time.time()
    try:
        summaries = {n: run_config(n, CONFIGS[n], a, pool, sizes) for n in a.names}
    finally:
        pool.close()
    info = {"args": provenance.command(argv, a.out, a.data_root), "minutes": round((time.time() - t0) / 60, 1),
            "commit": provenance.commit(HERE)}
    write_results(summaries, Path(a.results or Path(a.out) / "RESULTS.md"), info, quick=a.quick)


if __name__ == "__main__":
    from osnas.errors import OsnasError

    try:
        main()
    except OsnasError as e:  # bad input: one line, exit 2, as the osnas commands do
        print(f"run_protocol: {e}", file=sys.stderr)
        sys.exit(2)
