"""`osnas plot`: figures of search and retrain runs, drawn from the files in their folders.

What is drawn depends on what each folder holds:
  search run   alpha_heatmap (argmax outlined where the alphas moved), alpha_trajectories and
               entropy (runs whose alphas moved); retrieval_scores (a genotype.yaml of
               derive --select retrieval in the folder); answer (the check against the
               published designs, when derive made one)
               (+ seeds_agreement and seeds_trajectories when several such runs share a space)
  search folder of several supernets: each supernet's figures (suffix _supernetK), each one's
               retrieval scores as the vote recorded them, seeds_agreement, and answer: every
               supernet's own choice, the vote, and the check against the published designs
  retrain run  training (+ results and retrieval_<target> when RUN/eval/metrics.json exists)
  eval folder  (holding metrics.json) results and retrieval_<target>
  comparison   (holding results.json of run_protocol.py) distribution, agreement (+ pareto when
               latencies are recorded): see osnas/plot/comparison.py
  --metrics    results (mean ± std over files sharing model labels) and retrieval_<target>
With several runs, per-run figures get the run folder's name as suffix (alpha_heatmap_run1.png).
Figures go to --out (default RUN/plots for one run, else ./plots); each written path is printed.
The building blocks live beside this file (readers, search, results, common).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Iterator, List, Optional, Sequence, Tuple

from osnas.errors import OsnasError
from osnas.rundir import PLOTS_DIR
from osnas.plot.readers import (Comparison, Metrics, RetrainRun, SearchFolder, SearchRun, load_metrics, load_run,
                                run_metrics)

if TYPE_CHECKING:  # matplotlib is imported only when a figure is drawn
    from matplotlib.figure import Figure

FORMATS = ("png", "svg")

__all__ = ["run_plot", "load_inputs", "iter_figures"]


def _label_runs(runs: list) -> None:
    from osnas.plot.common import unique_slugs

    slugs = unique_slugs([r.path for r in runs])
    search = [r for r in runs if isinstance(r, SearchRun)]
    seeds = [r.meta.get("seed") for r in search]
    seed_labels = len(search) > 1 and None not in seeds and len(set(seeds)) == len(seeds)
    for r, s in zip(runs, slugs):
        r.slug = s
        r.label = f"seed {r.meta['seed']}" if seed_labels and isinstance(r, SearchRun) else s


def load_inputs(runs: Sequence[str], metrics: Sequence[str] = ()) -> Tuple[list, List[Metrics]]:
    """Read and validate everything first (fails before any figure is drawn)."""
    loaded = [load_run(r) for r in runs]
    _label_runs(loaded)
    files, seen = [], set()
    for m in list(metrics) + [run_metrics(r) for r in loaded]:
        if m is None:
            continue
        mf = load_metrics(m)
        key = mf.path.resolve()
        if key not in seen:
            seen.add(key)
            files.append(mf)
    return loaded, files


def iter_figures(loaded: list, metrics: List[Metrics]) -> Iterator[Tuple[str, "Figure"]]:
    """(file stem, matplotlib Figure) pairs, drawn one at a time."""
    from osnas.plot import results as R
    from osnas.plot import search as S
    from osnas.plot.common import slug

    from osnas.plot.answer import answer_figure

    folders = [r for r in loaded if isinstance(r, SearchFolder)]
    search = [r for r in loaded if isinstance(r, SearchRun)]
    retrain = [r for r in loaded if isinstance(r, RetrainRun)]
    many = len(loaded) > 1
    suffix = (lambda r: f"_{r.slug}") if many else (lambda r: "")
    for f in folders:
        for run, scores in zip(f.runs, f.run_retrieval()):
            run.retrieval, run.label = scores, run.path.name
            yield from _search_figures(S, R, run, f"{suffix(f)}_{slug(run.path.name)}")
        if f.answer is not None:
            yield f"answer{suffix(f)}", answer_figure(f.answer, f.space, [r.path.name for r in f.runs],
                                                      f"The search's answer — {f.label or f.path.name}")
        else:
            R.note(f"{f.path}: no genotype.yaml yet: osnas derive --run {f.path}, then plot again for the answer")
    for r in search:
        yield from _search_figures(S, R, r, suffix(r))
        if r.answer is not None and r.answer.get("decision"):
            yield f"answer{suffix(r)}", answer_figure(r.answer, r.space, [r.path.name],
                                                      f"The search's answer — {r.label or r.path.name}")
    search = search + [run for f in folders for run in f.runs]
    groups = [g for g in S.group_by_space([r for r in search if r.alphas_moved]) if len(g) > 1]
    for g in groups:
        tag = f"_{slug(g[0].space.name)}" if len(groups) > 1 else ""
        yield f"seeds_agreement{tag}", S.seeds_agreement(g)
        yield f"seeds_trajectories{tag}", S.seeds_trajectories(g)
    for r in retrain:
        yield f"training{suffix(r)}", R.training(r)
    for r in (r for r in loaded if isinstance(r, Comparison)):
        from osnas.plot import comparison as K

        yield f"distribution{suffix(r)}", K.distribution(r.data)
        if r.data.get("methods"):
            yield f"agreement{suffix(r)}", K.agreement(r.data)
        if K.has_latency(r.data):
            yield f"pareto{suffix(r)}", K.pareto(r.data)
    if metrics:
        yield "results", R.results(metrics)
        first = {}
        for m in metrics:  # files sharing a label (seeds): examples from the first
            for lab, e in m.models.items():
                if any(r.get("examples") for r in e["targets"].values()):
                    first.setdefault(lab, (m, list(e["targets"])))
        for m in metrics:
            if not any(r.get("examples") for e in m.models.values() for r in e["targets"].values()):
                R.note(f"{m.path}: no retrieval examples (older eval-crossdomain?); retrieval grids skipped")
        for lab, (m, targets) in first.items():
            for t in targets:
                fig = R.retrieval(m, lab, t)
                if fig is not None:
                    name = f"retrieval_{slug(t)}" + (f"_{slug(lab)}" if len(first) > 1 else "")
                    yield name, fig


def _search_figures(S, R, r: SearchRun, tag: str):
    """One supernet's figures: alphas (where they moved) and the retrieval scores derive recorded."""
    yield f"alpha_heatmap{tag}", S.alpha_heatmap(r)
    if r.alphas_moved:
        yield f"alpha_trajectories{tag}", S.alpha_trajectories(r)
        yield f"entropy{tag}", S.entropy(r)
    elif r.retrieval is None:
        R.note(f"{r.path}: its alphas never moved (search.weight_step=uniform); its answer comes from "
               f"osnas derive --run {r.path} (retrieval-pooled), whose scores are plotted once derived")
    if r.retrieval is not None:
        yield f"retrieval_scores{tag}", S.retrieval_scores(r)


def run_plot(runs: Sequence[str], out: Optional[str] = None, fmt: str = "png",
             metrics: Optional[Sequence[str]] = None) -> List[str]:
    """Draw every figure the given run folders and metrics files support; returns the written paths."""
    runs, metrics = list(runs or []), list(metrics or [])
    if fmt not in FORMATS:
        raise OsnasError(f"--format {fmt!r}: expected one of {', '.join(FORMATS)}")
    if not runs and not metrics:
        raise OsnasError("osnas plot: expected at least one --run folder or --metrics file")
    loaded, files = load_inputs(runs, metrics)
    out_dir = Path(out) if out else (Path(runs[0]) / PLOTS_DIR if len(runs) == 1 else Path(PLOTS_DIR))
    if out_dir.exists() and not out_dir.is_dir():
        raise OsnasError(f"{out_dir}: --out must be a folder, got a file")
    from osnas.plot import common  # matplotlib only once the inputs are valid

    written: List[str] = []
    for name, fig in iter_figures(loaded, files):
        path = common.save_figure(fig, out_dir / f"{name}.{fmt}", fmt)
        print(path, flush=True)
        written.append(str(path))
    if not written:
        raise OsnasError(f"nothing to plot in {', '.join(map(str, runs + metrics))}")
    return written
