"""How `osnas derive` reads runs: one settings object, checked once against the runs.

The command line maps its flags to `DeriveConfig` in one place (osnas/cli.py), scripts build
it directly, and the genotype file records it (`derive`), so every answer says how it was read.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import List, Optional, Sequence

from osnas.errors import OsnasError

# how each run is read: its alphas, or its supernet asked about each subnet (retrieval.py,
# perturb.py); several runs are always combined by vote (vote.py)
SELECTIONS = ("argmax", "perturb", "retrieval", "retrieval-pooled")
RETRIEVAL = ("retrieval", "retrieval-pooled")  # the selections that score subnets on kept-out data
PERTURB_ORDERS = ("fixed", "greedy")
PUBLISHED = ("osnet", "osnet_ibn", "osnet_ain")  # the designs a searched answer must beat (decide.py)
GATE = 2.0  # IN, or a searched answer over a published one, must win by more than this many standard errors
DEFAULT_BATCHES = {"perturb": 4, "retrieval": 16, "retrieval-pooled": 16}
REMOVED = {"consensus": "several runs are combined by vote, always (osnas derive --run A B C)",
           "vote": "several runs are combined by vote, always: name how each run is read, or leave --select out"}


@dataclass
class DeriveConfig:
    """select: how each run is read (None: what its search settings call for, `default_select`);
    gate: retrieval's threshold in standard errors (None: GATE); batches: validation batches per
    source (None: DEFAULT_BATCHES); order: perturb's position order (None: fixed); stem_first:
    the stem move after retrieval (moves.py); against: published designs the answer must beat on
    fresh kept-out batches, else the best of them is recommended (None: PUBLISHED where every run
    is read by retrieval; () = no check); cost_table / cost_budget: the deployment budget (None:
    the run's); measure: time the derived network on a measured cost table; checkpoint: derive
    one run from this checkpoint; data_root, device: where the runs' data is and where to score."""

    select: Optional[str] = None
    gate: Optional[float] = None
    batches: Optional[int] = None
    order: Optional[str] = None
    stem_first: bool = False
    against: Optional[Sequence[str]] = None
    cost_table: Optional[str] = None
    cost_budget: Optional[float] = None
    measure: bool = True
    checkpoint: Optional[str] = None
    data_root: Optional[str] = None
    device: str = "auto"
    methods: List[str] = field(default_factory=list, repr=False)  # per run, filled by `resolve`

    def record(self) -> dict:
        """What the genotype file keeps of the settings (paths and devices left out)."""
        d = asdict(self)
        for k in ("data_root", "device", "checkpoint"):
            d.pop(k)
        d["against"] = list(self.against or [])
        return d

    def batches_for(self, method: str) -> int:
        return DEFAULT_BATCHES.get(method, 4) if self.batches is None else int(self.batches)


def default_select(weight_step: str, objective: str) -> str:
    """How a run is read when --select is not given: by retrieval-pooled where its supernet can
    be asked on data its weights never saw (objective unseen or identities) or where its alphas
    never moved (weight_step uniform); else by the argmax of its alphas. On the synthetic
    test-beds the retrieval score ranked architectures as retraining does far better than the
    alpha loss did (experiments/README.md)."""
    if weight_step == "uniform" or objective in ("unseen", "identities"):
        return "retrieval-pooled"
    return "argmax"


def resolve(cfg: DeriveConfig, runs: Sequence, settings: Sequence) -> DeriveConfig:
    """Check every option against the runs once, before any scoring; fill each run's method and
    the defaults. `settings`: each run's (weight_step, objective), its search as it ran."""
    if cfg.select in REMOVED:
        raise OsnasError(f"--select {cfg.select} was removed: {REMOVED[cfg.select]}")
    if cfg.select is not None and cfg.select not in SELECTIONS:
        raise OsnasError(f"unknown selection method {cfg.select!r}; valid: {', '.join(SELECTIONS)}")
    if cfg.checkpoint and len(runs) > 1:
        raise OsnasError("--checkpoint names one checkpoint: use it with a single --run")
    methods = [cfg.select or default_select(*st) for st in settings]
    for r, m, (step, _) in zip(runs, methods, settings):
        if step == "uniform" and m == "argmax":
            raise OsnasError(f"{r.path} searched with search.weight_step=uniform: its alphas never moved, so argmax "
                             "has nothing to read; derive it with --select retrieval-pooled (the default)")
    other = sorted(set(methods) - set(RETRIEVAL))
    for flag, on in (("--gate", cfg.gate is not None), ("--stem-first", cfg.stem_first),
                     ("--against", bool(cfg.against))):
        if on and other:
            raise OsnasError(f"{flag} is a setting of the retrieval selections ({', '.join(RETRIEVAL)}), not of "
                             f"{other[0]}")
    if cfg.order is not None and "perturb" not in methods:
        raise OsnasError(f"--order is a setting of --select perturb, not of {methods[0]}")
    if cfg.order is not None and cfg.order not in PERTURB_ORDERS:
        raise OsnasError(f"unknown perturb order {cfg.order!r}; valid: {', '.join(PERTURB_ORDERS)}")
    if cfg.batches is not None and int(cfg.batches) < 1:
        raise OsnasError(f"--batches must be >= 1, got {cfg.batches}")
    gate = check_gate(GATE if cfg.gate is None else cfg.gate)
    against = check_against(cfg.against if cfg.against is not None else (() if other else PUBLISHED))
    return DeriveConfig(**{**asdict(cfg), "gate": gate, "against": against, "order": cfg.order or "fixed",
                           "methods": methods})


def check_gate(z) -> float:
    """The gate in standard errors (`osnas derive --gate`): a finite number >= 0."""
    try:
        v = float(z)
    except (TypeError, ValueError):
        v = float("nan")
    if not v >= 0 or v == float("inf"):
        raise OsnasError(f"--gate {z!r}: expected a number of standard errors >= 0 (default {GATE:g})")
    return v


def check_against(names) -> tuple:
    """Published design names (`--against osnet,osnet_ain`, or none)."""
    if isinstance(names, str):
        names = [] if names.strip().lower() in ("", "none") else [n.strip() for n in names.split(",") if n.strip()]
    bad = [n for n in names if n not in PUBLISHED]
    if bad:
        raise OsnasError(f"--against {','.join(names)}: unknown design {bad[0]!r}; valid: {', '.join(PUBLISHED)} "
                         "(or none)")
    return tuple(dict.fromkeys(names))
