"""Is the search's answer trustworthy? The whole protocol on the synthetic test-bed, one command.

For each test-bed configuration (testbed_style.yaml: domain shift IN can remove; and
testbed_geometry.yaml: shift IN cannot remove, where IN should not help):

1. noise floor   OSNet-AIN retrained with NOISE_SEEDS seeds: std of the held-out mAP (plain
                 OSNet too: the answer "no IN at all", paired with the default below);
2. yardstick     RANDOM architectures drawn uniformly from the searched space, plus OSNet,
                 OSNet-IBN and OSNet-AIN, each retrained once (--yardstick-seeds N: N times,
                 and every method's genotypes too, placed by their means): the held-out mAP
                 distribution;
3. methods       every search method on SEARCH_SEEDS seeds:
                   argmax     bilevel leave-one-domain-out search, argmax of the alphas
                   perturb    the same runs, perturbation-based selection (DARTS-PT)
                   consensus  the same runs, mean probabilities over the seeds
                   anneal     entropy-annealed search, fewer but larger alpha steps
                   unseen     alphas judged on a source the weights never train on
                   sampled    single-path weight steps (one candidate per position drawn
                              from the alphas), an alpha step every 2 weight steps: a
                              step costs about 1.5x a plain one (1.48x), so the same
                              budget buys 250 steps instead of 150; argmax of the alphas
                   sampled-unseen   the same, alphas judged as in `unseen`
                   sampled-budget   `sampled` with a latency budget: the alpha loss grows
                              when the alphas' expected latency (the LATENCY cost table)
                              exceeds BUDGET x the all-BN network's, so IN is kept only
                              where it pays for its cost
                   retrieval  the sampled-unseen runs, derived by asking each supernet
                              which one-hot subnet retrieves best on the unseen source
                              (BN re-estimated per subnet; osnas/derive/retrieval.py), the
                              mean mAP within each validation batch
                   retrieval-pooled   the same, the validation batches pooled into one
                              gallery and the standard error taken over its identities
                   uniform    single-path weight steps drawn uniformly and no alpha step
                              (a step costs 1.01x a plain one: 350 steps for the same
                              budget), the unseen source kept out; derived by retrieval
                   uniform-pooled   the uniform runs derived by retrieval-pooled
                   pair-pooled   per seed, its uniform and its sampled-unseen run derived
                              together by retrieval-pooled: their scores pooled, each
                              position choosing among the candidates one of the two picks
                              on its own (twice the search budget)
                   pair3-pooled  the same with the sampled-unseen half stepping the alphas
                              every 3 weight steps (1.32x a plain step, 275 steps: about
                              the same budget) instead of every 2 (1.48x, at the 1.5x limit)
                   vote3      per seed, three uniform runs (seeds 3s-2 .. 3s), each derived
                              alone by retrieval-pooled, the majority per position (derive
                              --select vote; three times the search budget)
                   vote3-stem   vote3 with each run derived --stem-first: a run's block IN
                              site moves to the stem where that costs no more than the gate:
                              the default
                 per method: seed agreement, percentile of each derived genotype in the
                 yardstick distribution, held-out mAP;
4. ranking       Kendall tau between the supernet's held-out score of each yardstick
                 architecture (one-hot weights, per search seed of the lodo and sampled
                 searches: the alpha loss; of the sampled-unseen and uniform searches: the
                 retrieval score each retrieval method derives with) and its retrained
                 mAP; and per seed the supernet's own verdict on the stem (held-out loss
                 projected onto BN minus onto IN, ± its error over the alpha batches):
                 does each seed's supernet see the same thing?
5. paired test   the default method's genotype against OSNet-AIN (and plain OSNet) over the
                 noise seeds;
6. budgets       (--budgets, on --budget-configs) cost-aware searches: the space profiled on
                 the LATENCY backend (osnas profile, cost_<backend>.yaml), then BUDGET_SEEDS lodo searches per
                 budget with search.cost_budget, derived by argmax and consensus, retrained;
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
config.yaml, never the configuration file again). Two jobs run at a time (--jobs), one
thread each. Results: results.json per configuration, RESULTS.md and figures.

    python experiments/synthetic/run_protocol.py --out runs/default --methods vote3-stem --yardstick-seeds 3
    python experiments/synthetic/run_protocol.py --out runs/protocol --budgets 1.03,1.06 --budget-configs style
    python experiments/synthetic/run_protocol.py --out runs/protocol-quick --quick   # minutes
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import statistics
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

HERE = Path(__file__).resolve().parent
CONFIGS = {"style": HERE / "testbed_style.yaml", "geometry": HERE / "testbed_geometry.yaml"}
NAMED = ("osnet", "osnet_ibn", "osnet_ain")
METHODS = ("argmax", "perturb", "consensus", "anneal", "unseen", "sampled", "sampled-unseen", "sampled-budget",
           "retrieval", "retrieval-pooled", "uniform", "uniform-pooled", "pair-pooled", "pair3-pooled", "vote3",
           "vote3-stem")
BUDGET = 1.03  # sampled-budget's latency budget, relative to the all-BN network on the LATENCY path
# about the same budget in plain OSNet steps (experiments/benchmarks/bench_search_step.json, stem searched, x1.0):
# lodo 150 steps at 2.1x (316), sampled 250 at 1.48x (370), uniform 350 at 1.01x (354). The budgets were set
# from an earlier run of the bench (reference space, best of 5: 2.4x, 1.5x, 1.03x); on the test-bed itself the
# searches take 1.0-2.1 min per seed on one thread (RESULTS.md, the wall-time column)
_SAMPLED = ["search.weight_step=sampled", "search.alpha_every=2", "search.epochs=10"]
_UNSEEN = ["search.objective=unseen", "search.alpha_loss=triplet"]  # the last source kept out, a metric alpha loss
SEARCHES = {  # search variant -> extra --set overrides (the configuration file's, then these, then --quick's)
    "lodo": [],
    "anneal": ["search.entropy_weight=0.5", "search.alpha_every=2", "search.alpha_lr=0.1"],
    "unseen": _UNSEEN,
    "sampled": _SAMPLED,
    "sampled-unseen": _SAMPLED + _UNSEEN,
    "sampled-budget": _SAMPLED + ["search.cost_table={cost_table}", f"search.cost_budget={BUDGET:g}"],
    # no alpha step: 1.01x a plain step (bench_search_step.json), so the same budget buys 350 steps
    "uniform": ["search.weight_step=uniform", "search.epochs=14"] + _UNSEEN,
    # sampled-unseen with an alpha step every 3 weight steps: 1.32x a plain step, so 275 steps
    "sampled3-unseen": ["search.weight_step=sampled", "search.alpha_every=3", "search.epochs=11"] + _UNSEEN,
}
METHOD_SEARCH = {"argmax": "lodo", "perturb": "lodo", "consensus": "lodo", "anneal": "anneal", "unseen": "unseen",
                 "sampled": "sampled", "sampled-unseen": "sampled-unseen", "sampled-budget": "sampled-budget",
                 "retrieval": "sampled-unseen", "retrieval-pooled": "sampled-unseen", "uniform": "uniform",
                 "uniform-pooled": "uniform", "pair-pooled": ("uniform", "sampled-unseen"),
                 "pair3-pooled": ("uniform", "sampled3-unseen"), "vote3": "uniform", "vote3-stem": "uniform"}
SELECT = {"perturb": "perturb", "consensus": "consensus", "retrieval": "retrieval",  # derive --select (else argmax)
          "retrieval-pooled": "retrieval-pooled", "uniform": "retrieval", "uniform-pooled": "retrieval-pooled",
          "pair-pooled": "retrieval-pooled", "pair3-pooled": "retrieval-pooled", "vote3": "vote", "vote3-stem": "vote"}
STEM_FIRST = ("vote3-stem",)  # methods derived with --stem-first
# methods whose every answer combines several searches of its variant: answer s reads the seeds
# (s-1)*K+1 .. s*K (vote3: three uniform supernets, each derived alone, the majority per position)
RUNS_PER_ANSWER = {"vote3": 3, "vote3-stem": 3}


def searches_of(method: str) -> tuple:
    """The search variants a method derives from, in order (pair-pooled: two per seed)."""
    v = METHOD_SEARCH[method]
    return v if isinstance(v, tuple) else (v,)


def answer_seeds(method: str, seed: int) -> list:
    """The search seeds one answer (one seed of the method) of `method` reads, per search variant."""
    k = RUNS_PER_ANSWER.get(method, 1)
    return list(range((seed - 1) * k + 1, seed * k + 1))


RETRIEVAL_BATCHES = 16  # validation (and recalibration) batches of the unseen source per subnet score
# their supernets' retrieval scores rank the yardstick (tau by method), with the gallery their derive uses
RETRIEVAL_METHODS = ("retrieval", "retrieval-pooled", "uniform", "uniform-pooled", "pair-pooled", "pair3-pooled",
                     "vote3", "vote3-stem")
# the retrieval score each method's tau reads: its derive's own, and for the vote (which adds up answers, not
# scores) the retrieval-pooled units of the answer's supernets pooled, as the pairs pool theirs
TAU_SCORER = {"vote3": "retrieval-pooled", "vote3-stem": "retrieval-pooled"}
RANKED = ("lodo", "sampled")  # the search variants whose supernets score the yardstick (Kendall tau)
# ... and whose stem verdicts are compared
PROJECTED = ("lodo", "sampled", "unseen", "sampled-unseen", "sampled3-unseen")
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
def _worker_init():
    import torch

    torch.set_num_threads(1)
    os.environ["OMP_NUM_THREADS"] = "1"


def _plan_id(plan: dict) -> str:
    return hashlib.sha256(json.dumps(plan, sort_keys=True).encode()).hexdigest()[:12]


def retrain_eval(job: dict) -> dict:
    """Retrain a genotype with a seed and evaluate it on the held-out targets; cached on disk."""
    from osnas.evaluate import run_eval_crossdomain
    from osnas.retrain import resolve_retrain_config, train

    from osnas.models.genotype import load_genotype, named_genotype

    out = Path(job["out"])
    metrics = out / "eval" / "metrics.json"
    g = job["genotype"]
    plan = (load_genotype(g) if Path(g).suffix == ".yaml" else named_genotype(g)).plan
    if _plan_id(plan) != out.parent.name:  # the folder is named by the architecture it must hold
        raise RuntimeError(f"retrain {out}: the genotype {g} is architecture {_plan_id(plan)}, not {out.parent.name}")
    if not metrics.is_file():
        resume = (out / "checkpoint.pth").is_file()
        overrides = [f"run.seed={job['seed']}", "run.progress=false", *job["overrides"]]
        # a resumed run reads its whole configuration from its own config.yaml: passing the configuration
        # file again would put the file's settings back over the job's overrides
        cfg, g, rdir = resolve_retrain_config(job["genotype"], None, job["root"], None if resume else job["config"],
                                              [] if resume else overrides, str(out), resume)
        if not resume:
            g.name = job["name"]
        train(cfg, g, rdir, resume=resume)
        run_eval_crossdomain([str(out / "checkpoint.pth")], ",".join(cfg.data.targets), data_root=job["root"],
                             out=str(out / "eval"))
    m = json.loads(metrics.read_text())
    t = next(iter(m["models"].values()))["targets"]
    return {"targets": {k: {"mAP": v["mAP"], "rank1": v["rank1"]} for k, v in t.items()},
            "mAP": statistics.mean(v["mAP"] for v in t.values()),
            "rank1": statistics.mean(v["rank1"] for v in t.values())}


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


def search(job: dict) -> str:
    from osnas.search import run_search

    out = Path(job["out"])
    if not (out / "final_alphas.json").is_file():
        resume = (out / "checkpoint.pth").is_file()
        # resumed: the run's own config.yaml is its whole configuration (the file again would undo the overrides)
        run_search(data_root=job["root"], config_file=None if resume else job["config"], out=str(out),
                   resume=resume,
                   overrides=[] if resume else [f"run.seed={job['seed']}", "run.progress=false", *job["overrides"]])
    return str(out)


def derive(job: dict) -> dict:
    from osnas.derive import run_derive
    from osnas.models.genotype import load_genotype

    out = Path(job["out"])
    took = out.with_suffix(".seconds")  # the derive's own wall time, kept beside the genotype
    out.parent.mkdir(parents=True, exist_ok=True)
    if not out.is_file():
        t0 = time.time()
        run_derive(job["runs"] if len(job["runs"]) > 1 else job["runs"][0], out=str(out), select=job["select"],
                   data_root=job["root"], batches=job.get("batches", 4), stem_first=job.get("stem_first", False),
                   measure=False)  # timed later, all together, with the machine idle
        took.write_text(f"{time.time() - t0:.1f}\n")
    g = load_genotype(out)
    return {"file": str(out), "plan": g.plan, "choices": {p: v["choice"] for p, v in g.positions.items()},
            "agreement": dict(g.agreement or {}), "cost": dict(g.cost or {}),
            "derive_seconds": float(took.read_text()) if took.is_file() else None}


def supernet_scores(job: dict) -> list:
    """The supernet's held-out score of each architecture, lower = better: scorer "loss", its
    alpha loss with one-hot weights; "retrieval" ("retrieval-pooled"), minus the retrieval mAP of
    `--select retrieval` (`--select retrieval-pooled`). `runs` (the pairs): the runs' units
    pooled, as derive pools them; each run's units are cached in its own folder, so the pairs and
    `uniform-pooled` score the uniform supernet once between them."""
    from osnas.derive import PerturbScorer, load_run, onehot
    from osnas.derive.retrieval import GALLERIES, SubnetScorer

    scorer_kind = job.get("scorer", "loss")
    runs = job.get("runs") or [job["run"]]
    if scorer_kind not in GALLERIES:
        key = {"choices": job["choices"], "batches": job["batches"]}
        cache = Path(runs[0]) / f"scores_{_plan_id(key)}.json"
        if not cache.is_file():
            run = load_run(runs[0])
            scorer = PerturbScorer(run, batches=job["batches"], data_root=job["root"])
            ws = [[onehot(len(p.candidates), p.names.index(c[p.name])) for p in run.space.positions]
                  for c in job["choices"]]
            cache.write_text(json.dumps([scorer(w) for w in ws]))
        return json.loads(cache.read_text())
    # "retrieval" scores within each batch, "retrieval-pooled" pooled: per run, per architecture, its units
    key = {"choices": job["choices"], "batches": job["batches"], "scorer": scorer_kind}
    per_run = []
    for r in runs:
        cache = Path(r) / f"units_{_plan_id(key)}.json"
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


# ----------------------------------------------------------------------------- the protocol
class Pool:
    """Runs job lists on --jobs worker processes and says how far it got."""

    def __init__(self, jobs: int):
        self.ex = ProcessPoolExecutor(jobs, initializer=_worker_init) if jobs > 1 else None
        self.t0 = time.time()

    def map(self, fn, jobs: list, what: str) -> list:
        if not jobs:
            return []
        print(f"[{(time.time() - self.t0) / 60:6.1f} min] {what}: {len(jobs)} job(s)", file=sys.stderr, flush=True)
        if self.ex is None:
            _worker_init()
            return [fn(j) for j in jobs]
        return list(self.ex.map(fn, jobs))

    def close(self) -> None:
        """Stop the workers now: left to the interpreter's exit, the executor's wake-up pipe
        can already be closed ("Exception ignored ... Bad file descriptor" after a quick run)."""
        if self.ex is not None:
            self.ex.shutdown()


def _once(jobs: list, done=()) -> list:
    """The jobs whose run folder is not in `done`, one per folder (two jobs on one folder would
    train into it at once; the later job of a folder is kept)."""
    return list({j["out"]: j for j in jobs if j["out"] not in done}.values())


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


def run_config(name: str, cfg_file: Path, a, pool: Pool, sizes: dict) -> dict:
    from osnas.config import build_config
    from osnas.data import data_root
    from osnas.data.synth import ensure_synth
    from osnas.derive.retrieval import GALLERIES
    from osnas.models.genotype import Genotype, load_genotype, named_genotype
    from osnas.models.space import load_space

    cfg = build_config(str(cfg_file), sizes.get("overrides", []))
    root = str(data_root(a.data_root or cfg.data.root))
    ensure_synth(root, cfg.data.sources + cfg.data.targets)
    out = Path(a.out) / name
    extra = sizes.get("overrides", [])
    space = load_space(cfg.search.space)
    base = dict(root=root, config=str(cfg_file), overrides=extra)
    gdir = out / "genotypes"
    gdir.mkdir(parents=True, exist_ok=True)

    def genotype_file(label: str, plan: dict) -> str:
        """genotypes/LABEL.yaml holding `plan`; rewritten when a label (the paired default) now
        names another architecture, so a retrain never reads a stale file."""
        path = gdir / f"{label}.yaml"
        if not path.is_file() or load_genotype(path).plan != plan:
            Genotype(plan=plan, name=label, arch=cfg.model.arch, space=space.name, space_hash=space.sha256).save(path)
        return str(path)

    # 1-2. noise floor and yardstick (one retrain per distinct architecture and seed)
    randoms = sample_architectures(space, sizes["random"], seed=12345)
    arch = {n: named_genotype(n).plan for n in NAMED}
    arch.update({f"random{i:02d}": space.plan_for(c) for i, c in enumerate(randoms)})
    noise_seeds = list(range(1, sizes["noise_seeds"] + 1))
    yseeds = list(range(1, a.yardstick_seeds + 1))  # every yardstick architecture's retrain seeds
    jobs = [dict(base, genotype=genotype_file(k, p), name=k, seed=s,
                 out=str(out / "retrain" / _plan_id(p) / f"seed{s}")) for k, p in arch.items() for s in yseeds]
    # OSNet-AIN (the noise floor, and the reference a search must beat) and plain OSNet (the answer
    # "no IN at all") with every noise seed
    jobs += [dict(base, genotype=n, name=n, seed=s, out=str(out / "retrain" / _plan_id(arch[n]) / f"seed{s}"))
             for n in ("osnet_ain", "osnet") for s in noise_seeds[1:]]
    jobs = _once(jobs)  # a retrain both lists ask for runs once
    res = pool.map(retrain_eval, jobs, f"{name}: noise floor and yardstick retrains")
    by_out = {j["out"]: r for j, r in zip(jobs, res)}

    def result(plan: dict, seed: int = 1) -> dict:
        return by_out[str(out / "retrain" / _plan_id(plan) / f"seed{seed}")]

    noise = [result(arch["osnet_ain"], s) for s in noise_seeds]
    yard = {k: dict(result(p), **({"mAP_seeds": [result(p, s)["mAP"] for s in yseeds]} if len(yseeds) > 1 else {}))
            for k, p in arch.items()}

    # 3. searches, then every selection method
    seeds = list(range(1, (a.search_seeds or sizes["search_seeds"]) + 1))
    table_file = cost_table(Path(a.out), name, cfg, sizes)
    need: dict = {}  # search variant -> how many seeds of it --methods read
    for m in a.methods:
        for v in searches_of(m):
            need[v] = max(need.get(v, 0), answer_seeds(m, len(seeds))[-1])
    variants = [v for v in SEARCHES if v in need]
    sjobs = [dict(base, seed=s, overrides=[o.format(cost_table=table_file) for o in SEARCHES[v]] + extra,
                  out=str(out / "search" / v / f"seed{s}")) for v in variants for s in range(1, need[v] + 1)]
    pool.map(search, sjobs, f"{name}: searches")

    def answer_runs(m: str, s: int) -> list:  # the search runs one seed (answer) of method m reads
        return [str(out / "search" / v / f"seed{j}") for v in searches_of(m) for j in answer_seeds(m, s)]

    djobs = []
    for m in a.methods:
        runs = [answer_runs(m, s) for s in seeds]
        if m == "consensus":
            djobs.append(dict(root=root, method=m, seed="all", runs=[r for rs in runs for r in rs], select="consensus",
                              out=str(out / "derived" / f"{m}.yaml")))
        else:
            djobs += [dict(root=root, method=m, seed=s, runs=rs, select=SELECT.get(m, "argmax"),
                           batches=RETRIEVAL_BATCHES if SELECT.get(m) in (*GALLERIES, "vote") else 4,
                           stem_first=m in STEM_FIRST,
                           out=str(out / "derived" / f"{m}-seed{s}.yaml")) for s, rs in zip(seeds, runs)]
    derived = pool.map(derive, djobs, f"{name}: derive ({', '.join(a.methods)})")
    rjobs, seen = [], set(by_out)
    for d in derived:
        o = str(out / "retrain" / _plan_id(d["plan"]) / "seed1")
        if o not in seen:
            seen.add(o)
            rjobs.append(dict(base, genotype=d["file"], name=Path(d["file"]).stem, seed=1, out=o))
    by_out.update({j["out"]: r for j, r in zip(rjobs, pool.map(retrain_eval, rjobs, f"{name}: derived retrains"))})
    # every method's genotypes with the yardstick's other seeds too: their percentiles are then read on
    # means, every method alike (one retrain cannot place a genotype: OSNet-AIN's own fall in and out of the top 10%)
    xjobs = [dict(base, genotype=d["file"], name=Path(d["file"]).stem, seed=s,
                  out=str(out / "retrain" / _plan_id(d["plan"]) / f"seed{s}"))
             for d in derived for s in yseeds[1:]]
    xjobs = _once(xjobs, done=by_out)
    by_out.update({j["out"]: r for j, r in zip(xjobs, pool.map(retrain_eval, xjobs,
                                                                  f"{name}: the derived genotypes, more seeds"))})

    # 4. ranking: the supernet's view of the yardstick architectures, per search seed
    ranked, projected = [v for v in RANKED if v in variants], [v for v in PROJECTED if v in variants]
    kjobs = [dict(root=root, run=str(out / "search" / v / f"seed{s}"), batches=sizes.get("batches", 4),
                  choices=[c for c in randoms]) for v in ranked for s in seeds]
    for m in [m for m in RETRIEVAL_METHODS if m in a.methods]:
        ranked.append(m)
        kjobs += [dict(root=root, runs=answer_runs(m, s), batches=RETRIEVAL_BATCHES, choices=[c for c in randoms],
                       scorer=TAU_SCORER.get(m, SELECT[m])) for s in seeds]
    # every supernet a retrieval method reads is scored once, two at a time; the methods then pool the cached units
    ujobs = list({(j["runs"][i], j["scorer"]): dict(j, runs=[j["runs"][i]]) for j in kjobs if "runs" in j
                  for i in range(len(j["runs"]))}.values())
    pool.map(supernet_scores, ujobs, f"{name}: retrieval scores of the random architectures, per supernet")
    scores = pool.map(supernet_scores, kjobs, f"{name}: supernet scores of the random architectures")
    predicted = _per_variant(scores, ranked, len(seeds))
    pj = [dict(root=root, run=str(out / "search" / v / f"seed{s}"), batches=sizes.get("batches", 4) * 2)
          for v in projected for s in seeds]
    proj = pool.map(stem_projection, pj, f"{name}: stem projections per search seed")
    projections = _per_variant(proj, projected, len(seeds))

    # 5. paired: the default method's genotype (and --paired methods') against OSNet-AIN over the noise seeds
    modals = {m: _modal([d["plan"] for j, d in zip(djobs, derived) if j["method"] == m])
              for m in dict.fromkeys([a.default] + a.paired)}
    pjobs = [dict(base, genotype=genotype_file("default" if m == a.default else f"paired-{m}", p), name=m, seed=s,
                  out=str(out / "retrain" / _plan_id(p) / f"seed{s}")) for m, p in modals.items() for s in noise_seeds]
    pjobs = _once(pjobs, done=by_out)
    by_out.update({j["out"]: r for j, r in zip(pjobs, pool.map(retrain_eval, pjobs, f"{name}: paired retrains"))})
    modal = modals[a.default]
    paired = [(result(modal, s)["mAP"], result(arch["osnet_ain"], s)["mAP"]) for s in noise_seeds]
    paired_osnet = [(result(modal, s)["mAP"], result(arch["osnet"], s)["mAP"]) for s in noise_seeds]
    paired_methods = {}
    for m, p in modals.items():
        ours = [result(p, s)["mAP"] for s in noise_seeds]
        paired_methods[m] = {"choices": next(d["choices"] for j, d in zip(djobs, derived)
                                             if j["method"] == m and d["plan"] == p),
                             "mAP": ours, **{f"vs_{ref}": _diff_stats([x - result(arch[ref], s)["mAP"]
                                                                       for x, s in zip(ours, noise_seeds)])
                                             for ref in ("osnet_ain", "osnet")}}

    # 6. cost-aware searches at each budget (the cost table profiled on the LATENCY backend)
    budgets = {}
    if a.budgets and name in a.budget_configs:
        bseeds = list(range(1, sizes["budget_seeds"] + 1))
        bjobs = [dict(base, seed=sd, out=str(out / "search" / f"budget{b:g}-{LATENCY['backend']}" / f"seed{sd}"),
                      overrides=extra + [f"search.cost_table={table_file}", f"search.cost_budget={b:g}"])
                 for b in a.budgets for sd in bseeds]
        pool.map(search, bjobs, f"{name}: cost-aware searches at budgets {', '.join(f'{b:g}' for b in a.budgets)}")
        bd = []
        for b in a.budgets:
            runs = [str(out / "search" / f"budget{b:g}-{LATENCY['backend']}" / f"seed{sd}") for sd in bseeds]
            bd += [dict(root=root, method=f"argmax@{b:g}", seed=sd, runs=[r], select="argmax",
                        out=str(out / "derived" / f"budget{b:g}-{LATENCY['backend']}-seed{sd}.yaml"))
                   for sd, r in zip(bseeds, runs)]
            bd.append(dict(root=root, method=f"consensus@{b:g}", seed="all", runs=runs, select="consensus",
                           out=str(out / "derived" / f"budget{b:g}-{LATENCY['backend']}-consensus.yaml")))
        bderived = pool.map(derive, bd, f"{name}: derive within budget")
        rjobs = []
        for d in bderived:
            o = str(out / "retrain" / _plan_id(d["plan"]) / "seed1")
            if o not in by_out and o not in {j["out"] for j in rjobs}:
                rjobs.append(dict(base, genotype=d["file"], name=Path(d["file"]).stem, seed=1, out=o))
        by_out.update({j["out"]: r for j, r in zip(rjobs, pool.map(retrain_eval, rjobs, f"{name}: budget retrains"))})
        # each budget's consensus genotype over the noise seeds, paired with OSNet-AIN
        cons = {j["method"]: d["plan"] for j, d in zip(bd, bderived) if j["method"].startswith("consensus@")}
        pj = [dict(base, genotype=genotype_file(f"{m.replace('@', '-at-')}", p), name=m, seed=sd,
                   out=str(out / "retrain" / _plan_id(p) / f"seed{sd}")) for m, p in cons.items() for sd in noise_seeds]
        pj = _once(pj, done=by_out)  # two budgets may agree on a consensus: one retrain each seed
        by_out.update({j["out"]: r for j, r in zip(pj, pool.map(retrain_eval, pj, f"{name}: budget paired retrains"))})
        for j, d in zip(bd, bderived):
            r = result(d["plan"])
            budgets.setdefault(j["method"], {"per_seed": [], "budget": float(j["method"].split("@")[1])})
            budgets[j["method"]]["per_seed"].append({"seed": j["seed"], "choices": d["choices"], "mAP": r["mAP"],
                                                     "rank1": r["rank1"], "cost": d.get("cost", {}),
                                                     "plan": d["plan"]})
        for m, p in cons.items():
            diffs = [result(p, sd)["mAP"] - result(arch["osnet_ain"], sd)["mAP"] for sd in noise_seeds]
            budgets[m]["paired"] = {"diffs": diffs, **_diff_stats(diffs)}

    # 7. latency of every retrained architecture, timed together on the deployment path
    plans = {k: p for k, p in arch.items()}
    plans.update({Path(d["file"]).stem: d["plan"] for d in derived})
    plans.update({f"{m}-{row['seed']}": row["plan"] for m, v in budgets.items() for row in v["per_seed"]})
    latency = measure_latencies(plans, cfg, sizes["latency_repeats"])
    for v in budgets.values():
        for row in v["per_seed"]:
            plan = row.pop("plan")
            row["plan_json"] = json.dumps(plan, sort_keys=True)
            row["latency_ms"] = latency[_plan_id(plan)]["median_ms"]
            row["relative_latency"] = latency[_plan_id(plan)]["relative"]

    # 8. deployability of every derived genotype and the published ones (trained weights, seed 1)
    checked = {k: p for k, p in arch.items() if k in NAMED}
    checked.update({Path(d["file"]).stem: d["plan"] for d in derived})
    checked.update({f"{m}-{row['seed']}": json.loads(row["plan_json"]) for m, v in budgets.items()
                    for row in v["per_seed"]})
    distinct = {}
    for k, p in checked.items():
        distinct.setdefault(_plan_id(p), k)
    ejobs = [dict(root=root, checkpoint=str(out / "retrain" / pid / "seed1" / "checkpoint.pth"),
                  out=str(out / "retrain" / pid / "seed1" / "model.onnx"), height=cfg.data.height,
                  width=cfg.data.width, target=cfg.data.targets[0]) for pid in distinct]
    checks = dict(zip(distinct.values(), pool.map(export_check, ejobs, f"{name}: export --check")))

    summary = summarise(cfg, space, noise, yard, randoms, derived, djobs, result, predicted, paired, a.default,
                        yseeds)
    summary["paired_osnet"] = {"pairs": paired_osnet, **_diff_stats([x - y for x, y in paired_osnet])}
    summary["paired_methods"] = paired_methods
    summary["export_check"] = checks
    summary["stem_projection"] = projections
    _add_latency(summary, arch, derived, djobs, latency, sizes["latency_repeats"])
    summary["budgets"] = budgets
    summary["search_minutes"] = {v: [search_minutes(out / "search" / v / f"seed{sd}") for sd in range(1, need[v] + 1)]
                                 for v in variants}
    # each search variant's own budget (the configuration's search.epochs is only lodo's), from its runs' config.yaml
    summary["config"]["search_steps_by_variant"] = {v: search_steps(out / "search" / v / "seed1") for v in variants}
    # where each search's alphas ended: per seed, every position's probabilities (final_alphas.json)
    summary["final_probs"] = {v: [{k: p["probs"] for k, p in json.loads(
        (out / "search" / v / f"seed{sd}" / "final_alphas.json").read_text())["positions"].items()} for sd in seeds]
        for v in variants}
    (out / "results.json").write_text(json.dumps(summary, indent=2))
    return summary


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
        nets.setdefault(_plan_id(p), build_model(Genotype(plan=p, arch=cfg.model.arch)).eval())
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
        summary["yardstick"][k]["latency_ms"] = latency[_plan_id(p)]["median_ms"]
        summary["yardstick"][k]["relative_latency"] = latency[_plan_id(p)]["relative"]
    for m, r in summary["methods"].items():
        rows = [d for j, d in zip(djobs, derived) if j["method"] == m]
        for row, d in zip(r["per_seed"], rows):
            row["latency_ms"] = latency[_plan_id(d["plan"])]["median_ms"]
            row["relative_latency"] = latency[_plan_id(d["plan"])]["relative"]
    summary["latency"] = dict(LATENCY, repeats=repeats, all_bn_ms=latency["all_bn"]["median_ms"],
                              all_bn_iqr_ms=latency["all_bn"]["iqr_ms"],
                              osnet_relative=latency[_plan_id(arch["osnet"])]["relative"],
                              osnet_relative_iqr=latency[_plan_id(arch["osnet"])]["relative_iqr"])


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


def _modal(plans: list) -> dict:
    """The most frequent of several dicts (plans or choices); ties: the earliest."""
    keys = [json.dumps(p, sort_keys=True) for p in plans]
    best = max(keys, key=lambda k: (keys.count(k), -keys.index(k)))
    return json.loads(best)


def _diff_stats(diffs: list) -> dict:
    """Mean and std (0 for one value) of paired differences."""
    return {"diff_mean": statistics.mean(diffs), "diff_std": statistics.stdev(diffs) if len(diffs) > 1 else 0.0}


def _per_variant(results: list, variants: list, n: int) -> dict:
    """Results of jobs made variant by variant, n seeds each: {variant: its n results}."""
    return {v: results[i * n:(i + 1) * n] for i, v in enumerate(variants)}


def _percentile(value: float, population: list) -> float:
    """Share of the population the value beats or ties (100 = at least as good as all)."""
    return 100.0 * sum(v <= value for v in population) / len(population)


def mean_map(entry: dict) -> float:
    """A yardstick architecture's held-out mAP: the mean over its retrain seeds (`mAP_seeds`,
    with --yardstick-seeds above 1), else its one retrain."""
    return statistics.mean(entry.get("mAP_seeds") or [entry["mAP"]])


def summarise(cfg, space, noise, yard, randoms, derived, djobs, result, predicted, paired, default,
              yseeds=(1,)) -> dict:
    """results.json of one configuration. Every method's genotypes are placed among the yardstick
    by one retrain (seed 1 against seed 1); with several yardstick seeds they are placed by their
    mean over those seeds against the yardstick's means too (`percentile_resolved`), and the
    Kendall tau is taken against the means."""
    from scipy.stats import kendalltau

    rand_maps = [mean_map(yard[f"random{i:02d}"]) for i in range(len(randoms))]
    population = [v["mAP"] for v in yard.values()]
    population_mean = [mean_map(v) for v in yard.values()]
    methods = {}
    for m in dict.fromkeys(j["method"] for j in djobs):
        rows = [(j, d) for j, d in zip(djobs, derived) if j["method"] == m]
        per_seed = []
        for j, d in rows:
            r = result(d["plan"])
            per_seed.append({"seed": j["seed"], "choices": d["choices"], "mAP": r["mAP"], "rank1": r["rank1"],
                             "derive_seconds": d.get("derive_seconds"),
                             "targets": r["targets"], "percentile": _percentile(r["mAP"], population)})
            if len(yseeds) > 1:
                seeds_map = [result(d["plan"], s)["mAP"] for s in yseeds]
                per_seed[-1].update(mAP_seeds=seeds_map,
                                    percentile_resolved=_percentile(statistics.mean(seeds_map), population_mean))
        plans = [json.dumps(d["plan"], sort_keys=True) for _, d in rows]
        positions = [p.name for p in space.positions]
        if len(rows) == 1:  # consensus: one genotype from all seeds; its agreement is the seeds' own
            same = "–"
            agree = {p: float(rows[0][1]["agreement"].get(p, 1.0)) for p in positions}
        else:
            same = f"{max(plans.count(p) for p in plans)}/{len(plans)}"
            agree = {p: max(sum(s["choices"][p] == c for s in per_seed) for c in {s["choices"][p] for s in per_seed})
                     / len(per_seed) for p in positions}
        maps = [s["mAP"] for s in per_seed]
        methods[m] = {"per_seed": per_seed, "same_genotype": same,
                      "position_agreement": agree, "mean_position_agreement": statistics.mean(agree.values()),
                      "mAP_mean": statistics.mean(maps), "mAP_std": statistics.stdev(maps) if len(maps) > 1 else 0.0,
                      "min_percentile": min(s["percentile"] for s in per_seed)}
        if len(yseeds) > 1:
            methods[m]["min_percentile_resolved"] = min(s["percentile_resolved"] for s in per_seed)
    taus = {v: [float(kendalltau([-p for p in pred], rand_maps).statistic)  # lower loss = predicted better
                for pred in preds] for v, preds in predicted.items()}
    nm = [r["mAP"] for r in noise]
    diffs = [x - y for x, y in paired]
    return {
        "config": {"sources": cfg.data.sources, "targets": cfg.data.targets, "space": space.name,
                   "arch": cfg.model.arch, "search_steps": cfg.search.epochs * cfg.search.steps_per_epoch,
                   "retrain_steps": cfg.train.epochs * cfg.train.steps_per_epoch},
        "noise": {"mAP": nm, "rank1": [r["rank1"] for r in noise],
                  "mAP_std": statistics.stdev(nm) if len(nm) > 1 else 0,
                  "rank1_std": statistics.stdev([r["rank1"] for r in noise]) if len(nm) > 1 else 0,
                  "targets": [r["targets"] for r in noise]},
        "yardstick": {k: v for k, v in yard.items()},
        "yardstick_seeds": len(yseeds),
        "random_architectures": randoms,
        "methods": methods,
        "kendall_tau": taus.get("lodo", []),
        "kendall_tau_by_search": taus,
        "paired": {"default": default, "pairs": paired, **_diff_stats(diffs)},
    }


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="runs/protocol")
    ap.add_argument("--data-root", default=None)
    ap.add_argument("--configs", default="style,geometry", help=f"comma-separated, of {', '.join(CONFIGS)}")
    ap.add_argument("--quick", action="store_true", help="a much smaller protocol (minutes): checks the machinery")
    ap.add_argument("--jobs", type=int, default=2, help="jobs run at a time (one thread each)")
    # vote3: three uniform supernets per answer, each derived alone, the majority per position. Over 10 answers
    # (RESULTS_defaults.md) the only recipe at >= 90% agreement on both configurations: style 97%, geometry 97%,
    # against 86-89% and 90-93% for one uniform supernet (uniform-pooled) and the pairs; on geometry every answer
    # in the top 10% on means. One supernet's view of the stem is fixed by its training trajectory (FINDINGS.md),
    # so only more supernets help; added up as answers, not as scores. Three searches at 1.01x a plain step each.
    # vote3-stem: the same votes with each supernet derived --stem-first (style identical answers 9/10 against 8/10,
    # geometry unchanged; on the demo's synth domains it turned the one BN-stem seed of 10 from -13.0 +- 3.3 mAP
    # below OSNet-AIN to +0.6 +- 5.3, paired over 5 retrain seeds; FINDINGS.md)
    ap.add_argument("--default", default="vote3-stem", choices=METHODS,
                    help="the method the paired test checks (its most frequent genotype)")
    ap.add_argument("--methods", default=",".join(METHODS),
                    help="comma-separated, of " + ", ".join(METHODS) + " (default all: about 4.5 h on 2 cores from "
                         "scratch; vote3-stem alone about 1 h, 1.75 h with --yardstick-seeds 3)")
    ap.add_argument("--paired", default="", help="more methods whose most frequent genotype is retrained with "
                                                  "the noise seeds and paired (comma-separated)")
    ap.add_argument("--yardstick-seeds", type=int, default=1,
                    help="retrain every yardstick architecture and every derived genotype with this many seeds and "
                         "place the genotypes by the means (one retrain cannot: OSNet-AIN's own retrains fall in and "
                         "out of the top 10%%); each extra seed adds about 30 min per configuration on 2 cores "
                         "with every method")
    ap.add_argument("--search-seeds", type=int, default=0,
                    help="search seeds per method (default 5; --quick 2): agreement over 5 seeds moved by up to 11 "
                         "points with the seeds drawn (FINDINGS.md), more seeds separate recipes that 5 cannot")
    ap.add_argument("--results", default=None, help="write RESULTS.md here (default: OUT/RESULTS.md)")
    ap.add_argument("--budgets", default="", help="comma-separated relative latency budgets for cost-aware "
                                                   "searches (e.g. 1.01,1.03); none by default")
    ap.add_argument("--budget-configs", default="", help="the configurations the --budgets searches run on "
                                                          "(comma-separated; default: all of --configs)")
    a = ap.parse_args()
    a.budget_configs = [c for c in (a.budget_configs or a.configs).split(",") if c]
    a.methods = [m for m in a.methods.split(",") if m]
    a.paired = [m for m in a.paired.split(",") if m]
    bad = [m for m in a.methods + a.paired if m not in METHODS]
    if bad or not a.methods:
        raise SystemExit(f"run_protocol: --methods {bad or '(none)'}: expected some of {', '.join(METHODS)}")
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
    sizes = QUICK if a.quick else FULL
    if a.quick:  # smaller generated domains too (unless the caller chose a preset)
        os.environ.setdefault("OSNAS_SYNTH_PRESET", "small")
    names = [c for c in a.configs.split(",") if c]
    bad = [c for c in names if c not in CONFIGS]
    if bad:
        raise SystemExit(f"run_protocol: unknown configuration {bad}; valid: {', '.join(CONFIGS)}")
    pool = Pool(a.jobs)
    t0 = time.time()
    try:
        summaries = {n: run_config(n, CONFIGS[n], a, pool, sizes) for n in names}
    finally:
        pool.close()
    sys.path.insert(0, str(HERE))
    from results_protocol import write_results

    write_results(summaries, Path(a.results or Path(a.out) / "RESULTS.md"), Path(a.out), sys.argv[1:],
                  time.time() - t0, quick=a.quick)


if __name__ == "__main__":
    from osnas.errors import OsnasError

    try:
        main()
    except OsnasError as e:  # bad input: one line, exit 2, as the osnas commands do
        print(f"run_protocol: {e}", file=sys.stderr)
        sys.exit(2)
