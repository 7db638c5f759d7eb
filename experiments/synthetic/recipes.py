"""The search recipes of the synthetic studies, in one place: name -> search settings, runs per
answer, selection, moves, description.

run_protocol.py runs them as protocol methods, run_testbed.py on one family of domains, and
results_protocol.py describes them in RESULTS.md; none of them keeps a table of its own.

A recipe is
  searches          the search variants (keys of SEARCHES) each answer derives from
  select            how each search run is read (osnas derive --select)
  runs_per_answer   K: answer s reads the seeds (s-1)K+1 .. sK of its variant, voted by derive
  moves             derive's moves after the selection (("stem_first",): --stem-first)
  text              its row in RESULTS.md
  historical        (commit, reason) where the current package cannot run it: the runners refuse
                    it and name the commit whose code ran it (`git checkout COMMIT`)

A search variant lists every setting its recipe depends on as --set overrides on top of the
configuration file, the number of supernets included: these recipes are older than the
package's current defaults (search.runs=3, weight_step=sampled, alpha_every=2, alpha_loss=triplet,
objective=auto) and must not follow them. The configuration file gives the family, the space and
the schedule. Every derive is without the check against the published designs (`against` empty):
the studies place each answer themselves, as they did when they ran.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, List, Tuple

from osnas.derive.options import RETRIEVAL

BUDGET = 1.03  # sampled-budget's latency budget, relative to the all-BN network on the protocol's latency path
RETRIEVAL_BATCHES = 16  # kept-out batches per source read per subnet score (retrieval selections)
ALPHA_BATCHES = 4  # validation batches of the alpha-loss scores (perturb, the alpha loss's Kendall tau)


@dataclass(frozen=True)
class Search:
    overrides: Tuple[str, ...]  # --set overrides; "{cost_table}" is filled in by the runner
    text: str
    ranked: bool = False  # its supernets' alpha loss ranks the yardstick (the protocol's Kendall tau)
    projected: bool = False  # each supernet's own verdict on the stem is measured


_ONE = ("search.runs=1",)  # one supernet per search folder: the recipes combine runs themselves
_MIXED = ("search.weight_step=mixed", "search.alpha_every=1")
_LODO = ("search.objective=lodo", "search.alpha_loss=id")
_UNSEEN = ("search.objective=unseen", "search.alpha_loss=triplet")  # the last source kept out, a metric loss
# a sampled step costs about 1.5x a plain one (1.48x, alpha step every 2), a uniform one 1.01x, a mixed lodo
# one 2.1x (experiments/benchmarks/bench_search_step.json): 250, 350 and 150 steps are about the same budget
_SAMPLED = ("search.weight_step=sampled", "search.alpha_every=2", "search.epochs=10")

SEARCHES: Dict[str, Search] = {
    "lodo": Search(_ONE + _MIXED + _LODO, "bilevel, leave-one-domain-out alpha steps, every candidate in the "
                   "weight step, an alpha step every weight step", ranked=True, projected=True),
    "anneal": Search(_ONE + ("search.weight_step=mixed", "search.alpha_every=2") + _LODO
                     + ("search.entropy_weight=0.5", "search.alpha_lr=0.1"),
                     "lodo with an entropy penalty, fewer and larger alpha steps"),
    "unseen": Search(_ONE + _MIXED + _UNSEEN, "alphas judged on a source the weights never train on",
                     projected=True),
    "sampled": Search(_ONE + _SAMPLED + _LODO, "single paths drawn from the alphas, lodo alpha steps",
                      ranked=True, projected=True),
    "sampled-unseen": Search(_ONE + _SAMPLED + _UNSEEN, "single paths drawn from the alphas, alphas judged on "
                             "the unseen source", projected=True),
    "sampled-budget": Search(_ONE + _SAMPLED + _LODO + ("search.cost_table={cost_table}",
                                                        f"search.cost_budget={BUDGET:g}"),
                             f"sampled with a latency budget of {BUDGET:g}x the all-BN network"),
    "uniform": Search(_ONE + ("search.weight_step=uniform", "search.epochs=14") + _UNSEEN,
                      "single paths drawn uniformly, no alpha step, the unseen source kept out"),
    # an alpha step every 3 weight steps: 1.32x a plain step, so 275 steps
    "sampled3-unseen": Search(_ONE + ("search.weight_step=sampled", "search.alpha_every=3", "search.epochs=11")
                              + _UNSEEN, "sampled-unseen with an alpha step every 3 weight steps",
                              projected=True),
}

# the commits whose code ran the recipes the current package cannot (osnas derive lost consensus and
# the pooling of several runs' scores into one ascent): RESULTS.md of the protocol study, and of the
# candidate-defaults study
_CONSENSUS = ("d8d15c6", "osnas derive no longer averages several runs' probabilities (consensus): several "
                         "runs are always voted")
_POOLED = ("252a0b4", "osnas derive no longer pools several runs' retrieval scores into one ascent: several "
                      "runs are always voted")


@dataclass(frozen=True)
class Recipe:
    text: str
    searches: Tuple[str, ...]
    select: str
    runs_per_answer: int = 1
    moves: Tuple[str, ...] = ()
    historical: Tuple[str, str] = ()

    @property
    def scores_subnets(self) -> bool:
        """Read by the supernets' retrieval of each subnet (its tau ranks by that score too)."""
        return self.select in RETRIEVAL

    def answer_seeds(self, answer: int) -> List[int]:
        """The search seeds answer `answer` reads of each of its variants."""
        k = self.runs_per_answer
        return list(range((answer - 1) * k + 1, answer * k + 1))

    def derive_options(self) -> dict:
        """osnas.derive.DeriveConfig fields of one answer's derive."""
        opts = {"select": self.select, "against": ()}
        if self.select != "argmax":
            opts["batches"] = RETRIEVAL_BATCHES if self.scores_subnets else ALPHA_BATCHES
        if "stem_first" in self.moves:
            opts["stem_first"] = True
        return opts


RECIPES: Dict[str, Recipe] = {
    "argmax": Recipe("(a) argmax of the alphas (bilevel, leave-one-domain-out)", ("lodo",), "argmax"),
    "perturb": Recipe("(b) perturbation-based selection on the same runs (DARTS-PT)", ("lodo",), "perturb"),
    "consensus": Recipe("(d) consensus of the same runs (mean probabilities over seeds)", ("lodo",), "consensus",
                        historical=_CONSENSUS),
    "anneal": Recipe("(c) annealed search: entropy penalty, alpha step every 2 weight steps, alpha lr 0.1",
                     ("anneal",), "argmax"),
    "unseen": Recipe("(e) alphas judged on a source never trained on (triplet loss)", ("unseen",), "argmax"),
    "sampled": Recipe("(c') single-path weight steps drawn from the alphas, alpha step every 2, 250 steps (same "
                      "budget)", ("sampled",), "argmax"),
    "sampled-unseen": Recipe("(c'+e) single-path weight steps, alphas judged on a source never trained on",
                             ("sampled-unseen",), "argmax"),
    "sampled-budget": Recipe("(c') single-path weight steps with a latency budget of 1.03x the all-BN network",
                             ("sampled-budget",), "argmax"),
    "retrieval": Recipe("(b') the (c'+e) runs, the subnet the supernet retrieves best with (BN re-estimated per "
                        "subnet)", ("sampled-unseen",), "retrieval"),
    "retrieval-pooled": Recipe("(b'+) the (c'+e) runs, derived by retrieval-pooled: the validation batches as one "
                               "gallery", ("sampled-unseen",), "retrieval-pooled"),
    "uniform": Recipe("(b'') single-path weight steps drawn uniformly, no alpha step, 350 steps (same budget); "
                      "retrieval", ("uniform",), "retrieval"),
    "uniform-pooled": Recipe("(b''') the (b'') runs, derived by retrieval-pooled: the validation batches as one "
                             "gallery", ("uniform",), "retrieval-pooled"),
    "uniform-pooled-stem": Recipe("(b''') derived --stem-first: a run's block IN site moves to the stem where that "
                                  "costs no more than the gate", ("uniform",), "retrieval-pooled",
                                  moves=("stem_first",)),
    "pair-pooled": Recipe("(f) per seed, the (b'') and the (c'+e) run derived together by retrieval-pooled; a "
                          "position takes only a candidate one of them picks alone (twice the budget)",
                          ("uniform", "sampled-unseen"), "retrieval-pooled", historical=_POOLED),
    "pair3-pooled": Recipe("(f') the same pair with the sampled half stepping the alphas every 3 weight steps "
                           "(1.32x a plain step, 275 steps)", ("uniform", "sampled3-unseen"), "retrieval-pooled",
                           historical=_POOLED),
    "vote3": Recipe("(d') per seed, three (b'') runs each derived alone by retrieval-pooled, the majority per "
                    "position (three times the budget)", ("uniform",), "retrieval-pooled", runs_per_answer=3),
    "vote3-stem": Recipe("(d'') the (d') vote with each run derived --stem-first: a run's block IN site moves to "
                         "the stem where that costs no more than the gate", ("uniform",), "retrieval-pooled",
                         runs_per_answer=3, moves=("stem_first",)),
}

RUNNABLE = tuple(n for n, r in RECIPES.items() if not r.historical)


def refusal(name: str) -> str:
    """Why a recipe name cannot run now ("" where it can): unknown, or historical with its commit."""
    r = RECIPES.get(name)
    if r is None:
        return f"unknown recipe {name!r}; valid: {', '.join(RUNNABLE)}"
    if r.historical:
        commit, why = r.historical
        return (f"recipe {name} is historical: {why}; `git checkout {commit}` runs it as it ran "
                "(experiments/README.md)")
    return ""
