"""`osnas profile`: measure what each candidate of a search space costs at deployment.

For every position and candidate, the unit that position decides (the stem, an OS block,
...) is built with that candidate, the rest of the network as the space fixes it (other
positions at their no-IN candidate), folded for the chosen backend and timed on its real
input shape; so are the units no position decides and the all-BN reference (plain OSNet).
All configurations are timed interleaved, round by round, so load drift on the machine
hits every candidate alike. The result is a cost table file (osnas.models.cost) that the
search can read to weigh generalisation against latency.

Needed configurations are packed into few networks: network i holds the i-th
configuration of every unit, so a space of 4 candidates per block is built 4 times, not
once per candidate.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Dict, List, Optional, Tuple

import torch

from osnas.errors import OsnasError
from osnas.models.cost import (CostTable, assemble, cost_layout, machine_info, no_in_candidate, now_iso,
                               proxy_cost_table, space_structure)
from osnas.models.latency import (LATENCY_BACKENDS, UNITS, check_backend, check_clock, check_sizes,
                                  measure_units)
from osnas.models.osnet import WIDTHS, OSNet, default_plan
from osnas.models.space import load_space
from osnas.utils import Progress

DEFAULT_REPEATS = 30
DEFAULT_WARMUP = 5


def default_out(backend: str, arch: str, height: int, width: int, batch: int) -> Path:
    """cost_<backend>_<arch>_<h>x<w>_b<batch>.yaml in the current folder (backend 'proxy' for proxy tables)."""
    return Path(f"cost_{backend}_{arch}_{height}x{width}_b{batch}.yaml")


def _build(arch: str, plan: Dict[str, str]) -> OSNet:
    torch.manual_seed(0)  # the weights do not matter for timing; fixed anyway, so runs repeat
    return OSNet(WIDTHS[arch], plan={s: [op] for s, op in plan.items()}).eval()


def pack_networks(layout) -> List[Tuple[Dict[str, str], Dict[str, tuple]]]:
    """[(single-op plan, {unit: configuration timed in it})]: network i holds each unit's i-th configuration."""
    by_unit: Dict[str, list] = {u: [] for u in UNITS}
    for key in layout.keys():
        by_unit[key[0]].append(key)
    nets = []
    for i in range(max(len(v) for v in by_unit.values())):
        chosen = {u: ks[i] for u, ks in by_unit.items() if i < len(ks)}
        plan = dict(layout.base_plan)
        for _, ops in chosen.values():
            plan.update(dict(ops))
        nets.append((plan, chosen))
    return nets


def measure_cost_table(space, arch: str = "osnet_x1_0", backend: str = "eager", height: int = 256, width: int = 128,
                       batch: int = 1, threads: int = 0, repeats: int = DEFAULT_REPEATS, warmup: int = DEFAULT_WARMUP,
                       device: Optional[str] = None, clock: str = "wall", whole: bool = True,
                       progress: bool = True) -> CostTable:
    """Time every configuration a cost table needs (see the module docstring); no file written."""
    space = load_space(space)
    layout = cost_layout(space)
    nets = pack_networks(layout)
    plain = {s: ops[0] for s, ops in default_plan().items()}
    prog = Progress(len(nets) + repeats, "profile", "step", enabled=progress)
    try:
        res = measure_units(((_build(arch, plan), list(chosen)) for plan, chosen in nets), backend, height, width,
                            batch, threads=threads, repeats=repeats, warmup=warmup, device=device, clock=clock,
                            whole=_build(arch, plain) if whole else None, progress=prog)
    finally:
        prog.close()
    costs = {key: (res[f"{i}/{u}"]["median_ms"], res[f"{i}/{u}"]["iqr_ms"])
             for i, (_, chosen) in enumerate(nets) for u, key in chosen.items()}
    n_threads = threads or torch.get_num_threads()
    if backend == "onnxruntime" and not threads:
        n_threads = 0  # onnxruntime's own default
    return CostTable(space=space.name, space_sha256=space.sha256, space_structure=space_structure(space),
                     arch=arch, backend=backend, method="measured", height=height, width=width, batch=batch,
                     threads=threads, repeats=repeats, warmup=warmup, clock=clock,
                     whole_ms=res["whole"]["median_ms"] if whole else None,
                     whole_spread_ms=res["whole"]["iqr_ms"] if whole else None,
                     machine=machine_info(backend, n_threads), created=now_iso(), **assemble(space, layout, costs))


# ----------------------------------------------------------------------------- printing
def _pct(x: float) -> str:
    return f"{x:+.1%}"


def format_table(table: CostTable, space) -> str:
    """The table as text: per group of positions with the same candidates, a position x candidate
    grid of median ms (± spread) and, for IN candidates, their extra cost relative to the
    all-BN network; then the fixed units, the reference and the cheapest / dearest architecture."""
    space = load_space(space)
    measured = table.method == "measured"
    head = (f"{table.space}  {table.arch}  {table.backend}  {table.height}x{table.width}  batch {table.batch}  "
            + (f"threads {table.machine.get('threads', table.threads) or 'default'}  {table.clock} clock  "
               f"median of {table.repeats} (± IQR), ms" if measured else
               "proxy: counted MACs and bytes, ms of a model CPU"))
    lines = [head]
    groups: Dict[tuple, list] = {}
    for p in space.positions:
        groups.setdefault(tuple(p.names), []).append(p)
    ref = table.reference_ms
    for names, positions in groups.items():
        cells = [["position", *names]]
        for p in positions:
            base = no_in_candidate(p)
            row = [p.name]
            for c in names:
                ms, sp = table.latency_ms[p.name][c], table.spread_ms[p.name][c]
                cell = f"{ms:.3f}" + (f"±{sp:.3f}" if measured else "")
                if base is not None and c != base:
                    cell += f" {_pct((ms - table.latency_ms[p.name][base]) / ref)}"
                row.append(cell)
            cells.append(row)
        widths = [max(len(r[i]) for r in cells) for i in range(len(cells[0]))]
        lines.append("")
        lines += ["  ".join(v.ljust(w) for v, w in zip(r, widths)).rstrip() for r in cells]
    lines.append("")
    fixed = ", ".join(f"{u} {v:.3f}" for u, v in table.fixed_units_ms.items())
    lines.append(f"fixed      {table.fixed_ms:8.3f} ms  units no position decides ({fixed or 'none'})")
    line = f"reference  {ref:8.3f} ms  all-BN network (plain OSNet), sum of its units"
    if table.whole_ms:
        line += f"; whole network measured {table.whole_ms:.3f} ms (sum of units {_pct(table.additive_error)})"
    lines.append(line)
    best = {p: min(cs, key=cs.get) for p, cs in table.latency_ms.items()}
    worst = {p: max(cs, key=cs.get) for p, cs in table.latency_ms.items()}
    for label, choice in (("cheapest", best), ("dearest", worst)):
        ms = table.fixed_ms + sum(table.latency_ms[p][c] for p, c in choice.items())
        lines.append(f"{label:<10} {ms:8.3f} ms  x{ms / ref:.3f} of the reference  "
                     + " ".join(f"{p}={c}" for p, c in choice.items()))
    lines.append("(+x%: a candidate's extra cost over the position's no-IN candidate, relative to the reference)")
    if table.method == "measured" and table.notes:
        lines.append(f"note: {table.notes}")
    return "\n".join(lines)


# ----------------------------------------------------------------------------- the stage
def run_profile(space=None, arch: str = "osnet_x1_0", backend: Optional[str] = None,
                height: int = 256, width: int = 128, batch: int = 1, threads: int = 0,
                repeats: int = DEFAULT_REPEATS, warmup: int = DEFAULT_WARMUP, out=None, proxy: bool = False,
                device: Optional[str] = None, clock: str = "wall", whole: bool = True,
                progress: bool = True) -> CostTable:
    """`osnas profile`: build a cost table for `space` at one width, input size, batch and backend,
    print it and write it to `out` (default `default_out(...)`, .yaml/.yml/.json).

    backend: eager | bf16 | torchscript | onnxruntime | cuda (default eager); `proxy=True`
    counts MACs and bytes instead of timing (no backend). threads: torch / onnxruntime
    intra-op threads (0 = their default). device: the GPU for backend cuda (cuda:N).
    clock: wall | cpu (cpu: process CPU time, for a busy machine; needs threads=1).
    whole: also time the whole all-BN network, to report how well the sum of units holds.
    """
    # every argument checked before any work, so a typo costs nothing
    if space is None:  # the space `osnas search` searches by default, so its cost table fits without --space
        from osnas.config import SearchConfig

        space = SearchConfig().space
    if proxy and backend is not None:
        raise OsnasError("--proxy counts MACs and bytes instead of timing: it takes no --backend")
    if not proxy:
        backend = backend or "eager"
        if backend not in LATENCY_BACKENDS:
            raise OsnasError(f"unknown backend {backend!r}; expected one of {', '.join(LATENCY_BACKENDS)}")
    if arch not in WIDTHS:
        raise OsnasError(f"unknown arch {arch!r}; valid widths: {', '.join(WIDTHS)}")
    check_sizes(height, width, batch)
    if not isinstance(threads, int) or threads < 0:
        raise OsnasError(f"--threads must be >= 0 (0 = the default), got {threads!r}")
    if not proxy:
        if repeats < 1:
            raise OsnasError(f"--repeats must be >= 1, got {repeats}")
        if warmup < 0:
            raise OsnasError(f"--warmup must be >= 0, got {warmup}")
        check_clock(clock, backend, threads)
        check_backend(backend, device)
    out = Path(out) if out else default_out("proxy" if proxy else backend, arch, height, width, batch)
    if out.suffix.lower() not in (".yaml", ".yml", ".json"):
        raise OsnasError(f"{out}: a cost table is written as .yaml, .yml or .json")
    if out.is_dir():
        raise OsnasError(f"{out}: is a folder; expected a cost table file name (.yaml or .json)")
    sp = load_space(space)

    if proxy:
        table = proxy_cost_table(sp, arch, height, width, batch)
    else:
        table = measure_cost_table(sp, arch, backend, height, width, batch, threads, repeats, warmup, device,
                                   clock, whole, progress)
    table.save(out)
    print(format_table(table, sp))
    print(f"wrote {out}")
    sys.stdout.flush()
    noise = _relative_spread(table)
    if table.method == "measured" and table.clock == "wall" and noise > NOISY:
        print(f"osnas: note: the timings are noisy (typical IQR {noise:.0%} of the median): the machine is "
              f"probably busy; --threads 1 --clock cpu times one thread's CPU time instead", file=sys.stderr)
    return table


NOISY = 0.25  # typical IQR / median above which a wall-clock profile is flagged as noisy


def _relative_spread(table: CostTable) -> float:
    """The median over candidates of IQR / median: how noisy a measured table is."""
    r = sorted(table.spread_ms[p][c] / v for p, cs in table.latency_ms.items() for c, v in cs.items() if v > 0)
    return r[len(r) // 2] if r else 0.0
