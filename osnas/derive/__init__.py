"""`osnas derive`: the answer of one search into a genotype file, read off each supernet, combined.

    osnas derive --run RUN [RUN ...] [--select argmax|perturb|retrieval|retrieval-pooled] [--out FILE]
                 [--gate Z] [--batches N] [--against osnet,osnet_ibn,osnet_ain|none] [--stem-first]

`derive(runs, cfg)` runs the passes in order, each in its own file:

1. read each run alone (`cfg.select`, default by its search settings: `options.default_select`):
     argmax            the largest probability of the run's final alphas (alphas.py)
     perturb           the candidate whose removal from the supernet hurts most (perturb.py;
                       Wang et al., ICLR 2021)
     retrieval         the subnet the supernet itself retrieves best with on kept-out data, BN
                       re-estimated per subnet, IN only where it wins by more than the gate
                       (retrieval.py), scored per validation batch
     retrieval-pooled  the same on the validation batches pooled into one gallery (the default
                       for runs whose alphas were judged on data the weights never saw)
2. --stem-first: the stem move after retrieval (moves.py; no default uses it);
3. several runs (or a search folder of several supernets): the vote, per position the
   candidate most runs chose, a tie to fewer IN sites (vote.py) -- the one combine rule;
4. the check against the published designs (decide.py): on fresh kept-out batches the answer
   must beat the best of OSNet, OSNet-IBN and OSNet-AIN beyond the gate, else that design is
   recommended (retrieval runs; `--against none` skips it);
5. the deployment budget (`apply_budget`).

Every run is read through its own copy of the space it searched (its hash must match the
checkpoint's), and several runs must have searched the same space. The genotype file records
the choice, probabilities and entropy of every position, `select`, `agreement` (per position,
the share of the runs whose own choice it is), `runs`, each selection's scores, the settings
(`derive`) and the check (`decision`); runs.py assembles it, summary.py prints it.
"""

from __future__ import annotations

import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import List, Sequence

from osnas.derive.alphas import select_argmax
from osnas.derive.decide import check_published
from osnas.derive.moves import stem_first, stem_index
from osnas.derive.options import (DEFAULT_BATCHES, PERTURB_ORDERS, RETRIEVAL, SELECTIONS, DeriveConfig,
                                  default_select, resolve)
from osnas.derive.perturb import (PerturbResult, PerturbScorer, onehot, perturb_run, perturb_select,
                                  remove_candidate, scoring_mode, select_perturb)
from osnas.derive.retrieval import GALLERIES, SubnetScorer, select_retrieval
from osnas.derive.runs import SearchRun, _check_same_space, expand_runs, load_run, load_supernet, run_config
from osnas.derive.summary import print_summary
from osnas.derive.vote import select_vote
from osnas.errors import OsnasError
from osnas.models.genotype import Genotype
from osnas.rundir import GENOTYPE

__all__ = ["SELECTIONS", "DEFAULT_BATCHES", "DeriveConfig", "derive", "run_derive", "apply_budget",
           "print_summary", "default_select",
           # the pieces, for scripts and tests: reading runs, and the selection methods
           "SearchRun", "load_run", "load_supernet", "run_config", "expand_runs", "PERTURB_ORDERS", "PerturbResult",
           "PerturbScorer", "onehot", "perturb_run", "perturb_select", "remove_candidate", "scoring_mode",
           "select_argmax", "select_perturb", "select_retrieval", "select_vote", "SubnetScorer"]


def derive(run, cfg: DeriveConfig | None = None) -> Genotype:
    """The genotype of one search run folder or several (`run`: a path or a list of them; a
    folder of several supernets stands for each of them), read as `cfg` says (module docstring)."""
    paths = expand_runs([run] if isinstance(run, (str, Path)) else list(run))
    if not paths:
        raise OsnasError("derive needs at least one search run (--run)")
    cfg = cfg or DeriveConfig()
    runs = [load_run(p, cfg.checkpoint) for p in paths]
    _check_same_space(runs)
    settings = [_search_settings(r) for r in runs]
    cfg = resolve(cfg, runs, settings)
    space = runs[0].space
    if cfg.stem_first:
        stem_index(space)  # a space without a searched stem: refused before any scoring
    _check_budget(runs, cfg)
    # retrieval-pooled chooses on one half of the kept-out people; the check uses the other half
    scorers = [SubnetScorer(r, cfg.batches_for(m), cfg.data_root, cfg.device, GALLERIES[m],
                            half=0 if GALLERIES[m] == "pooled" else None)
               if m in RETRIEVAL else None for r, m in zip(runs, cfg.methods)]
    alone = []
    for k, (r, m, sc) in enumerate(zip(runs, cfg.methods, scorers), 1):
        t0 = time.time()
        alone.append(_read_one(r, m, sc, cfg))
        if sc is not None:
            sc.release()
        if m != "argmax":  # the selections that score the supernet take minutes at full size
            _say(f"run {k}/{len(runs)} read by {m} ({time.time() - t0:.0f} s)")
    g = alone[0] if len(runs) == 1 else select_vote(runs, alone)
    if cfg.against:  # every method is a retrieval selection (resolve): the people the choice never saw
        t0 = time.time()
        fresh = [SubnetScorer(r, cfg.batches_for(m), cfg.data_root, cfg.device, "pooled", half=1,
                              loaded=sc.loaded if sc is not None else None)  # the same images, loaded once
                 for r, m, sc in zip(runs, cfg.methods, scorers)]
        own = [[a.positions[p.name]["choice"] for p in space.positions] for a in alone]
        g = check_published(g, space, [f.per_batch for f in fresh], cfg.against, cfg.gate, own)
        _say(f"checked against {', '.join(cfg.against)} ({time.time() - t0:.0f} s)")
    g = apply_budget(g, runs, cfg.cost_table, cfg.cost_budget, cfg.measure)
    return replace(g, derive=cfg.record())


def _say(line: str) -> None:
    """A progress line of derive on stderr (scoring a supernet takes minutes at full size)."""
    print(f"osnas derive: {line}", file=sys.stderr, flush=True)


def _search_settings(run: SearchRun) -> tuple:
    """(weight_step, objective) of a run's search. run_config gives the objective the run recorded
    where its config says `auto`; a run that recorded none gets `auto` as it resolves today."""
    from osnas.search.batches import resolve_objective

    s = run_config(run).search
    sources = run.ck.get("sources") or []
    objective = s.objective if s.objective != "auto" else resolve_objective("auto", max(len(sources), 1))
    return s.weight_step, objective


def _read_one(run: SearchRun, method: str, scorer, cfg: DeriveConfig) -> Genotype:
    """One run's own answer by `method`, then its stem move where asked."""
    if method == "argmax":
        return select_argmax(run)
    if method == "perturb":
        return select_perturb(run, cfg.batches_for(method), cfg.order, cfg.data_root, cfg.device)
    g = select_retrieval(run, scorer, cfg.gate)
    return stem_first(g, run.space, scorer.per_batch, cfg.gate) if cfg.stem_first else g


def _check_budget(runs: Sequence[SearchRun], cfg: DeriveConfig) -> None:
    """A budget below the cheapest architecture is refused before any scoring."""
    from osnas.search import budget as B

    spec, run_budget, height, width, arch = _run_cost_settings(runs[0])
    limit = B.check_budget(run_budget if cfg.cost_budget is None else cfg.cost_budget, "--cost-budget")
    table = B.cost_table(spec if cfg.cost_table is None else cfg.cost_table, runs[0].space, arch, height, width)
    if table is None and limit > 0:
        raise OsnasError(f"cost budget {limit:g} needs a cost table (--cost-table FILE|proxy); the run has none")
    B.check_feasible(runs[0].space, table, limit, "--cost-budget")


def _run_cost_settings(run: SearchRun) -> tuple:
    """(cost_table, cost_budget, height, width, arch) from a run's config.yaml (defaults when absent)."""
    cfg = run_config(run)
    return (cfg.search.cost_table, cfg.search.cost_budget, cfg.data.height, cfg.data.width,
            run.ck.get("arch") or cfg.model.arch)


def apply_budget(g: Genotype, runs: Sequence[SearchRun], cost_table: str | None = None,
                 cost_budget: float | None = None, measure: bool = True) -> Genotype:
    """The genotype within the deployment budget, with its `cost` record.

    Over budget, candidates are switched greedily where the least preference (the recorded
    probabilities) is lost per unit of relative cost saved (osnas.search.budget.fit_budget);
    the switches are recorded in `cost.switches`. With a measured table (not the proxy) and
    `measure`, the derived network and the all-BN network of its width are timed on the
    table's backend, input size, batch and threads: `cost.latency_ms` and `cost.measured_relative`."""
    import torch

    from osnas.search import budget as B

    spec, run_budget, height, width, arch = _run_cost_settings(runs[0])
    spec = spec if cost_table is None else cost_table
    limit = B.check_budget(run_budget if cost_budget is None else cost_budget, "--cost-budget")
    space = runs[0].space
    table = B.cost_table(spec, space, arch, height, width)
    if table is None:
        if limit > 0:
            raise OsnasError(f"cost budget {limit:g} needs a cost table (--cost-table FILE|proxy); the run has none")
        return g
    chosen = [p.names.index(g.positions[p.name]["choice"]) for p in space.positions]
    pref = [torch.tensor([g.positions[p.name]["probs"][c] for c in p.names]) for p in space.positions]
    switches: list = []
    if limit > 0:
        chosen, switches = B.fit_budget(space, chosen, pref, table, limit)
    choices = {p.name: p.names[c] for p, c in zip(space.positions, chosen)}
    positions = {k: dict(v, choice=choices[k]) for k, v in g.positions.items()}
    measured = B.measure_cost(space.plan_for(choices), table) if measure and table.method == "measured" else None
    return replace(g, plan=space.plan_for(choices), positions=positions,
                   cost=B.cost_record(table, choices, limit, measured, switches, source=str(spec)))


def run_derive(run, out=None, cfg: DeriveConfig | None = None, **options) -> Path:
    """Derive and write the genotype file; a summary table on stderr, its path on stdout.

    `run`: a search run folder or a list of them; `out` defaults to RUN/genotype.yaml for one
    folder and is required for several. `cfg` (or `options`, DeriveConfig's fields): how the
    runs are read. Where the check against the published designs recommends a published design,
    the search's own answer is written beside it (FILE.searched.yaml), to retrain if wanted."""
    paths: List = [run] if isinstance(run, (str, Path)) else list(run)
    if out is None and len(paths) > 1:
        raise OsnasError(f"several runs ({', '.join(map(str, paths))}): give the genotype file to write with --out")
    if cfg is None:
        try:
            cfg = DeriveConfig(**options)
        except TypeError as e:
            raise OsnasError(f"derive: {e}") from None
    g = derive(paths, cfg)
    path = Path(out) if out else Path(paths[0]) / GENOTYPE
    g.save(path)
    if g.decision.get("verdict") == "published":
        searched_genotype(g, runs_space(g, paths)).save(searched_path(path))
    elif searched_path(path).is_file():  # left by an earlier derive whose check went the other way
        searched_path(path).unlink()
    print_summary(g, file=sys.stderr)
    if g.decision.get("verdict") == "published":
        print(f"the search's own answer: {searched_path(path)} (osnas retrain --genotype {searched_path(path)} to "
              "check it against the recommendation)", file=sys.stderr)
    print(str(path))
    return path


def searched_path(path: Path) -> Path:
    """Where the search's own answer goes when a published design is recommended instead."""
    return path.with_name(path.stem + ".searched" + path.suffix)


def runs_space(g: Genotype, paths: Sequence):
    """The space of the runs `g` was derived from (the first run's own copy; derive checked it)."""
    from osnas.models.space import load_space
    from osnas.rundir import SPACE

    return load_space(expand_runs(paths)[0] / SPACE)


def searched_genotype(g: Genotype, space) -> Genotype:
    """The search's own answer of a genotype whose check recommended a published design."""
    choices = dict(g.decision["searched"])
    positions = {k: dict(v, choice=choices[k]) for k, v in g.positions.items()}
    return replace(g, plan=space.plan_for(choices), positions=positions,
                   name=f"searched-{space.name}", decision=dict(g.decision, verdict="searched (not recommended)"))
