"""`osnas demo`: search -> derive -> retrain -> eval-crossdomain -> plot, with the default recipe.

Runs on the built-in synthetic domains (generated once, cached under the data root):
sources synth0-2, held-out target synth3. The answer is retrained next to plain OSNet and
OSNet-AIN (and, where derive recommended a published design, next to the search's own answer),
all evaluated on the held-out domain. Each stage writes its own folder under --out, so any arrow
can be inspected and re-run alone.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

from osnas.config import build_config
from osnas.data import data_root
from osnas.utils import load_yaml

CONFIGS = Path(__file__).resolve().parent / "configs"


def _stage(i: int, n: int, text: str) -> None:
    print(f"\n[{i}/{n}] {text}", file=sys.stderr, flush=True)


def run_demo(out: str = "runs/demo", data_root_arg: str | None = None, quick: bool = False, **kw) -> dict:
    from osnas.data.synth import ensure_synth
    from osnas.retrain import resolve_retrain_config, train
    from osnas.evaluate import run_eval_crossdomain
    from osnas.derive import run_derive
    from osnas.models.genotype import load_genotype
    from osnas.plot import run_plot
    from osnas.rundir import supernet_dirs
    from osnas.search import run_search

    data_root_arg = data_root_arg or kw.get("data_root")
    t0 = time.time()
    out = Path(out)
    cfg_file = CONFIGS / ("demo_quick.yaml" if quick else "demo.yaml")
    cfg = build_config(cfg_file)
    root = data_root(data_root_arg or cfg.data.root)
    cfg.data.root = str(root)
    n = 6
    _stage(1, n, f"built-in synthetic domains under {root / 'synth'}")
    ensure_synth(root, cfg.data.sources + cfg.data.targets)

    s = cfg.search
    _stage(2, n, f"search: {s.runs} supernets of {s.space} ({s.weight_step} paths, alphas judged on a source each "
                 f"supernet never trained on) on {','.join(cfg.data.sources)}")
    search_dir = out / "search"
    if not all((d / "final_alphas.json").is_file() for d in supernet_dirs(search_dir) or [search_dir]):
        run_search(data_root=str(root), config_file=str(cfg_file), out=str(search_dir),
                   resume=(search_dir / "run.json").is_file())

    _stage(3, n, "derive: each supernet's answer by retrieval, the vote, the check against the published designs")
    gpath = search_dir / "genotype.yaml"
    if not gpath.is_file():
        run_derive(search_dir, batches=2 if quick else None)  # --quick: a smoke run, not an answer
    runs = {}
    for name, genotype in _to_retrain(gpath).items():
        _stage(4, n, f"retrain {name} on {','.join(cfg.data.sources)}")
        rdir = out / f"retrain-{name}"
        if not (rdir / "run.json").is_file() or _unfinished(rdir):
            resume = (rdir / "checkpoint.pth").is_file()
            rcfg, g, rdir = resolve_retrain_config(genotype, None, str(root), str(cfg_file), [], str(rdir), resume)
            g.name = name
            train(rcfg, g, rdir, resume=resume)
        runs[name] = rdir

    _stage(5, n, f"eval-crossdomain on held-out {','.join(cfg.data.targets)}")
    ev = out / "eval"
    metrics = run_eval_crossdomain([str(r / "checkpoint.pth") for r in runs.values()], ",".join(cfg.data.targets),
                                   data_root=str(root), out=str(ev))  # at the size the models were trained

    _stage(6, n, "plot")
    plots = run_plot([str(search_dir)], out=str(out / "plots"), fmt="png", metrics=[str(ev / "metrics.json")])

    g = load_genotype(gpath)
    print(f"\nosnas demo finished in {(time.time() - t0) / 60:.1f} min\n")
    print((ev / "results.md").read_text())
    print(f"the answer: {gpath}  ({g.name or g.select}; IN at: {', '.join(g.in_sites()) or 'nowhere'})")
    if g.decision.get("why"):
        print(f"  the searched answer {g.decision['why']}")
    print(compare_line(metrics))
    print(f"plots: {out / 'plots'}")
    for p in plots:
        print(f"  {p}")
    return metrics


def _to_retrain(gpath: Path) -> dict:
    """{label: genotype}: the answer, the search's own answer where a published design was
    recommended instead, plain OSNet and OSNet-AIN; one retrain per architecture."""
    from osnas.models.genotype import NAMED, load_genotype, named_genotype

    g = load_genotype(gpath)
    own = gpath.with_name(gpath.stem + ".searched" + gpath.suffix)
    cands = {"answer": str(gpath), "searched": str(own) if own.is_file() else None, "osnet": "osnet",
             "osnet_ain": "osnet_ain"}
    out, plans = {}, []
    for label, geno in cands.items():
        if geno is None:
            continue
        plan = (load_genotype(geno) if geno.endswith(".yaml") else named_genotype(geno)).plan
        if plan not in plans:
            plans.append(plan)
            out[label if label != "answer" else (g.name if g.name in NAMED else "answer")] = geno
    return out


def compare_line(metrics: dict) -> str:
    """The answer's held-out mAP next to OSNet's and OSNet-AIN's, with the caveat that one
    retrain seed cannot separate them (the studies in experiments/ measure the noise floor)."""
    def m(label):
        t = metrics["models"][label]["targets"]
        return 100 * sum(v["mAP"] for v in t.values()) / len(t)

    labels = list(metrics["models"])
    searched = labels[0]  # the answer is retrained first (_to_retrain)
    rest = [k for k in labels if k != searched]
    return (f"held-out mAP: the answer ({searched}) {m(searched):.1f} vs " + ", ".join(f"{k} {m(k):.1f}" for k in rest)
            + " (one retrain seed: differences of a few points are within the noise; the studies in "
              "experiments/ give the noise floor)")


def _unfinished(rdir: Path) -> bool:
    from osnas.utils import load_checkpoint

    ck = rdir / "checkpoint.pth"
    if not ck.is_file():
        return True
    cfg = load_yaml(rdir / "config.yaml")
    return load_checkpoint(ck)["epoch"] < cfg["train"]["epochs"]
