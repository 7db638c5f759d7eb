"""Run folders and metrics files -> validated records for plotting.

Every missing, empty or malformed file raises a one-line OsnasError naming the file and what
was expected. A torn last line of a JSONL file (a run killed mid-write) is dropped.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Union

import numpy as np

from osnas.errors import OsnasError
from osnas.utils import load_yaml, read_json, read_jsonl

NON_LOSS_KEYS = {"epoch", "lr", "acc", "fixbase"}


# ----------------------------------------------------------------------------- records
@dataclass
class History:
    """alphas.jsonl as arrays: T steps."""

    steps: np.ndarray                    # (T,)
    probs: Dict[str, np.ndarray]         # position -> (T, n_candidates), space order
    entropy: Dict[str, np.ndarray]       # position -> (T,) nats
    tau: np.ndarray                      # (T,)
    warm: np.ndarray                     # (T,) bool: warm-up step (alphas frozen, loss_a null)
    epochs: np.ndarray                   # (T,)


@dataclass
class SearchRun:
    path: Path
    meta: dict                           # run.json
    space: object                        # osnas.models.space.SearchSpace
    history: History
    final: Dict[str, Dict[str, float]]   # position -> {candidate: p}, space order
    choices: Dict[str, str]              # position -> chosen candidate
    final_source: str = ""               # file the final probabilities came from
    retrieval: Optional["RetrievalScores"] = None  # genotype.yaml of derive --select retrieval
    answer: Optional[dict] = None        # genotype.yaml of derive in the folder, as written
    label: str = ""                      # legend label, unique among the plotted runs
    slug: str = ""                       # file-name part, unique among the plotted runs

    @property
    def positions(self):
        return self.space.positions

    @property
    def alphas_moved(self) -> bool:
        """False for a run whose alphas never left their start (search.weight_step=uniform): its
        alpha figures would show nothing, its answer is in the derived genotype."""
        first = {k: v[0] for k, v in self.history.probs.items()}  # (C,) per position
        return (any(float(np.ptp(v, axis=0).max()) > 0 for v in self.history.probs.values())
                or any(abs(self.final[k][c] - first[k][j]) > 1e-9
                       for k in first for j, c in enumerate(self.final[k])))

    @property
    def relaxation(self) -> str:
        return str(self.meta.get("relaxation") or self.space.relaxation)

    def genotype_key(self) -> tuple:
        return tuple(self.choices[p.name] for p in self.positions)


@dataclass
class SearchFolder:
    """A search of several supernets (search.runs > 1): each supernet's run, and the answer
    derive wrote into the folder (genotype.yaml: the vote and the check), if it has one."""

    path: Path
    meta: dict
    runs: List[SearchRun]
    answer: Optional[dict] = None
    label: str = ""
    slug: str = ""

    @property
    def space(self):
        return self.runs[0].space

    def run_retrieval(self) -> List[Optional["RetrievalScores"]]:
        """Each supernet's own retrieval scores, as the vote recorded them (`run_scores`)."""
        pos = (self.answer or {}).get("positions") or {}
        out = []
        for k in range(len(self.runs)):
            try:
                choices = {q.name: pos[q.name]["run_choices"][k] for q in self.space.positions}
                rs = [pos[q.name]["run_scores"][k] for q in self.space.positions]
            except (KeyError, IndexError, TypeError):
                out.append(None)
                continue
            out.append(RetrievalScores(path=self.path / "genotype.yaml", choices=choices,
                                       scores={q.name: {c: float(r["scores"][c]) for c in q.names}
                                               for q, r in zip(self.space.positions, rs)},
                                       gap_se={q.name: {c: float(r["gap_se"][c]) for c in q.names}
                                               for q, r in zip(self.space.positions, rs)}))
        return out


@dataclass
class RetrievalScores:
    """What `osnas derive --select retrieval` recorded per position (genotype.yaml)."""

    path: Path
    choices: Dict[str, str]              # position -> chosen candidate
    scores: Dict[str, Dict[str, float]]  # position -> {candidate: held-out mAP, 0-1}
    gap_se: Dict[str, Dict[str, float]]  # position -> {candidate: distance below the best, standard errors}


@dataclass
class RetrainRun:
    path: Path
    meta: dict
    log: List[dict]
    genotype: dict = field(default_factory=dict)
    label: str = ""
    slug: str = ""


@dataclass
class EvalFolder:
    """A folder holding only an eval-crossdomain output (metrics.json)."""

    path: Path
    label: str = ""
    slug: str = ""


@dataclass
class Metrics:
    path: Path
    data: dict

    @property
    def models(self) -> Dict[str, dict]:
        return self.data["models"]


@dataclass
class Comparison:
    """A comparison folder: results.json with retrained architectures (osnas.plot.comparison)."""

    path: Path
    data: dict
    label: str = ""
    slug: str = ""


Run = Union[SearchRun, SearchFolder, RetrainRun, EvalFolder, Comparison]


# ----------------------------------------------------------------------------- files
def _read_mapping(path: Path, what: str) -> dict:
    d = load_yaml(path, what) if path.suffix in (".yaml", ".yml") else read_json(path, what)
    if not isinstance(d, dict):
        raise OsnasError(f"{path}: expected a {what} holding a mapping, got {type(d).__name__}")
    return d


def _num(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


# ----------------------------------------------------------------------------- runs
def load_run(path) -> Run:
    """A run folder: search (alphas), retrain (train log) or a bare eval folder (metrics.json)."""
    p = Path(path)
    if not p.exists():
        raise OsnasError(f"{p}: run folder not found")
    if not p.is_dir():
        raise OsnasError(f"{p}: expected a run folder (from osnas search or retrain), got a file")
    rj = p / "run.json"
    if rj.is_file():
        meta = _read_mapping(rj, "run description (run.json)")
        stage = meta.get("stage")
    elif (p / "alphas.jsonl").is_file():
        meta, stage = {}, "search"
    elif (p / "train_log.jsonl").is_file():
        meta, stage = {}, "retrain"
    elif (p / "metrics.json").is_file():
        return EvalFolder(path=p)
    elif (p / "results.json").is_file():
        return load_comparison(p / "results.json")
    else:
        subs = sorted(d.name for d in p.iterdir() if d.is_dir() and (d / "run.json").is_file())
        hint = f"; it holds runs {', '.join(subs[:8])}: pass those" if subs else ""
        raise OsnasError(f"{p}: not a run folder (expected run.json with alphas.jsonl or train_log.jsonl, "
                         f"from osnas search or retrain{hint})")
    if stage == "search" and isinstance(meta.get("supernets"), list):
        return load_search_folder(p, meta)
    if stage == "search":
        return load_search_run(p, meta)
    if stage == "retrain":
        return load_retrain_run(p, meta)
    raise OsnasError(f"{rj}: stage {stage!r}: expected 'search' or 'retrain'")


def _load_space(p: Path, meta: dict):
    from osnas.models.space import load_space

    sp = p / "space.yaml"
    if sp.is_file():
        return load_space(sp)
    name = meta.get("space")
    if not name:
        raise OsnasError(f"{sp}: search space not found (and run.json names no space)")
    return load_space(str(name))


def load_search_run(p: Path, meta: Optional[dict] = None) -> SearchRun:
    meta = meta if meta is not None else _read_mapping(p / "run.json", "run description (run.json)")
    space = _load_space(p, meta)
    hp = p / "alphas.jsonl"
    rows = read_jsonl(hp, "alpha history")
    history = _history(hp, rows, space)
    final, choices, src = _final(p, space, history)
    g = p / "genotype.yaml"
    return SearchRun(path=p, meta=meta, space=space, history=history, final=final, choices=choices,
                     final_source=src, retrieval=_retrieval(g, space),
                     answer=_read_mapping(g, "genotype") if g.is_file() else None)


def load_search_folder(p: Path, meta: dict) -> SearchFolder:
    """A search folder of several supernets; each supernet must be readable (a missing one: an
    unfinished search, named)."""
    runs = []
    for name in meta["supernets"]:
        sub = p / str(name)
        if not (sub / "alphas.jsonl").is_file():
            raise OsnasError(f"{sub}: supernet run not found or not started (resume the search: osnas search "
                             f"--out {p} --resume)")
        runs.append(load_search_run(sub))
    g = p / "genotype.yaml"
    return SearchFolder(path=p, meta=meta, runs=runs, answer=_read_mapping(g, "genotype") if g.is_file() else None)


def _retrieval(f: Path, space) -> Optional[RetrievalScores]:
    """The retrieval scores of the run's genotype.yaml; None when it has none (another selection)."""
    if not f.is_file():
        return None
    d = _read_mapping(f, "genotype")
    if not str(d.get("select", "")).startswith("retrieval"):
        return None
    pos = d.get("positions") if isinstance(d.get("positions"), dict) else {}
    choices, scores, gaps = {}, {}, {}
    for q in space.positions:
        e = pos.get(q.name)
        sc, gp = (e.get("scores"), e.get("gap_se")) if isinstance(e, dict) else (None, None)
        if (not isinstance(sc, dict) or not isinstance(gp, dict) or e.get("choice") not in q.names
                or any(not _num(sc.get(c)) or not isinstance(gp.get(c), (int, float)) for c in q.names)):
            raise OsnasError(f"{f}: position {q.name}: expected choice, scores and gap_se for "
                             f"{', '.join(q.names)} (a genotype of derive --select retrieval)")
        choices[q.name] = e["choice"]
        scores[q.name] = {c: float(sc[c]) for c in q.names}
        gaps[q.name] = {c: float(gp[c]) for c in q.names}
    return RetrievalScores(path=f, choices=choices, scores=scores, gap_se=gaps)


def _history(hp: Path, rows: List[dict], space) -> History:
    names = [q.name for q in space.positions]
    steps, tau, warm, epochs = [], [], [], []
    probs = {n: [] for n in names}
    ent = {n: [] for n in names}
    for i, r in enumerate(rows):
        where = f"{hp}: row {i + 1}"
        pr = r.get("probs")
        if not isinstance(pr, dict) or not _num(r.get("step")):
            raise OsnasError(f"{where}: expected 'step' and 'probs' {{position: {{candidate: p}}}}")
        if set(pr) != set(names):
            raise OsnasError(f"{where}: positions {sorted(pr)} do not match space {space.name} ({', '.join(names)})")
        for q in space.positions:
            d = pr[q.name]
            if not isinstance(d, dict) or any(not _num(d.get(c)) for c in q.names):
                raise OsnasError(f"{where}: position {q.name}: expected probabilities for {', '.join(q.names)}")
            v = [float(d[c]) for c in q.names]
            probs[q.name].append(v)
            e = (r.get("entropy") or {}).get(q.name) if isinstance(r.get("entropy"), dict) else None
            ent[q.name].append(float(e) if _num(e) else -sum(x * math.log(max(x, 1e-12)) for x in v))
        steps.append(float(r["step"]))
        tau.append(float(r["tau"]) if _num(r.get("tau")) else 1.0)
        warm.append(r.get("loss_a", 0.0) is None)
        epochs.append(float(r["epoch"]) if _num(r.get("epoch")) else 0.0)
    return History(steps=np.asarray(steps), probs={k: np.asarray(v) for k, v in probs.items()},
                   entropy={k: np.asarray(v) for k, v in ent.items()}, tau=np.asarray(tau),
                   warm=np.asarray(warm, dtype=bool), epochs=np.asarray(epochs))


def _final(p: Path, space, history: History):
    """Final probabilities: final_alphas.json, else genotype.yaml, else the last history row."""
    for name, what in (("final_alphas.json", "final alphas"), ("genotype.yaml", "genotype")):
        f = p / name
        if not f.is_file():
            continue
        d = _read_mapping(f, what)
        pos = d.get("positions")
        if not isinstance(pos, dict) or not pos:
            raise OsnasError(f"{f}: expected 'positions' {{position: {{choice, probs}}}} (a genotype from a search)")
        final, choices = {}, {}
        for q in space.positions:
            e = pos.get(q.name)
            pr = e.get("probs") if isinstance(e, dict) else None
            if not isinstance(pr, dict) or any(not _num(pr.get(c)) for c in q.names):
                raise OsnasError(f"{f}: position {q.name}: expected probs for {', '.join(q.names)} "
                                 f"(does it belong to space {space.name}?)")
            final[q.name] = {c: float(pr[c]) for c in q.names}
            ch = e.get("choice")
            choices[q.name] = ch if ch in q.names else max(q.names, key=lambda c: final[q.name][c])
        return final, choices, name
    final = {q.name: dict(zip(q.names, map(float, history.probs[q.name][-1]))) for q in space.positions}
    choices = {k: max(v, key=v.get) for k, v in final.items()}
    return final, choices, "alphas.jsonl (last step)"


def load_retrain_run(p: Path, meta: Optional[dict] = None) -> RetrainRun:
    meta = meta if meta is not None else {}
    lp = p / "train_log.jsonl"
    rows = read_jsonl(lp, "training log")
    for i, r in enumerate(rows):
        if not _num(r.get("epoch")):
            raise OsnasError(f"{lp}: row {i + 1}: expected 'epoch' and per-epoch losses")
    g = {}
    if (p / "genotype.yaml").is_file():
        try:
            g = _read_mapping(p / "genotype.yaml", "genotype")
        except OsnasError:
            g = {}  # only used for the title
    return RetrainRun(path=p, meta=meta, log=rows, genotype=g)


# ----------------------------------------------------------------------------- metrics
def load_metrics(path) -> Metrics:
    p = Path(path)
    if p.is_dir():
        if (p / "metrics.json").is_file():
            p = p / "metrics.json"
        else:
            raise OsnasError(f"{p}: expected a metrics.json file (from osnas eval-crossdomain), got a folder")
    d = _read_mapping(p, "metrics file (metrics.json)")
    models = d.get("models")
    if not isinstance(models, dict) or not models:
        raise OsnasError(f"{p}: expected 'models' {{label: {{targets: ...}}}} "
                         "(a metrics.json from osnas eval-crossdomain)")
    for label, m in models.items():
        ts = m.get("targets") if isinstance(m, dict) else None
        if not isinstance(ts, dict) or not ts:
            raise OsnasError(f"{p}: model {label!r}: expected 'targets' {{target: {{rank1, mAP, ...}}}}")
        for t, r in ts.items():
            if not isinstance(r, dict) or not _num(r.get("rank1")) or not _num(r.get("mAP")):
                raise OsnasError(f"{p}: model {label!r} target {t!r}: expected numeric 'rank1' and 'mAP' (fractions)")
    if not isinstance(d.get("targets"), list):
        d["targets"] = list(dict.fromkeys(t for m in models.values() for t in m["targets"]))
    return Metrics(path=p, data=d)


def run_metrics(run: Run) -> Optional[Path]:
    """The metrics.json a run folder holds (RUN/eval/metrics.json, or an eval folder's own)."""
    for f in (run.path / "eval" / "metrics.json", run.path / "metrics.json"):
        if f.is_file():
            return f
    return None


def _seeds_ok(entry: dict) -> bool:
    """`mAP_seeds`, where present: a non-empty list of numbers (one retrain per seed)."""
    v = entry.get("mAP_seeds")
    return v is None or (isinstance(v, list) and bool(v) and all(_num(x) for x in v))


def load_comparison(path: Path) -> Comparison:
    """results.json of a comparison: yardstick {name: {mAP, rank1, [mAP_seeds], [latency_ms]}},
    methods, noise."""
    d = _read_mapping(path, "comparison results (results.json)")
    yard = d.get("yardstick")
    if not isinstance(yard, dict) or not yard:
        raise OsnasError(f"{path}: expected 'yardstick' {{architecture: {{mAP, rank1}}}} (run_protocol.py results)")
    for k, v in yard.items():
        if not isinstance(v, dict) or not _num(v.get("mAP")):
            raise OsnasError(f"{path}: yardstick {k!r}: expected a numeric 'mAP' (a fraction)")
        if not _seeds_ok(v):
            raise OsnasError(f"{path}: yardstick {k!r}: 'mAP_seeds' must be a list of numbers (one per retrain seed)")
    methods = d.get("methods", {})
    if not isinstance(methods, dict):
        raise OsnasError(f"{path}: 'methods' must be a mapping of method -> results")
    for m, r in methods.items():
        rows = r.get("per_seed") if isinstance(r, dict) else None
        if not isinstance(rows, list) or not all(isinstance(x, dict) and _num(x.get("mAP")) for x in rows):
            raise OsnasError(f"{path}: method {m!r}: expected 'per_seed' [{{seed, mAP}}, ...]")
        if not all(_seeds_ok(x) for x in rows):
            raise OsnasError(f"{path}: method {m!r}: 'mAP_seeds' must be a list of numbers (one per retrain seed)")
        if not _num(r.get("mean_position_agreement", 0.0)):
            raise OsnasError(f"{path}: method {m!r}: 'mean_position_agreement' must be a number")
    return Comparison(path=path.parent, data=d)
