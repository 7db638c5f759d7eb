"""`osnas demo`: search -> derive -> retrain (derived + plain OSNet) -> eval-crossdomain -> plot.

Runs on the built-in synthetic domains (generated once, cached under the data root):
sources synth0-2, held-out target synth3. Each stage writes its own folder under --out, so
any arrow can be inspected and re-run alone with the printed commands.
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
    _stage(2, n, f"search: {s.space} supernet ({s.weight_step} weight step, {s.order}-order, alphas judged "
                 f"{s.objective}) on {','.join(cfg.data.sources)}")
    search_dir = out / "search"
    resume = (search_dir / "checkpoint.pth").is_file() and not (search_dir / "final_alphas.json").is_file()
    if not (search_dir / "final_alphas.json").is_file():
        run_search(data_root=str(root), config_file=str(cfg_file), out=str(search_dir), resume=resume)

    _stage(3, n, "derive: the genotype file (the selection the run's settings call for: osnas derive --help)")
    gpath = run_derive(search_dir)

    runs = {}
    names = ("searched", "osnet", "osnet_ain")  # the searched network and the references it must beat
    for i, name in enumerate(names):
        _stage(4, n, f"retrain {name} ({i + 1}/{len(names)}) on {','.join(cfg.data.sources)}")
        rdir = out / f"retrain-{name}"
        genotype = str(gpath) if name == "searched" else name
        if not (rdir / "run.json").is_file() or _unfinished(rdir):
            resume = (rdir / "checkpoint.pth").is_file()
            rcfg, g, rdir = resolve_retrain_config(genotype, None, str(root), str(cfg_file), [], str(rdir), resume)
            if name == "searched":
                g.name = "searched"
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
    print(f"searched genotype: {gpath}  (select {g.select}; IN at: {', '.join(g.in_sites()) or 'nowhere'})")
    print(compare_line(metrics))
    print(f"plots: {out / 'plots'}")
    for p in plots:
        print(f"  {p}")
    return metrics


def compare_line(metrics: dict) -> str:
    """The searched network's held-out mAP next to OSNet's and OSNet-AIN's, with the caveat
    that one retrain seed cannot separate them (experiments/synthetic/RESULTS.md measures the
    noise floor over seeds)."""
    def m(label):
        t = metrics["models"][label]["targets"]
        return 100 * sum(v["mAP"] for v in t.values()) / len(t)

    labels = list(metrics["models"])
    searched = next((k for k in labels if "searched" in k), labels[0])
    rest = [k for k in labels if k != searched]
    return (f"held-out mAP: searched {m(searched):.1f} vs " + ", ".join(f"{k} {m(k):.1f}" for k in rest)
            + " (one retrain seed: differences of a few points are within the noise; see the noise floor "
              "in experiments/synthetic/RESULTS.md)")


def _unfinished(rdir: Path) -> bool:
    from osnas.utils import load_checkpoint

    ck = rdir / "checkpoint.pth"
    if not ck.is_file():
        return True
    cfg = load_yaml(rdir / "config.yaml")
    return load_checkpoint(ck)["epoch"] < cfg["train"]["epochs"]
