"""`osnas search`: train `search.runs` supernets into one run folder, for derive to combine.

    RUN/config.yaml      the resolved settings of the whole search
    RUN/run.json         stage "search", the supernet subfolders (`supernets`), sources, seeds
    RUN/supernet1/ ...   each a complete search run (bilevel.py): seed run.seed + k - 1, and
                         under objective=unseen the k-th source from the last kept out of its
                         weights (the sources take the unseen role in turn)

With `search.runs=1` the run folder is the one supernet's own (no subfolders).

Why several supernets: what one supernet sees is fixed by its training trajectory, and a site
one supernet picks by its own bias is voted out by the others (osnas derive combines them; the
measurements behind it: experiments/README.md).
"""

from __future__ import annotations

import copy
import os
import sys
from pathlib import Path
from typing import List, Optional

from osnas import distributed as dist
from osnas.config import Config, save_config
from osnas.data import DEFAULT_SYNTH_SOURCES
from osnas.errors import OsnasError
from osnas.rundir import (CHECKPOINT, FINAL_ALPHAS, RUN_JSON, SUPERNET_DIR, SUPERNETS_KEY, recorded_objective,
                          supernet_dirs)
from osnas.search.batches import resolve_objective
from osnas.search.bilevel import search, validate_search_config
from osnas.session import resolve_run_config
from osnas.utils import environment, log, write_json


def run_search(sources=None, data_root=None, space=None, config_file=None, overrides=None, out=None,
               resume: bool = False, pretrained: Optional[str] = None, runs: Optional[int] = None,
               cfg: Optional[Config] = None) -> Path:
    """Run (or resume) a search of `search.runs` supernets (`runs` overrides it); returns the
    run folder. `pretrained`: published torchreid ImageNet weights every supernet starts from."""
    if cfg is None:
        cfg, run_dir = resolve_run_config(config_file, overrides, out, resume, sources, data_root, prefix="search")
        if space:
            cfg.search.space = str(space)
        if runs is not None:
            cfg.search.runs = int(runs)
    else:
        run_dir = Path(out)
    check_before_writing(cfg, pretrained, resume)
    # the run folder records what `auto` resolved to, so the run means the same in a later version
    # (a resumed run whose config still says auto continues with what it resolved to then)
    started_as = recorded_objective(run_dir) if resume and cfg.search.objective == "auto" else None
    cfg.search.objective = started_as or resolve_objective(cfg.search.objective,
                                                           len(cfg.data.sources) or len(DEFAULT_SYNTH_SOURCES))
    with dist.session(cfg.run.device) as ctx:
        one = not supernet_dirs(run_dir) and (cfg.search.runs == 1 or (resume and (run_dir / CHECKPOINT).is_file()))
        if one:  # a single supernet: the run folder is its own
            search(cfg, run_dir, resume, ctx, pretrained)
        else:
            search_supernets(cfg, run_dir, resume, ctx, pretrained)
    if ctx.is_main:
        log.info(f"done: {run_dir} (derive with: osnas derive --run {run_dir})")
    return run_dir


def check_before_writing(cfg: Config, pretrained: Optional[str], resume: bool = False) -> None:
    """Every setting, the budget against the cost table, the weights file and, for a new search,
    the data (sources found, batches and kept-out splits possible), before any run folder is
    written: a bad input costs one line and leaves nothing behind that would block the corrected
    command. (A resumed search checks its checkpoint before it reads any data.)"""
    from osnas.search import budget
    from osnas.search.bilevel import search_batches

    space = validate_search_config(cfg)
    s, d = cfg.search, cfg.data
    budget.check_feasible(space, budget.cost_table(s.cost_table, space, cfg.model.arch, d.height, d.width),
                          s.cost_budget)
    if pretrained and not Path(pretrained).is_file():
        raise OsnasError(f"{pretrained}: pretrained weights not found (a torchreid OSNet ImageNet checkpoint)")
    sources = list(d.sources) or list(DEFAULT_SYNTH_SOURCES)
    if not resume:
        search_batches(cfg, cfg.run.seed)  # reads the sources' file lists (synthetic ones are generated once here)
    # the note comes after every check, so a refused command prints its one error line only
    if len(sources) == 2 and resolve_objective(s.objective, 2) == "unseen" and os.environ.get("RANK", "0") == "0":
        print("osnas search: note: search.objective=unseen with two sources trains each supernet on one source and "
              "judges it on the other (the two take the unseen role in turn)", file=sys.stderr, flush=True)


def supernet_configs(cfg: Config) -> List[Config]:
    """The settings of each supernet: seed run.seed + k - 1; under objective unseen with no
    unseen_domain given, supernet k keeps out the k-th source from the last (the sources take
    the unseen role in turn; supernet 1 keeps out the last, as a single search does)."""
    sources = list(cfg.data.sources) or list(DEFAULT_SYNTH_SOURCES)
    rotate = resolve_objective(cfg.search.objective, len(sources)) == "unseen" and not cfg.search.unseen_domain
    out = []
    for k in range(1, cfg.search.runs + 1):
        c = copy.deepcopy(cfg)
        c.run.seed = cfg.run.seed + k - 1
        c.search.runs = 1
        if rotate:
            c.search.unseen_domain = sources[-(((k - 1) % len(sources)) + 1)]
        out.append(c)
    return out


def search_supernets(cfg: Config, run_dir: Path, resume: bool, ctx, pretrained: Optional[str]) -> Path:
    """Every supernet of the search in its subfolder, one after the other; a resume skips the
    finished ones and continues the one that was stopped."""
    run_dir = Path(run_dir)
    known = supernet_dirs(run_dir)
    started = any((p / CHECKPOINT).exists() for p in known)  # a folder whose first supernet never saved is reused
    if not resume and (started or (run_dir / CHECKPOINT).exists()):
        raise OsnasError(f"{run_dir}: already holds a search run; use --resume to continue it or another --out")
    configs = supernet_configs(cfg)
    names = [SUPERNET_DIR.format(k=k) for k in range(1, len(configs) + 1)]
    if started and [p.name for p in known] != names:
        raise OsnasError(f"{run_dir}: its run.json lists supernets {[p.name for p in known]}; the settings ask for "
                         f"{len(names)} (search.runs): resume with the run's own search.runs")
    if not known or not started:
        dist.on_main(lambda: _write_start(cfg, run_dir, names, configs, pretrained), ctx)
    for k, (name, c) in enumerate(zip(names, configs), 1):
        sub = run_dir / name
        if (sub / FINAL_ALPHAS).is_file():
            continue
        if ctx.is_main:
            kept = f", {c.search.unseen_domain} kept out of its weights" if c.search.unseen_domain else ""
            print(f"osnas search: supernet {k}/{len(configs)} (seed {c.run.seed}{kept}) -> {sub}", file=sys.stderr,
                  flush=True)
        search(c, sub, (sub / CHECKPOINT).is_file(), ctx, pretrained)
    return run_dir


def _write_start(cfg: Config, run_dir: Path, names: List[str], configs: List[Config], pretrained) -> None:
    run_dir.mkdir(parents=True, exist_ok=True)
    save_config(cfg, run_dir)
    sources = list(cfg.data.sources) or list(DEFAULT_SYNTH_SOURCES)
    write_json(run_dir / RUN_JSON, {
        "stage": "search", SUPERNETS_KEY: names, "sources": sources, "runs": len(names),
        "space": cfg.search.space, "objective": resolve_objective(cfg.search.objective, len(sources)),
        "seeds": [c.run.seed for c in configs], "unseen_domains": [c.search.unseen_domain or None for c in configs],
        "weight_step": cfg.search.weight_step, "pretrained": str(pretrained) if pretrained else None,
        "environment": environment()})
