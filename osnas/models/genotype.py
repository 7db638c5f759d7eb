"""Genotypes: a frozen normalisation plan, as a file (YAML or JSON), never code to paste.

A genotype holds the op of every normalisation site (`plan`), the width it was searched at,
and where it came from: search space name and hash, per-position choices with their
probabilities and entropy, sources, seed and step, and how it was selected from which runs
(`select`, `agreement`, `runs`; files older than these fields load with them empty). Named
genotypes give the published models (osnet, osnet_ibn, osnet_ain) so every comparison runs
through the same path.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Dict, Optional

import yaml

from osnas.errors import OsnasError
from osnas.models.relax import entropy
from osnas.utils import atomic_write_text, load_yaml
from osnas.models.osnet import WIDTHS, check_plan, default_plan, norm_sites


def _plan(**sites) -> Dict[str, str]:
    p = {s: ops[0] for s, ops in default_plan().items()}
    p.update({k.replace("_", "."): v for k, v in sites.items()})
    return p


# The published models (Zhou et al., "Learning Generalisable Omni-Scale Representations for Person
# Re-Identification", TPAMI 2021: OSNet-IBN and the searched OSNet-AIN).
NAMED = {
    "osnet": _plan(),
    # IN in the stem and after the residual addition in both conv2 blocks
    "osnet_ibn": _plan(stem="in", conv2_0_post="in", conv2_1_post="in"),
    # IN in the stem; the branch's last BN replaced by IN in conv2-1, conv2-2, conv3-2, conv4-1
    "osnet_ain": _plan(stem="in", conv2_0_end="in", conv2_1_end="in", conv3_1_end="in", conv4_0_end="in"),
}


@dataclass
class Genotype:
    plan: Dict[str, str]
    name: str = ""
    arch: str = ""  # width it was searched at ('' = any)
    space: str = ""
    space_hash: str = ""
    positions: dict = field(default_factory=dict)  # name -> {choice, probs: {cand: p}, entropy}
    sources: list = field(default_factory=list)
    seed: Optional[int] = None
    step: Optional[int] = None
    nonshared: dict = field(default_factory=dict)  # unit -> chosen candidate (non-shared supernets)
    # how `osnas derive` chose (osnas.derive): the selection method (argmax | perturb | retrieval | vote;
    # '' = not derived, e.g. a named genotype or a file written before these fields existed), per
    # position the fraction of the runs used whose own choice is this genotype's, and those runs
    select: str = ""
    agreement: dict = field(default_factory=dict)  # position -> fraction of runs agreeing (1.0 for one run)
    runs: list = field(default_factory=list)  # the search run folders the genotype was derived from
    # the deployment cost (osnas.search.budget.cost_record): backend, predicted `relative` latency
    # (to the all-BN network) and `predicted_ms`, the budget, and when timed `latency_ms`
    cost: dict = field(default_factory=dict)
    # the settings derive read the runs with (osnas.derive.options.DeriveConfig.record)
    derive: dict = field(default_factory=dict)
    # the check against the published designs (osnas.derive.decide): every score on fresh kept-out
    # batches, the searched answer, the verdict ("searched" | "published") and why
    decision: dict = field(default_factory=dict)

    def __post_init__(self):
        full = check_plan(self.plan)
        bad = [s for s, ops in full.items() if len(ops) != 1]
        if bad:
            raise OsnasError(f"genotype {self.name or ''}: sites {bad} must have exactly one op")
        self.plan = {s: ops[0] for s, ops in full.items()}
        if self.arch and self.arch not in WIDTHS:
            raise OsnasError(f"genotype {self.name}: unknown arch {self.arch!r}; valid: {', '.join(WIDTHS)}")

    def in_sites(self):
        return [s for s in norm_sites() if self.plan[s] == "in"]

    def to_dict(self) -> dict:
        d = asdict(self)
        d["plan"] = {s: self.plan[s] for s in norm_sites()}
        return d

    def save(self, path: str | Path) -> Path:
        path = Path(path)
        d = self.to_dict()
        text = json.dumps(d, indent=2) + "\n" if path.suffix == ".json" else yaml.safe_dump(d, sort_keys=False)
        atomic_write_text(path, text)
        return path


def named_genotype(name: str, arch: str = "") -> Genotype:
    if name not in NAMED:
        raise OsnasError(f"unknown genotype name {name!r}; valid names: {', '.join(NAMED)} (or a genotype file)")
    return Genotype(plan=dict(NAMED[name]), name=name, arch=arch)


def load_genotype(path_or_name: str | Path) -> Genotype:
    """A genotype from a file (.yaml/.yml/.json) or a named one."""
    s = str(path_or_name)
    if s in NAMED:
        return named_genotype(s)
    path = Path(s)
    if not path.exists():
        raise OsnasError(f"{path}: genotype file not found (named genotypes: {', '.join(NAMED)})")
    d = load_yaml(path, "genotype file")  # YAML is a superset of JSON
    if not isinstance(d, dict) or "plan" not in d or not isinstance(d["plan"], dict):
        raise OsnasError(f"{path}: not a genotype file (expected a mapping with a 'plan' of site: op)")
    known = set(Genotype.__dataclass_fields__)
    unknown = [k for k in d if k not in known]
    if unknown:
        raise OsnasError(f"{path}: unknown genotype fields {unknown}; valid: {', '.join(sorted(known))}")
    try:
        return Genotype(**d)
    except OsnasError as e:
        raise OsnasError(f"{path}: {e}") from None
    except TypeError as e:
        raise OsnasError(f"{path}: malformed genotype ({e})") from None


def genotype_from_probs(space, probs, arch: str = "", shared: bool = True, chosen=None, extra=None,
                        **meta) -> Genotype:
    """The architecture of per-position probabilities (one tensor per position of `space`, a
    SearchSpace), recording each position's choice, probabilities and entropy. `chosen`: the
    candidate index per position (default: the argmax); `extra`: per position, more keys for
    its record (e.g. perturbation scores, votes)."""
    choices, positions = {}, {}
    for i, (p, pr) in enumerate(zip(space.positions, probs)):
        c = p.names[int(pr.argmax()) if chosen is None else chosen[i]]
        choices[p.name] = c
        positions[p.name] = {"choice": c, "probs": {n: round(float(v), 6) for n, v in zip(p.names, pr)},
                             "entropy": round(entropy(pr), 6), **(extra[i] if extra else {})}
    return Genotype(plan=space.plan_for(choices), arch=arch, space=space.name, space_hash=space.sha256,
                    positions=positions, nonshared={} if shared else {p.unit: choices[p.name] for p in space.positions},
                    **meta)
