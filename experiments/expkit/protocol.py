"""One family of domains through the comparison every study of the search makes.

For a configuration file (an osnas config: sources, held-out targets, model, schedules):

  designs     the published designs and IN in the stem alone (the constant answers), each
              retrained with every seed on the sources and evaluated on the targets;
  pick        the practitioner's pick: per seed, the three published designs retrained on the
              sources without the last one and scored on it (its own query/gallery); the best
              one's retrain on all sources is the pick's result for that seed;
  analyze     `osnas analyze` once per answer seed, its genotype retrained with every seed;
  methods     `osnas search` + `osnas derive` once per answer seed per method (a method is a list
              of --set overrides of the search and the DeriveConfig fields of the derive), every
              answer's genotype retrained with every seed; where derive recommended a published
              design, the search's own answer is retrained too.

Retrains are keyed by the architecture (the plan's hash) and the seed, so an answer that is a
published design reuses that design's retrains. Every job is cached in its folder under `out`.
The result is one JSON-ready dict (`run_family`) that a study's results.py turns into tables.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Dict, List, Sequence

from expkit import jobs

PUBLISHED = ("osnet", "osnet_ibn", "osnet_ain")


def plan_id(plan: dict) -> str:
    return hashlib.sha256(json.dumps(plan, sort_keys=True).encode()).hexdigest()[:12]


def design_files(out: Path, extra: Dict[str, dict] | None = None) -> Dict[str, str]:
    """The constant answers as genotype names or files: the published designs, IN in the stem
    only, and `extra` designs ({name: sites that differ from plain OSNet})."""
    from osnas.models.genotype import Genotype, named_genotype

    files = {n: n for n in PUBLISHED}
    for name, sites in {"stem": {"stem": "in"}, **(extra or {})}.items():
        f = out / "designs" / f"{name}.yaml"
        if not f.is_file():
            Genotype(plan=dict(named_genotype("osnet").plan, **sites), name=name).save(f)
        files[name] = str(f)
    return files


def run_designs(pool: jobs.Pool, config: str, root: str, out: Path, seeds: Sequence[int],
                extra: Dict[str, dict] | None = None, overrides: Sequence[str] = ()) -> dict:
    """The constant designs (and `extra` ones) retrained with every seed: {"genotypes", "scores"}."""
    out = Path(out)
    base = {"config": config, "root": root, "overrides": list(overrides)}
    designs = design_files(out, extra)
    rjobs = retrain_jobs(designs, seeds, base, out)
    scores = scores_by_plan(rjobs, pool.map(jobs.retrain_eval, rjobs, "the constant designs"))
    return {"genotypes": {k: {"plan_id": plan_id(_plan_of(g)), "in_sites": _in_sites(g)} for k, g in designs.items()},
            "scores": scores}


def _plan_of(genotype: str) -> dict:
    from osnas.models.genotype import load_genotype

    return load_genotype(genotype).plan


def retrain_jobs(genotypes: Dict[str, str], seeds: Sequence[int], base: dict, out: Path) -> List[dict]:
    """One job per (architecture, seed), architectures named by their plan's hash."""
    jobs_, seen = [], set()
    for g in genotypes.values():
        pid = plan_id(_plan_of(g))
        for s in seeds:
            if (pid, s) not in seen:
                seen.add((pid, s))
                jobs_.append(dict(base, genotype=g, seed=s, out=str(out / "retrain" / pid / f"seed{s}")))
    return jobs_


def scores_by_plan(done: List[dict], results: List[dict]) -> Dict[str, Dict[int, float]]:
    """{plan id: {seed: held-out mAP}} from retrain jobs and their results."""
    out: Dict[str, Dict[int, float]] = {}
    for j, r in zip(done, results):
        out.setdefault(Path(j["out"]).parent.name, {})[j["seed"]] = r["mAP"]
    return out


def retrain_seconds(results: List[dict]) -> List[float]:
    """The wall times of the retrains that ran whole (a cached or resumed one has none)."""
    return [r["seconds"] for r in results if r.get("seconds")]


def run_family(pool: jobs.Pool, config: str, root: str, out: Path, seeds: Sequence[int], answers: Sequence[int],
               methods: Dict[str, dict], pick: bool = True, analyze: bool = True, overrides: Sequence[str] = (),
               extra_designs: Dict[str, dict] | None = None) -> dict:
    """Everything above for one configuration; returns the family's results (module docstring).
    `overrides`: --set overrides of every job (a quick run's short schedules)."""
    from osnas.utils import load_yaml

    out = Path(out)
    base = {"config": config, "root": root, "overrides": list(overrides)}
    sources = list(load_yaml(config)["data"]["sources"])
    designs = design_files(out, extra_designs)
    searches, derived = _methods(pool, base, out, answers, methods)
    analyses = pool.map(jobs.analyze, [dict(base, seed=100 * a, out=str(out / "analyze" / f"answer{a}"))
                                        for a in answers], "analyze") if analyze else []
    genotypes = dict(designs)
    for m, ds in derived.items():
        for a, d in zip(answers, ds):
            genotypes[f"{m}/answer{a}"] = d["file"]
            if d["decision"].get("verdict") == "published":
                genotypes[f"{m}/answer{a}/searched"] = str(Path(d["file"]).with_name("genotype.searched.yaml"))
    for a, d in zip(answers, analyses):
        genotypes[f"analyze/answer{a}"] = d["file"]
    rjobs = retrain_jobs(genotypes, seeds, base, out)
    done = pool.map(jobs.retrain_eval, rjobs, "retrain and evaluate")
    scores = scores_by_plan(rjobs, done)
    picks = _pick(pool, base, out, seeds, sources) if pick else {}
    return {"config": config, "sources": sources, "targets": list(load_yaml(config)["data"]["targets"]),
            "seeds": list(seeds), "answers": list(answers),
            "genotypes": {k: {"plan_id": plan_id(_plan_of(g)), "in_sites": _in_sites(g)} for k, g in genotypes.items()},
            "scores": scores, "pick": picks, "retrain_seconds": retrain_seconds(done),
            "methods": {m: [dict(d, search_seconds=s["seconds"]) for d, s in zip(derived[m], searches[m])]
                        for m in methods},
            "analyze": analyses}


def _in_sites(genotype: str) -> list:
    from osnas.models.genotype import load_genotype

    return load_genotype(genotype).in_sites()


def _methods(pool: jobs.Pool, base: dict, out: Path, answers: Sequence[int], methods: Dict[str, dict]):
    """Every method's searches, then its derives: ({method: [search result]}, {method: [derive result]})."""
    sjobs = {m: [dict(base, seed=100 * a, overrides=base["overrides"] + list(spec.get("search", [])),
                      out=str(out / m / f"answer{a}" / "search")) for a in answers] for m, spec in methods.items()}
    flat = [j for js in sjobs.values() for j in js]
    res = iter(pool.map(jobs.search, flat, "search"))
    searches = {m: [next(res) for _ in js] for m, js in sjobs.items()}
    djobs = {m: [dict(base, run=s["out"], options=dict(spec.get("derive", {})),
                      out=str(Path(s["out"]).parent / "genotype.yaml")) for s in searches[m]]
             for m, spec in methods.items()}
    res = iter(pool.map(jobs.derive, [j for js in djobs.values() for j in js], "derive"))
    return searches, {m: [next(res) for _ in js] for m, js in djobs.items()}


def _pick(pool: jobs.Pool, base: dict, out: Path, seeds: Sequence[int], sources: List[str]) -> dict:
    """The practitioner's pick per seed: the published designs trained without the last source,
    scored on it; {seed: {"choice", "kept_out_mAP": {design: mAP}}}."""
    kept, rest = sources[-1], sources[:-1]
    pj = [dict(base, genotype=n, seed=s, sources=rest, targets=[kept], out=str(out / "pick" / n / f"seed{s}"))
          for s in seeds for n in PUBLISHED]
    res = pool.map(jobs.retrain_eval, pj, f"pick: the published designs on {','.join(rest)}, scored on {kept}")
    picks: dict = {}
    for j, r in zip(pj, res):
        picks.setdefault(j["seed"], {"kept_out_mAP": {}})["kept_out_mAP"][j["genotype"]] = r["mAP"]
    for s, p in picks.items():
        p["choice"] = max(PUBLISHED, key=lambda n: (p["kept_out_mAP"][n], -PUBLISHED.index(n)))
    return {str(s): p for s, p in picks.items()}
