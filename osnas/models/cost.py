"""Cost tables: what each candidate of a search space costs at deployment, additively.

A cost table holds, for one space, width, input size, batch and backend, the latency of
every unit of the BN-folded network (the stem, each OS block, each transition, conv5 +
head) as the space's choices build it:

    latency_ms[position][candidate]   the unit of that position built with that candidate
    fixed_ms                          the units no position decides (as the space fixes them)
    reference_ms                      every unit with all sites BN: plain OSNet, same width

so an architecture (one candidate per position) is predicted to cost
fixed_ms + sum_position latency_ms[position][choice], and its *relative cost* is that over
reference_ms. BN folds into the convolution before it (no cost); IN stays (per-sample
statistics), so it is the IN sites that make a candidate dearer.

When several positions share one unit (e.g. a block's `end` and `post` sites searched
separately), the first of them carries the unit itself (its other positions at their base
candidate: the no-IN one, else the first) and each later one only its increment over that
base unit; the additive model then holds exactly whenever at most one of them departs from
its base, and approximately otherwise.

Tables come from `osnas profile` (measured, osnas.profile) or from `proxy_cost_table`
(counted MACs and bytes, no timing); `expected_relative_cost` is the differentiable
expectation under the search's probabilities.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import math
import os
import platform
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple, Union

import torch
import torch.nn as nn
import yaml

from osnas.errors import OsnasError
from osnas.models.latency import CLOCKS, LATENCY_BACKENDS, UNITS, check_sizes, unit_sites
from osnas.models.osnet import WIDTHS, default_plan, site_kind
from osnas.utils import atomic_write_text, load_yaml, read_json

COST_FORMAT = "osnas-cost-table"
COST_VERSION = 1
METHODS = ("measured", "proxy")
NO_IN_OPS = ("bn", "none")

UnitKey = Tuple[str, Tuple[Tuple[str, str], ...]]  # (unit, ((site, op), ...) in network order)


# ----------------------------------------------------------------------------- the space's units
def no_in_candidate(position) -> Optional[str]:
    """The first candidate of a position whose sites are all bn or none (no IN), or None."""
    for c, a in position.candidates.items():
        if all(op in NO_IN_OPS for op in a.values()):
            return c
    return None


def base_candidate(position) -> str:
    """The candidate the rest of the network takes while another position is timed: no-IN, else the first."""
    return no_in_candidate(position) or position.names[0]


def unit_key(unit: str, plan: Dict[str, str]) -> UnitKey:
    """The configuration of one unit within a single-op plan {site: op}."""
    return unit, tuple((s, plan[s]) for s in unit_sites(unit))


def space_structure(space) -> str:
    """sha256 of what decides the costs: the fixed ops and every candidate's site ops.

    (Comments or descriptions changing the space file's sha256 do not invalidate a table.)
    """
    d = {"fixed": space.fixed_plan(),
         "positions": [[p.name, {c: dict(sorted(a.items())) for c, a in p.candidates.items()}]
                       for p in space.positions]}
    return hashlib.sha256(json.dumps(d, sort_keys=True).encode()).hexdigest()


@dataclass
class CostLayout:
    """Which unit configurations a cost table needs, and where each one's cost goes."""

    base_plan: Dict[str, str]  # fixed ops + every position at its base candidate
    unit_positions: Dict[str, List[str]]  # unit -> positions deciding it (space order)
    candidate_keys: Dict[str, Dict[str, UnitKey]]  # position -> candidate -> unit configuration
    base_keys: Dict[str, UnitKey]  # unit -> configuration with every position at its base
    fixed_keys: Dict[str, UnitKey]  # units no position decides -> their configuration
    reference_keys: Dict[str, UnitKey]  # every unit -> its all-BN (plain OSNet) configuration

    def keys(self) -> List[UnitKey]:
        """Every distinct configuration to cost, in network order."""
        out = dict.fromkeys(k for u in UNITS for k in self._unit_keys(u))
        return list(out)

    def _unit_keys(self, unit):
        yield self.reference_keys[unit]
        if unit in self.fixed_keys:
            yield self.fixed_keys[unit]
        yield from (self.candidate_keys[p][c] for p in self.unit_positions.get(unit, [])
                    for c in self.candidate_keys[p])


def cost_layout(space) -> CostLayout:
    base = dict(space.fixed_plan())
    for p in space.positions:
        base.update(p.candidates[base_candidate(p)])
    unit_positions: Dict[str, List[str]] = {}
    cand_keys: Dict[str, Dict[str, UnitKey]] = {}
    for p in space.positions:
        unit_positions.setdefault(p.unit, []).append(p.name)
        cand_keys[p.name] = {c: unit_key(p.unit, {**base, **a}) for c, a in p.candidates.items()}
    plain = {s: ops[0] for s, ops in default_plan().items()}
    return CostLayout(base_plan=base, unit_positions=unit_positions, candidate_keys=cand_keys,
                      base_keys={u: unit_key(u, base) for u in unit_positions},
                      fixed_keys={u: unit_key(u, base) for u in UNITS if u not in unit_positions},
                      reference_keys={u: unit_key(u, plain) for u in UNITS})


def assemble(space, layout: CostLayout, costs: Dict[UnitKey, Tuple[float, float]]) -> dict:
    """The table's numbers from per-configuration (median ms, spread ms).

    A later position sharing a unit gets its increment over the base unit; its spread is
    the two spreads combined in quadrature (independent noise).
    """
    latency, spread = {}, {}
    for u, names in layout.unit_positions.items():
        base_ms, base_sp = costs[layout.base_keys[u]]
        for k, name in enumerate(names):
            latency[name], spread[name] = {}, {}
            for c, key in layout.candidate_keys[name].items():
                ms, sp = costs[key]
                if k > 0:
                    ms, sp = ms - base_ms, (0.0 if key == layout.base_keys[u] else math.hypot(sp, base_sp))
                latency[name][c], spread[name][c] = ms, sp
    order = [p.name for p in space.positions]
    clamped = monotone_in_cost(space, latency)
    fixed_units = {u: costs[k][0] for u, k in layout.fixed_keys.items()}
    reference_units = {u: costs[k][0] for u, k in layout.reference_keys.items()}
    return {"latency_ms": {n: latency[n] for n in order}, "spread_ms": {n: spread[n] for n in order},
            "fixed_ms": sum(fixed_units.values()), "fixed_units_ms": fixed_units,
            "reference_ms": sum(reference_units.values()), "reference_units_ms": reference_units,
            "notes": (f"{len(clamped)} candidate(s) timed below a candidate with a subset of their IN sites "
                      f"(timing noise) were raised to it: {', '.join(clamped)}") if clamped else ""}


def monotone_in_cost(space, latency: Dict[str, Dict[str, float]]) -> List[str]:
    """Adding IN sites to a unit cannot make it faster (IN adds work; BN folds away), so a
    candidate measured below another candidate of its position whose IN sites are a subset of
    its own is timing noise: raise it to that candidate's cost, in place. Returns the
    "position:candidate" names raised."""
    raised = []
    for p in space.positions:
        ins = {c: frozenset(s for s, op in sites.items() if op == "in") for c, sites in p.candidates.items()}
        for c in sorted(p.names, key=lambda c: len(ins[c])):  # subsets are settled first
            floor = max((latency[p.name][d] for d in p.names if d != c and ins[d] < ins[c]), default=None)
            if floor is not None and latency[p.name][c] < floor:
                latency[p.name][c] = floor
                raised.append(f"{p.name}:{c}")
    return raised


# ----------------------------------------------------------------------------- the table
@dataclass
class CostTable:
    """Deployment cost of a search space's candidates (see the module docstring)."""

    space: str
    arch: str
    backend: str  # eager | bf16 | torchscript | onnxruntime | cuda | proxy
    height: int
    width: int
    batch: int
    method: str  # measured | proxy
    fixed_ms: float
    latency_ms: Dict[str, Dict[str, float]]
    spread_ms: Dict[str, Dict[str, float]]
    reference_ms: float
    space_sha256: str = ""
    space_structure: str = ""
    threads: int = 0  # requested (0 = the backend's default); machine.threads says what ran
    repeats: int = 0
    warmup: int = 0
    clock: str = ""  # wall | cpu (osnas.models.latency); '' for a proxy table
    whole_ms: Optional[float] = None  # measured whole all-BN network (checks the additive model)
    whole_spread_ms: Optional[float] = None
    fixed_units_ms: Dict[str, float] = field(default_factory=dict)
    reference_units_ms: Dict[str, float] = field(default_factory=dict)
    machine: dict = field(default_factory=dict)
    created: str = ""
    notes: str = ""
    path: str = field(default="", compare=False, repr=False)  # where it was loaded from (not saved)

    # -- derived
    @property
    def additive_error(self) -> Optional[float]:
        """(reference_ms - whole_ms) / whole_ms: how far the sum of units is from the whole network."""
        if not self.whole_ms:
            return None
        return (self.reference_ms - self.whole_ms) / self.whole_ms

    def to_dict(self) -> dict:
        r = _round
        d = {"format": COST_FORMAT, "version": COST_VERSION, "space": self.space, "space_sha256": self.space_sha256,
             "space_structure": self.space_structure, "arch": self.arch, "backend": self.backend,
             "method": self.method, "height": self.height, "width": self.width, "batch": self.batch,
             "threads": self.threads, "repeats": self.repeats, "warmup": self.warmup,
             "clock": self.clock, "reference_ms": r(self.reference_ms), "fixed_ms": r(self.fixed_ms),
             "whole_ms": None if self.whole_ms is None else r(self.whole_ms),
             "whole_spread_ms": None if self.whole_spread_ms is None else r(self.whole_spread_ms),
             "latency_ms": {p: {c: r(v) for c, v in cs.items()} for p, cs in self.latency_ms.items()},
             "spread_ms": {p: {c: r(v) for c, v in cs.items()} for p, cs in self.spread_ms.items()},
             "fixed_units_ms": {u: r(v) for u, v in self.fixed_units_ms.items()},
             "reference_units_ms": {u: r(v) for u, v in self.reference_units_ms.items()},
             "machine": dict(self.machine), "created": self.created, "notes": self.notes}
        return d

    def save(self, path: Union[str, Path]) -> Path:
        """Write atomically: JSON for .json, YAML for .yaml/.yml."""
        path = Path(path)
        suffix = path.suffix.lower()
        if suffix == ".json":
            text = json.dumps(self.to_dict(), indent=2) + "\n"
        elif suffix in (".yaml", ".yml"):
            text = yaml.safe_dump(self.to_dict(), sort_keys=False, default_flow_style=False, width=120)
        else:
            raise OsnasError(f"{path}: a cost table is written as .yaml, .yml or .json, not {path.suffix or 'no suffix'}")
        atomic_write_text(path, text)
        self.path = str(path)
        return path


def _round(v: float) -> float:
    return float(f"{float(v):.6g}")


def _where(table) -> str:
    return table.path or f"cost table ({table.space})"


def check_table_space(table: CostTable, space) -> None:
    """One-line OsnasError unless the table's positions, candidates and site ops are the space's."""
    where = _where(table)
    want = [p.name for p in space.positions]
    have = list(table.latency_ms)
    missing, extra = [n for n in want if n not in table.latency_ms], [n for n in have if n not in want]
    if missing or extra:
        what = "; ".join(x for x in (f"missing positions {missing}" if missing else "",
                                    f"positions not in the space {extra}" if extra else "") if x)
        raise OsnasError(f"{where}: profiled for space {table.space!r}, does not match space {space.name!r} ({what})")
    for p in space.positions:
        if set(table.latency_ms[p.name]) != set(p.names):
            raise OsnasError(f"{where}: position {p.name}: candidates {sorted(table.latency_ms[p.name])} "
                             f"do not match space {space.name!r}'s {sorted(p.names)}")
    if table.space_structure and table.space_structure != space_structure(space):
        raise OsnasError(f"{where}: same positions and candidates as space {space.name!r} but different site ops "
                         f"or fixed sites (the space changed since profiling; run osnas profile again)")


def _num(d, key, where, minimum=None, allow_none=False, integer=False):
    v = d.get(key)
    if v is None and allow_none:
        return None
    ok = isinstance(v, int) if integer else isinstance(v, (int, float))
    if isinstance(v, bool) or not ok or not math.isfinite(v) or (minimum is not None and v < minimum):
        kind = "an integer" if integer else "a finite number"
        raise OsnasError(f"{where}: '{key}' must be {kind}" + (f" >= {minimum}" if minimum is not None else "")
                         + f", got {v!r}")
    return int(v) if integer else float(v)


def _grid(d, key, where) -> Dict[str, Dict[str, float]]:
    g = d.get(key)
    if not isinstance(g, dict) or not g:
        raise OsnasError(f"{where}: '{key}' must map position -> {{candidate: ms}}")
    out = {}
    for p, cs in g.items():
        if not isinstance(cs, dict) or not cs:
            raise OsnasError(f"{where}: {key}.{p} must map candidate -> ms")
        out[str(p)] = {str(c): _num(cs, c, f"{where}: {key}.{p}") for c in cs}
    return out


def table_from_dict(d, where: str = "cost table") -> CostTable:
    """A CostTable from its dict form, validated (format, types, keys of latency_ms == spread_ms)."""
    if not isinstance(d, dict):
        raise OsnasError(f"{where}: expected a mapping (an osnas cost table), got {type(d).__name__}")
    if d.get("format") != COST_FORMAT:
        raise OsnasError(f"{where}: not an osnas cost table (format {d.get('format')!r}, expected {COST_FORMAT!r})")
    if d.get("version") != COST_VERSION:
        raise OsnasError(f"{where}: cost table version {d.get('version')!r} not supported (expected {COST_VERSION})")
    for k in ("space", "arch", "backend", "method"):
        if not isinstance(d.get(k), str) or not d[k]:
            raise OsnasError(f"{where}: '{k}' must be a non-empty string")
    if d["method"] not in METHODS:
        raise OsnasError(f"{where}: method {d['method']!r}; expected one of {', '.join(METHODS)}")
    if d["backend"] not in LATENCY_BACKENDS + ("proxy",):
        raise OsnasError(f"{where}: backend {d['backend']!r}; expected one of {', '.join(LATENCY_BACKENDS + ('proxy',))}")
    if d["arch"] not in WIDTHS:
        raise OsnasError(f"{where}: arch {d['arch']!r}; expected one of {', '.join(WIDTHS)}")
    if d.get("clock", "") not in ("", None) + tuple(CLOCKS):
        raise OsnasError(f"{where}: clock {d.get('clock')!r}; expected one of {', '.join(CLOCKS)}")
    latency, spread = _grid(d, "latency_ms", where), _grid(d, "spread_ms", where)
    if {p: set(c) for p, c in latency.items()} != {p: set(c) for p, c in spread.items()}:
        raise OsnasError(f"{where}: spread_ms must have the same positions and candidates as latency_ms")
    units = {}
    for k in ("fixed_units_ms", "reference_units_ms"):
        u = d.get(k) or {}
        if not isinstance(u, dict) or set(u) - set(UNITS):
            raise OsnasError(f"{where}: '{k}' must map unit -> ms (units: {', '.join(UNITS)})")
        units[k] = {str(n): _num(u, n, f"{where}: {k}") for n in u}
    machine = d.get("machine") or {}
    if not isinstance(machine, dict):
        raise OsnasError(f"{where}: 'machine' must be a mapping")
    return CostTable(
        space=d["space"], arch=d["arch"], backend=d["backend"], method=d["method"],
        height=_num(d, "height", where, 32, integer=True), width=_num(d, "width", where, 16, integer=True),
        batch=_num(d, "batch", where, 1, integer=True), threads=_num(d, "threads", where, 0, integer=True),
        repeats=_num(d, "repeats", where, 0, integer=True), warmup=int(_num(d, "warmup", where, 0, allow_none=True,
                                                                            integer=True) or 0),
        clock=str(d.get("clock") or ""),
        fixed_ms=_num(d, "fixed_ms", where, 0), reference_ms=_positive(d, "reference_ms", where),
        whole_ms=_num(d, "whole_ms", where, 0, allow_none=True),
        whole_spread_ms=_num(d, "whole_spread_ms", where, 0, allow_none=True),
        latency_ms=latency, spread_ms=spread, fixed_units_ms=units["fixed_units_ms"],
        reference_units_ms=units["reference_units_ms"], machine=machine,
        space_sha256=str(d.get("space_sha256") or ""), space_structure=str(d.get("space_structure") or ""),
        created=str(d.get("created") or ""), notes=str(d.get("notes") or ""))


def _positive(d, key, where) -> float:
    v = _num(d, key, where, 0)
    if v <= 0:
        raise OsnasError(f"{where}: '{key}' must be > 0, got {v!r}")
    return v


def load_cost_table(path: Union[str, Path], space=None) -> CostTable:
    """A cost table file (.yaml/.yml/.json), validated; with `space` (name, file or SearchSpace),
    also checked against it (positions, candidates, site ops). Errors are one line naming the path."""
    path = Path(path)
    if path.suffix.lower() not in (".yaml", ".yml", ".json"):
        raise OsnasError(f"{path}: expected a cost table file (.yaml, .yml or .json)")
    d = read_json(path, "cost table") if path.suffix.lower() == ".json" else load_yaml(path, "cost table")
    table = table_from_dict(d, str(path))
    table.path = str(path)
    if space is not None:
        from osnas.models.space import load_space

        check_table_space(table, load_space(space))
    return table


# ----------------------------------------------------------------------------- predictions
def predicted_latency_ms(table: CostTable, choices: Dict[str, str]) -> float:
    """fixed_ms + the chosen candidate's latency at every position (the additive model)."""
    total = table.fixed_ms
    for p, cs in table.latency_ms.items():
        if p not in choices:
            raise OsnasError(f"{_where(table)}: no choice for position {p!r}")
        c = choices[p]
        if c not in cs:
            raise OsnasError(f"{_where(table)}: position {p}: unknown candidate {c!r}; valid: {', '.join(cs)}")
        total += cs[c]
    extra = set(choices) - set(table.latency_ms)
    if extra:
        raise OsnasError(f"{_where(table)}: choices name positions not in the table: {sorted(extra)}")
    return total


def relative_cost(table: CostTable, choices: Dict[str, str]) -> float:
    """Predicted latency of `choices` over the all-BN network's (1.0 = plain OSNet's cost)."""
    return predicted_latency_ms(table, choices) / table.reference_ms


def cost_vectors(table: CostTable, space, dtype=torch.float32, device=None) -> List[torch.Tensor]:
    """latency_ms of each position as a 1-D tensor, in the space's position and candidate order."""
    check_table_space(table, space)
    return [torch.tensor([table.latency_ms[p.name][c] for c in p.names], dtype=dtype, device=device)
            for p in space.positions]


def expected_relative_cost(table: CostTable, space, probs: Sequence[torch.Tensor]) -> torch.Tensor:
    """(fixed_ms + sum_positions sum_c p_c * latency_ms[position][c]) / reference_ms, differentiable.

    `probs`: one 1-D tensor per position in `space.positions` order (the relaxation's
    probabilities over that position's candidates, in `position.names` order).
    """
    if len(probs) != len(space.positions):
        raise OsnasError(f"expected {len(space.positions)} probability vectors (one per position of "
                         f"{space.name}), got {len(probs)}")
    vecs = cost_vectors(table, space, dtype=probs[0].dtype, device=probs[0].device)
    terms = []
    for p, pr, v in zip(space.positions, probs, vecs):
        if pr.shape != v.shape:
            raise OsnasError(f"position {p.name}: probabilities of shape {tuple(pr.shape)}, expected ({len(v)},)")
        terms.append(torch.dot(pr, v))
    return (torch.stack(terms).sum() + table.fixed_ms) / table.reference_ms


# ----------------------------------------------------------------------------- machine
def machine_info(backend: str = "", threads: Optional[int] = None) -> dict:
    """What the timings depend on: CPU model and cores, library versions (no hostname)."""
    from importlib import metadata

    cpu = ""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.lower().startswith(("model name", "hardware", "cpu model")):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    info = {"cpu": cpu or platform.processor() or platform.machine(), "cores": os.cpu_count(),
            "system": f"{platform.system()} {platform.machine()}", "python": platform.python_version(),
            "torch": str(torch.__version__)}
    try:
        info["onnxruntime"] = metadata.version("onnxruntime")
    except metadata.PackageNotFoundError:
        info["onnxruntime"] = None
    if hasattr(os, "sched_getaffinity"):
        info["cores_available"] = len(os.sched_getaffinity(0))
    if threads is not None:
        info["threads"] = threads
    if backend == "cuda" and torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name()
        info["cuda"] = str(torch.version.cuda)
    return info


def now_iso() -> str:
    return _dt.datetime.now(_dt.timezone.utc).replace(microsecond=0).isoformat()


# ----------------------------------------------------------------------------- the proxy
# The proxy prices a unit configuration as   macs / MAC_RATE + bytes / BANDWIDTH + kernels * KERNEL_MS
# (macs and bytes times the batch), in milliseconds of a model CPU. The constants were fitted
# by eye to `osnas profile --backend eager --threads 1 --clock cpu` on a 2-core x86 server CPU
# (x0.25 at 128x64 and x1.0 at 256x128: the all-BN network's sum within 10% of the measured
# one; single units from -60% (the 7x7 stem conv, slower per MAC) to +40% (conv3 blocks at
# x1.0), the x0.25 blocks within 15%). They stand for one fp32 thread; only their ratios
# matter, because the search uses the cost relative to reference_ms, priced alike.
#   MAC_RATE   multiply-accumulates per ms the convolutions sustain (40 GMAC/s: a transition's
#              1x1 conv at x1.0; the depthwise convs are slower, which their bytes account for)
#   BANDWIDTH  bytes per ms a streaming pass moves (5 GB/s, from IN's measured cost at x1.0)
#   KERNEL_MS  fixed cost of one more operator call with its ReLU/bias (40 us: what a block of
#              30 tiny convolutions costs per conv at x0.25, where MACs are negligible). At batch
#              1 on small maps it dominates an IN site's cost.
# Convolutions move their input, output and weights once. BN folds into the conv before it:
# no cost. IN costs IN_PASSES passes over its activation tensor (one read for the
# statistics, one read + one write to normalise) and IN_KERNELS calls; a BN after the
# residual addition has no conv to fold into and costs an affine pass (read + write). Pooling,
# ReLU, additions and the gates are not priced apart: they are the same for every candidate.
MAC_RATE = 4.0e7  # MACs per ms (40 GMAC/s)
BANDWIDTH = 5.0e6  # bytes per ms (5 GB/s)
KERNEL_MS = 0.04  # ms per operator call
BYTES_PER_VALUE = 4  # fp32
IN_PASSES, IN_KERNELS = 3, 1
AFFINE_PASSES, AFFINE_KERNELS = 2, 1


def _op_ms(op: str, kind: str, numel: int, batch: int) -> float:
    """Extra ms of one site's op on a (numel per image) activation, beyond its unit's convolutions."""
    if op == "in":
        passes, kernels = IN_PASSES, IN_KERNELS
    elif op == "bn" and kind == "post":  # nothing to fold into after the addition
        passes, kernels = AFFINE_PASSES, AFFINE_KERNELS
    else:  # folded BN, or nothing
        return 0.0
    return passes * numel * batch * BYTES_PER_VALUE / BANDWIDTH + kernels * KERNEL_MS


def unit_stats(arch: str, height: int, width: int) -> Tuple[Dict[str, dict], Dict[str, int]]:
    """Per unit {macs, bytes, kernels} of its convolutions and linear layers for one image, and
    per site the numel of its activation, counted by forward hooks on the plain network."""
    from osnas.models.osnet import OSNet, NormSite

    model = OSNet(WIDTHS[arch]).eval()
    stats = {u: {"macs": 0, "bytes": 0, "kernels": 0} for u in UNITS}
    site_numel: Dict[str, int] = {}
    hooks = []

    def unit_of(name: str) -> str:
        head = name.split(".")[0]
        if head == "conv1":
            return "stem"
        if head == "head":
            return "conv5"
        if head in ("conv2", "conv3", "conv4"):
            return ".".join(name.split(".")[:2])
        return head

    def conv_hook(u):
        def hook(m, inp, out):
            if isinstance(m, nn.Conv2d):
                k = m.kernel_size[0] * m.kernel_size[1] * (m.in_channels // m.groups)
                stats[u]["macs"] += out.numel() * k
            else:
                stats[u]["macs"] += out.numel() * m.in_features
            stats[u]["bytes"] += (inp[0].numel() + out.numel() + m.weight.numel()) * BYTES_PER_VALUE
            stats[u]["kernels"] += 1
        return hook

    def site_hook(site):
        def hook(m, inp, out):
            site_numel[site] = out.numel()
        return hook

    for name, m in model.named_modules():
        if isinstance(m, (nn.Conv2d, nn.Linear)) and "classifier" not in name:
            hooks.append(m.register_forward_hook(conv_hook(unit_of(name))))
        elif isinstance(m, NormSite):
            site = {"conv1.norm": "stem"}.get(name, name.removesuffix(".norm"))
            hooks.append(m.register_forward_hook(site_hook(site)))
    try:
        with torch.no_grad():
            model(torch.zeros(1, 3, height, width))
    finally:
        for h in hooks:
            h.remove()
    return stats, site_numel


def proxy_cost_table(space, arch: str = "osnet_x1_0", height: int = 256, width: int = 128,
                     batch: int = 1) -> CostTable:
    """A cost table without timing: counted MACs and bytes priced by the constants above."""
    from osnas.models.space import load_space

    space = load_space(space)
    if arch not in WIDTHS:
        raise OsnasError(f"unknown arch {arch!r}; valid widths: {', '.join(WIDTHS)}")
    check_sizes(height, width, batch)
    stats, numel = unit_stats(arch, height, width)
    layout = cost_layout(space)
    costs = {}
    for key in layout.keys():
        u, ops = key
        s = stats[u]
        ms = batch * s["macs"] / MAC_RATE + batch * s["bytes"] / BANDWIDTH + s["kernels"] * KERNEL_MS
        ms += sum(_op_ms(op, site_kind(site), numel[site], batch) for site, op in ops)
        costs[key] = (ms, 0.0)
    parts = assemble(space, layout, costs)
    parts.pop("notes")  # the proxy adds IN work only, so nothing is ever raised
    return CostTable(space=space.name, space_sha256=space.sha256, space_structure=space_structure(space),
                     arch=arch, backend="proxy", method="proxy", height=height, width=width, batch=batch,
                     threads=0, repeats=0, machine={}, created=now_iso(),
                     notes=f"proxy: MAC_RATE={MAC_RATE:g}/ms BANDWIDTH={BANDWIDTH:g} B/ms KERNEL_MS={KERNEL_MS:g}",
                     **parts)


__all__ = ["CostTable", "load_cost_table", "proxy_cost_table", "predicted_latency_ms", "relative_cost",
           "expected_relative_cost", "no_in_candidate", "cost_layout", "assemble", "space_structure",
           "check_table_space", "table_from_dict", "machine_info"]
