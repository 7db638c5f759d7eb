"""Search spaces are data (`search_spaces/*.yaml`); this file loads and validates them.

A space has `fixed` sites (site: op) and `positions`, each with named candidates that assign
ops to one or more sites of one unit (the stem, a block, a transition, conv5). Three ways to
write a position:

    {name: N, candidates: {cand: {site: op, ...}}}        explicit
    {block: conv2.0, candidates: {cand: {end: op, post: op}}}   sites relative to a block
    {site: stem, candidates: [bn, in]}                      one site; candidate names = ops

`definitions:` holds YAML anchors for reuse and is otherwise ignored. The sha256 of the
file goes into every artifact (alpha history, checkpoints, genotypes).
"""

from __future__ import annotations

import hashlib
import importlib.resources
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List


from osnas.errors import OsnasError
from osnas.models.relax import RELAXATIONS
from osnas.utils import load_yaml
from osnas.models.osnet import SITE_OPS, block_names, default_plan, norm_sites, site_kind, site_unit

# The built-in spaces ship inside the package (osnas/search_spaces/*.yaml; the checkout's
# top-level search_spaces/ points there), so a normal, non-editable install finds them too.
SPACES_DIR = Path(str(importlib.resources.files("osnas") / "search_spaces"))
TOP_KEYS = {"name", "description", "relaxation", "fixed", "positions", "definitions"}


@dataclass
class Position:
    name: str
    unit: str
    candidates: Dict[str, Dict[str, str]]  # candidate -> {site: op}

    @property
    def names(self) -> List[str]:
        return list(self.candidates)

    @property
    def sites(self) -> List[str]:
        return list(next(iter(self.candidates.values())))

    @property
    def in_counts(self) -> List[int]:
        """Per candidate (in `names` order), how many of its sites it sets to IN."""
        return [sum(op == "in" for op in self.candidates[n].values()) for n in self.names]

    @property
    def simplest(self) -> int:
        """The index of the candidate with the fewest IN sites (the first of equals): no IN, where
        the position offers it."""
        c = self.in_counts
        return min(range(len(c)), key=lambda k: (c[k], k))


@dataclass
class SearchSpace:
    name: str
    positions: List[Position]
    fixed: Dict[str, str]
    description: str = ""
    relaxation: str = "softmax"
    sha256: str = ""
    path: str = ""
    text: str = field(default="", repr=False)

    def plan(self) -> Dict[str, List[str]]:
        """Ops each site must hold: fixed sites one op, searched sites the union of their candidates'."""
        plan = {s: ops for s, ops in default_plan().items()}
        plan.update({s: [op] for s, op in self.fixed.items()})
        for p in self.positions:
            for s in p.sites:
                ops = []
                for a in p.candidates.values():
                    if a[s] not in ops:
                        ops.append(a[s])
                plan[s] = ops
        return plan

    def fixed_plan(self) -> Dict[str, str]:
        """Sites not searched, with their op (plain-OSNet default where the space says nothing)."""
        searched = {s for p in self.positions for s in p.sites}
        return {s: ops[0] for s, ops in default_plan().items() if s not in searched} | \
            {s: op for s, op in self.fixed.items()}

    def plan_for(self, choices: Dict[str, str]) -> Dict[str, str]:
        """The single-op plan of an architecture {position: candidate}."""
        plan = self.fixed_plan()
        for p in self.positions:
            if p.name not in choices:
                raise OsnasError(f"space {self.name}: no choice for position {p.name!r}")
            c = choices[p.name]
            if c not in p.candidates:
                raise OsnasError(f"space {self.name}: position {p.name}: unknown candidate {c!r}; valid: {', '.join(p.names)}")
            plan.update(p.candidates[c])
        return plan

    def choices_for(self, plan: Dict[str, str]) -> Dict[str, str] | None:
        """The architecture {position: candidate} whose plan is `plan` (a full single-op plan,
        e.g. a published design's), or None where the space cannot express it."""
        fixed = self.fixed_plan()
        if any(plan.get(s, op) != op for s, op in fixed.items()):
            return None
        choices = {}
        for p in self.positions:
            match = [n for n in p.names if all(plan.get(s) == op for s, op in p.candidates[n].items())]
            if not match:
                return None
            choices[p.name] = match[0]
        return choices

    def size(self) -> int:
        n = 1
        for p in self.positions:
            n *= len(p.candidates)
        return n


def list_spaces() -> List[str]:
    return sorted(p.stem for p in SPACES_DIR.glob("*.yaml"))


def load_space(name_or_path) -> SearchSpace:
    """A search space by name (search_spaces/NAME.yaml) or file path, validated."""
    if isinstance(name_or_path, SearchSpace):
        return name_or_path
    s = str(name_or_path)
    path = Path(s)
    if not (path.suffix in (".yaml", ".yml") or path.exists()):
        path = SPACES_DIR / f"{s}.yaml"
        if not path.is_file():
            raise OsnasError(f"unknown search space {s!r}; valid names: {', '.join(list_spaces())} (or a YAML file)")
    if not path.is_file():
        raise OsnasError(f"{path}: search space file not found")
    d = load_yaml(path, "search space file")
    raw = path.read_bytes()
    try:
        space = parse_space(d)
    except OsnasError as e:
        raise OsnasError(f"{path}: {e}") from None
    space.sha256 = hashlib.sha256(raw).hexdigest()
    space.path, space.text = str(path), raw.decode("utf-8", "replace")
    return space


def parse_space(d) -> SearchSpace:
    if not isinstance(d, dict):
        raise OsnasError("a search space must be a mapping with 'name' and 'positions'")
    unknown = set(d) - TOP_KEYS
    if unknown:
        raise OsnasError(f"unknown keys {sorted(unknown)}; valid: {', '.join(sorted(TOP_KEYS))}")
    name = d.get("name")
    if not isinstance(name, str) or not name:
        raise OsnasError("missing 'name' (a string)")
    relax = d.get("relaxation", "softmax")
    if relax not in RELAXATIONS:
        raise OsnasError(f"relaxation {relax!r}: expected one of {', '.join(RELAXATIONS)}")
    valid_sites = norm_sites()
    fixed = d.get("fixed") or {}
    if not isinstance(fixed, dict):
        raise OsnasError("'fixed' must be a mapping site: op")
    for s, op in fixed.items():
        _check_site_op(s, op, "fixed", valid_sites)
    pos_list = d.get("positions")
    if not isinstance(pos_list, list) or not pos_list:
        raise OsnasError("'positions' must be a non-empty list")
    positions, seen_sites, seen_names = [], {}, set()
    for i, entry in enumerate(pos_list):
        p = _parse_position(i, entry, valid_sites)
        if p.name in seen_names:
            raise OsnasError(f"position {p.name!r} appears twice")
        seen_names.add(p.name)
        for s in p.sites:
            if s in fixed:
                raise OsnasError(f"site {s!r} is both fixed and searched (position {p.name})")
            if s in seen_sites:
                raise OsnasError(f"site {s!r} is searched by two positions ({seen_sites[s]} and {p.name})")
            seen_sites[s] = p.name
        positions.append(p)
    if relax == "sigmoid":
        multi = [p.name for p in positions if len(p.candidates) != 2]
        if multi:
            raise OsnasError(f"sigmoid relaxation needs 2 candidates per position; {multi} have more")
    return SearchSpace(name=name, positions=positions, fixed=dict(fixed), description=str(d.get("description", "")),
                       relaxation=relax)


def _check_site_op(site, op, where, valid_sites):
    if site not in valid_sites:
        raise OsnasError(f"{where}: unknown site {site!r}; valid sites: {', '.join(valid_sites)}")
    allowed = SITE_OPS[site_kind(site)]
    if op not in allowed:
        raise OsnasError(f"{where}: site {site}: unknown candidate op {op!r}; allowed: {', '.join(allowed)}")


def _parse_position(i, e, valid_sites) -> Position:
    where = f"positions[{i}]"
    if not isinstance(e, dict) or "candidates" not in e:
        raise OsnasError(f"{where}: expected a mapping with 'candidates'")
    extra = set(e) - {"name", "block", "site", "candidates"}
    if extra:
        raise OsnasError(f"{where}: unknown keys {sorted(extra)}; valid: name, block, site, candidates")
    cands = e["candidates"]
    if "site" in e:
        site = e["site"]
        if not isinstance(cands, list):
            raise OsnasError(f"{where}: with 'site', candidates must be a list of ops")
        cands = {str(op): {site: op} for op in cands}
        name = e.get("name", site)
    elif "block" in e:
        block = e["block"]
        if block not in block_names():
            raise OsnasError(f"{where}: unknown block {block!r}; valid: {', '.join(block_names())}")
        if not isinstance(cands, dict):
            raise OsnasError(f"{where}: with 'block', candidates must map name -> {{end: op, post: op}}")
        out = {}
        for c, a in cands.items():
            if not isinstance(a, dict):
                raise OsnasError(f"{where}: candidate {c!r} must map end/post to ops")
            bad = set(a) - {"end", "post"}
            if bad:
                raise OsnasError(f"{where}: candidate {c!r}: unknown block sites {sorted(bad)}; valid: end, post")
            out[str(c)] = {f"{block}.{k}": v for k, v in a.items()}
        cands, name = out, e.get("name", block)
    else:
        if "name" not in e or not isinstance(cands, dict):
            raise OsnasError(f"{where}: expected 'site', 'block', or 'name' with candidates {{cand: {{site: op}}}}")
        name = e["name"]
        cands = {str(c): dict(a) if isinstance(a, dict) else a for c, a in cands.items()}
    if len(cands) < 2:
        raise OsnasError(f"{where} ({name}): needs at least 2 candidates, got {len(cands)}")
    site_sets = set()
    for c, a in cands.items():
        if not isinstance(a, dict) or not a:
            raise OsnasError(f"{where} ({name}): candidate {c!r} must assign ops to sites")
        for s, op in a.items():
            _check_site_op(s, op, f"{where} ({name}) candidate {c!r}", valid_sites)
        site_sets.add(frozenset(a))
    if len(site_sets) != 1:
        raise OsnasError(f"{where} ({name}): all candidates must assign the same sites")
    sites = sorted(next(iter(site_sets)))
    unit_set = {site_unit(s) for s in sites}
    if len(unit_set) != 1:
        raise OsnasError(f"{where} ({name}): a position's sites must belong to one unit, got {sorted(unit_set)}")
    assignments = [tuple(sorted(a.items())) for a in cands.values()]
    if len(set(assignments)) != len(assignments):
        raise OsnasError(f"{where} ({name}): two candidates make the same architecture")
    return Position(name=str(name), unit=unit_set.pop(), candidates=cands)
