"""`osnas derive`: freeze the answer of one or more search runs into a genotype file.

    osnas derive --run RUN [RUN ...] [--select argmax|perturb|consensus|retrieval|retrieval-pooled|vote] [--out FILE]
                 [--gate Z] [--stem-first]

Selection methods (SELECTORS; the default is retrieval-pooled for runs of
`search.weight_step=uniform` (their alphas never move) or `search.objective=unseen` (a source the
weights never saw to ask the supernet on), else argmax for one run and consensus for several:
`default_select`):

argmax     per position the candidate with the largest probability of the run's final alphas.
perturb    perturbation-based selection (Wang et al., "Rethinking Architecture Selection in
           Differentiable NAS", ICLR 2021): the supernet of the run (weights and alphas of
           its checkpoint) is scored on the run's own alpha-step data; per position, each
           candidate is removed from the mixture in turn and the candidate whose removal
           raises the validation loss most is kept (see `perturb_select`, `PerturbScorer`).
           Positions are decided one at a time, each fixed to one-hot before the next is
           scored. Unlike the paper, the supernet is not fine-tuned between decisions: the
           weights stay as searched, which keeps derive cheap (no training data pass) and
           deterministic. With several runs every run is perturbed alone and the runs vote.
consensus  per position the argmax of the runs' mean probabilities.
vote       several runs, each derived alone by its own default selection, then per position
           the candidate most runs chose (a tie: fewer IN sites); vote.py.
retrieval  the one-hot subnet whose held-out retrieval mAP is best, asked of the supernet
           itself after re-estimating the subnet's BN statistics (retrieval.py): from the
           subnet without IN, a position takes IN only where it scores better beyond 2
           standard errors (`--gate Z` sets another threshold). Several runs: their
           validation batches pooled.
retrieval-pooled  the same, scored on the validation batches pooled into one gallery, the
           standard error over identities instead of batches (a harder retrieval that does
           not saturate where one batch's few identities are easy for every subnet).

--stem-first (retrieval, and a vote over runs derived by it): once a run's answer is found, a
block IN site moves to the stem where that scores no lower than the gate allows
(retrieval.move_to_stem): the shallow-first prior of the ascent order, applied across positions.

One file per method: alphas.py (argmax, consensus), perturb.py, retrieval.py, vote.py; runs.py reads
the runs and assembles the genotype with its provenance; this file is the entry point.

Every run is read through its own copy of the space it searched (its hash must match the
checkpoint's), and several runs must have searched the same space. The file records, besides
the choice, probabilities and entropy of every position: `select` (the method), `agreement`
(per position, the fraction of the runs whose own choice is the chosen candidate; 1.0 for
one run), `runs` (the run folders), and for perturb and retrieval the score of every
candidate, so every later result can be traced back to how its architecture was chosen.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Callable, Dict, List, Sequence

import torch

from osnas.derive.alphas import select_argmax, select_consensus
from osnas.derive.perturb import (PERTURB_ORDERS, PerturbResult, PerturbScorer, onehot, perturb_run,
                                  perturb_select, remove_candidate, scoring_mode, select_perturb)
from osnas.derive.retrieval import GALLERIES, check_gate, select_retrieval, select_retrieval_pooled
from osnas.derive.runs import SearchRun, _check_same_space, load_run, load_supernet, run_config
from osnas.derive.vote import select_vote
from osnas.errors import OsnasError
from osnas.models.genotype import Genotype
from osnas.rundir import GENOTYPE
from osnas.search.bilevel import FROZEN_STEPS

__all__ = ["SELECTORS", "DEFAULT_BATCHES", "derive", "run_derive", "derive_from_run", "apply_budget", "print_summary",
           # the pieces, for scripts and tests: reading runs, and the selection methods
           "SearchRun", "load_run", "load_supernet", "run_config", "PERTURB_ORDERS", "PerturbResult", "PerturbScorer",
           "onehot", "perturb_run", "perturb_select", "remove_candidate", "scoring_mode", "select_argmax",
           "select_consensus", "select_perturb", "select_retrieval", "select_retrieval_pooled", "select_vote"]

SELECTORS: Dict[str, Callable[..., Genotype]] = {
    "argmax": select_argmax,
    "perturb": select_perturb,
    "consensus": select_consensus,
    "retrieval": select_retrieval,
    "retrieval-pooled": select_retrieval_pooled,
    "vote": select_vote,
}
# validation batches per source when --batches is not given: retrieval's 2-standard-error gate
# needs enough batches to resolve a difference (the test-bed protocol measured it with 16)
DEFAULT_BATCHES = {"perturb": 4, "retrieval": 16, "retrieval-pooled": 16}


# ----------------------------------------------------------------------------- entry points
def _as_list(run) -> List:
    if isinstance(run, (str, Path)):
        return [run]
    return list(run)


def default_select(searched: Sequence) -> str:
    """The selection method when none is given, from the runs' search settings: retrieval-pooled
    for runs whose alphas never moved (weight_step=uniform) or that kept a source out of every
    weight step (objective=unseen), so the supernet can be asked on data it never trained on; else
    argmax for one run and consensus for several. On the synthetic test-bed, retrieval on the
    unseen-objective runs gave a higher held-out mAP than their argmax on both configurations and
    ranked random architectures as retraining does (Kendall tau 0.4-0.6 against -0.14 to 0.14
    for the alpha loss, on means of 3 retrains); the pooled gallery raised the agreement across
    seeds and the worst seed's percentile among random architectures in 3 of 4 comparisons each,
    and on the demo's synth domains (where one batch's retrieval saturates) found the IN stem the
    batch score missed: experiments/synthetic/RESULTS.md, RESULTS_synth_recipes.md."""
    if any(s.weight_step in FROZEN_STEPS or s.objective == "unseen" for s in searched):
        return "retrieval-pooled"
    return "argmax" if len(searched) == 1 else "consensus"


def derive(run, select: str | None = None, checkpoint=None, batches: int | None = None, order: str = "fixed",
           data_root: str | None = None, device: str = "auto", cost_table: str | None = None,
           cost_budget: float | None = None, measure: bool = True, gate: float | None = None,
           stem_first: bool = False) -> Genotype:
    """The genotype of one run or several (`run`: a folder or a list of folders) by `select`
    (a key of SELECTORS; None = `default_select`); `batches` per source for perturb and retrieval
    (None = DEFAULT_BATCHES); `gate` for retrieval: the standard errors by which an IN candidate
    must beat the simplest (None = retrieval.Z, 2; lower gates were measured to add IN sites
    that differ from seed to seed: experiments/synthetic/FINDINGS.md); `stem_first` for retrieval
    (and a vote over runs derived by it): a block IN site moves to the stem where that costs no
    more than the gate (retrieval.move_to_stem).

    With a cost table (`cost_table`, else the first run's search.cost_table) the genotype
    records its deployment cost, and a budget (`cost_budget`, else the run's
    search.cost_budget; 0 = none) is a hard limit: see `apply_budget`."""
    paths = _as_list(run)
    if not paths:
        raise OsnasError("derive needs at least one search run (--run)")
    if select is not None and select not in SELECTORS:
        raise OsnasError(f"unknown selection method {select!r}; valid: {', '.join(SELECTORS)}")
    if order not in PERTURB_ORDERS:
        raise OsnasError(f"unknown perturb order {order!r}; valid: {', '.join(PERTURB_ORDERS)}")
    if checkpoint and len(paths) > 1:
        raise OsnasError("--checkpoint names one checkpoint: use it with a single --run")
    runs = [load_run(p, checkpoint) for p in paths]
    _check_same_space(runs)
    # runs of a uniform single-path search never stepped their alphas: only their supernet has an answer
    searched = [run_config(r).search for r in runs]
    frozen = [(r, s) for r, s in zip(runs, searched) if s.weight_step in FROZEN_STEPS]
    select = select or default_select(searched)
    own = {r.path: default_select([s]) for r, s in zip(runs, searched)}  # vote: each run by its own selection
    if stem_first:
        alone = [m for m in own.values() if m not in GALLERIES] if select == "vote" else \
            ([] if select in GALLERIES else [select])
        if alone:
            raise OsnasError(f"--stem-first is a setting of the retrieval selections ({', '.join(GALLERIES)}) and of a "
                             f"vote over runs derived by them, not of {alone[0]}")
    if frozen and select in ("argmax", "consensus"):
        r, s = frozen[0]
        raise OsnasError(f"{r.path} searched with search.weight_step={s.weight_step}: its alphas never moved, so "
                         f"{select} has nothing to read; derive it with --select retrieval-pooled (the default)")
    if gate is not None:
        if select not in GALLERIES and select != "vote":
            raise OsnasError(f"--gate is a setting of the retrieval selections ({', '.join(GALLERIES)}) and of vote, "
                             f"not of {select}")
        gate = check_gate(gate)

    def select_alone(method: str, rs: list) -> Genotype:
        kw = {"gate": gate} if gate is not None and method in GALLERIES else {}
        if stem_first and method in GALLERIES:
            kw["stem_first"] = True
        n = DEFAULT_BATCHES.get(method, 4) if batches is None else batches
        return SELECTORS[method](rs, batches=n, order=order, data_root=data_root, device=device, **kw)

    if select == "vote":  # each run alone, by the selection its own search calls for
        g = select_vote(runs, per_run=lambda r: select_alone(own[r.path], [r]))
    else:
        g = select_alone(select, runs)
    return apply_budget(g, runs, cost_table, cost_budget, measure)


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
    from dataclasses import replace

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


def derive_from_run(run: str | Path, checkpoint: str | Path | None = None) -> Genotype:
    """The argmax genotype of a search run, from its checkpoint's alphas."""
    return derive(run, "argmax", checkpoint)


def run_derive(run, out=None, checkpoint=None, select: str | None = None, batches: int | None = None,
               order: str = "fixed",
               data_root: str | None = None, device: str = "auto", cost_table: str | None = None,
               cost_budget: float | None = None, measure: bool = True, gate: float | None = None,
               stem_first: bool = False) -> Path:
    """Derive and write the genotype file; a summary table on stderr, its path on stdout.

    `run`: one search run folder or a list of them; `out` defaults to RUN/genotype.yaml for
    one run and is required for several."""
    paths = _as_list(run)
    if out is None and len(paths) > 1:
        raise OsnasError(f"several runs ({', '.join(map(str, paths))}): give the genotype file to write with --out")
    g = derive(paths, select, checkpoint, batches, order, data_root, device, cost_table, cost_budget, measure, gate,
               stem_first)
    path = Path(out) if out else Path(paths[0]) / GENOTYPE
    g.save(path)
    print_summary(g, file=sys.stderr)
    print(str(path))
    return path


def print_summary(g: Genotype, file=sys.stderr) -> None:
    """Position, choice, its probability (and perturb score), agreement; then the IN sites.
    Retrieval: the chosen candidate's held-out mAP and why it was chosen (the runner-up's
    distance, or the better but not significantly better candidate it was preferred to)."""
    runs = ", ".join(g.runs)
    print(f"genotype of {runs} (select {g.select}; {g.space}" + (f", step {g.step}" if g.step is not None else "")
          + f", sources {','.join(g.sources)}):", file=file)
    width = max([len(k) for k in g.positions] + [len("position")])
    cw = max([len(v["choice"]) for v in g.positions.values()] + [len("choice")])
    if g.select == "vote":
        print(f"  {'position':<{width}}  {'choice':<{cw}}  {'votes':>5}  the runs' own choices", file=file)
        for k, v in g.positions.items():
            c, votes = v["choice"], v.get("votes", {})
            print(f"  {k:<{width}}  {c:<{cw}}  {votes.get(c, 0):>2}/{len(g.runs):<2}  "
                  + " ".join(v.get("run_choices", [])), file=file)
            for run, rec in zip(g.runs, v.get("run_stem_first", [])):
                if rec and rec.get("moved_from"):
                    print(f"    stem first: {run}: IN moved from {rec['moved_from']} to the {k} "
                          f"({rec['tried'][rec['moved_from']]:+.1f} SE, gate {rec['gate_se']:g})", file=file)
    elif g.select in GALLERIES:
        print(f"  {'position':<{width}}  {'choice':<{cw}}  {'mAP %':>6}  {'agree':>5}  why", file=file)
        for k, v in g.positions.items():
            c = v["choice"]
            rec = v.get("stem_first") or {}
            why = (f"IN moved here from {rec['moved_from']} (--stem-first: {rec['tried'][rec['moved_from']]:+.1f} SE, "
                   f"gate {rec['gate_se']:g})") if rec.get("moved_from") else \
                _retrieval_why(c, v["scores"], v["gap_se"], v.get("supported"))
            print(f"  {k:<{width}}  {c:<{cw}}  {100 * v['scores'][c]:>6.2f}  {g.agreement.get(k, 1.0):>5.2f}  "
                  + why, file=file)
    else:
        perturb = any("scores" in v for v in g.positions.values())
        print(f"  {'position':<{width}}  {'choice':<{cw}}  {'prob':>6}" + (f"  {'drop':>10}" if perturb else "")
              + f"  {'agree':>5}  {'H':>5}", file=file)
        for k, v in g.positions.items():
            c = v["choice"]
            line = f"  {k:<{width}}  {c:<{cw}}  {v['probs'][c]:>6.3f}"
            if perturb:
                line += f"  {v['scores'][c]:>+10.5f}"
            line += f"  {g.agreement.get(k, 1.0):>5.2f}  {v['entropy']:>5.3f}"
            print(line, file=file)
    print(f"IN at: {', '.join(g.in_sites()) or 'nowhere'}", file=file)
    # several runs pooled can pass a site no run picks alone (their pooled data shrink the standard
    # error): on the test-bed's uniform supernets such a site lowered the retrained mAP (README).
    # Retrieval now chooses among the candidates some run picks (retrieval.supported); a file
    # derived before that, or by an ascent that ran out of sweeps, can still hold one
    orphans = [f"{k} {v['choice']}" for k, v in g.positions.items()
               if len(g.runs) > 1 and g.agreement.get(k, 1.0) == 0 and v["choice"] not in ("bn", "plain", "none")]
    if orphans:
        print(f"warning: {', '.join(orphans)}: chosen by the {len(g.runs)} runs together but by none of them alone; "
              "retrain the genotype with and without it, or derive each run alone and compare", file=file)
    c = g.cost
    if c:
        line = (f"cost ({c['backend']}, {c['method']}): predicted {c['relative']:.3f}x the all-BN network "
                f"({c['predicted_ms']:.3f} ms)")
        if "latency_ms" in c:
            line += f"; measured {c['latency_ms']:.3f} ms = {c['measured_relative']:.3f}x"
        if c.get("budget"):
            line += f"; budget {c['budget']:g}x"
        print(line, file=file)
        for sw in c.get("switches", []):
            print(f"  over budget: {sw['position']} {sw['from']} -> {sw['to']} (saves {sw['saved']:.4f})", file=file)


def _retrieval_why(choice: str, scores: Dict[str, float], gaps: Dict[str, float],
                   supported: List[str] | None = None) -> str:
    best = max(scores, key=lambda c: scores[c])
    if supported is not None and best not in supported and scores[best] > scores[choice]:
        return f"{best} {100 * (scores[best] - scores[choice]):+.2f} pooled, but no run chose it alone"
    if best != choice and scores[best] > scores[choice]:
        return (f"{best} {100 * (scores[best] - scores[choice]):+.2f} but within {gaps[choice]:.1f} SE: "
                "noise, the fewer IN sites kept")
    rest = ", ".join(f"{c} -{gaps[c]:.1f}" for c in scores if c != choice)
    return f"best; the others below it in SE: {rest}" if rest else "the only candidate"
