"""The synthetic test-bed: does IN placement matter across the built-in domains, and what does the search find?

1. Domain gap: OSNet trained on one domain, evaluated on that domain's own query/gallery
   (identity is learnable) and on another domain (the gap).
2. Main table: sources synth0-2, held-out target synth3; cross-domain rank-1 and mAP of
   OSNet, OSNet-IBN, OSNet-AIN (published genotype) and the genotype our search finds
   (bilevel, leave-one-domain-out), mean ± std over seeds; how often the search picks the
   same genotype across seeds.

Every number in RESULTS_synth_testbed.md comes from the run folders this script leaves under --out.

    python experiments/synthetic/run_testbed.py --out runs/testbed --seeds 1,2,3

Other search recipes on the same domains: `--recipe NAME --search-set KEY=VALUE ...` (and
`--select METHOD` for derive). Their searches, searched retrains and evaluations go to
seedN/search-NAME, retrain-searched-NAME, eval-NAME; the reference retrains are shared.

    python experiments/synthetic/run_testbed.py --out runs/testbed --seeds 1,2,3,4,5 --recipe uniform \
        --config osnas/configs/demo.yaml --results uniform.md       # the demo's search recipe

A recipe can also search nothing and derive from two recipes' searches of each seed together
(`--pair A,B`: `osnas derive --run seedN/search-A seedN/search-B`), as the protocol's default
`pair-pooled` does, or from one other recipe's search derived again with other settings
(`--from A`, e.g. with `--stem-first`); its genotype goes to seedN/search-NAME/genotype.yaml.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from collections import Counter
from pathlib import Path

from osnas.errors import OsnasError
from osnas.utils import load_yaml

HERE = Path(__file__).resolve().parent
MODELS = ("osnet", "osnet_ibn", "osnet_ain", "searched")


def _retrain(genotype, name, cfg_file, root, out, sources, seed, extra=()):
    from osnas.retrain import resolve_retrain_config, train
    from osnas.utils import load_checkpoint

    ck = out / "checkpoint.pth"
    overrides = [f"run.seed={seed}", *extra]
    if ck.is_file():
        cfg, g, _ = resolve_retrain_config(genotype, sources, str(root), str(cfg_file), overrides, str(out), False)
        if load_checkpoint(ck)["epoch"] >= cfg.train.epochs:
            return out
        return train(*resolve_retrain_config(genotype, sources, str(root), str(cfg_file), overrides, str(out), True)[:3],
                     resume=True)
    cfg, g, rdir = resolve_retrain_config(genotype, sources, str(root), str(cfg_file), overrides, str(out), False)
    g.name = name
    return train(cfg, g, rdir)


def _eval(ckpts, targets, root, out, cfg):
    from osnas.evaluate import run_eval_crossdomain

    if (out / "metrics.json").is_file():
        return json.loads((out / "metrics.json").read_text())
    return run_eval_crossdomain([str(c) for c in ckpts], targets, data_root=str(root), out=str(out),
                                overrides=[f"data.height={cfg.data.height}", f"data.width={cfg.data.width}"])


def domain_gap(cfg_file, root, out, seed):
    from osnas.config import build_config

    cfg = build_config(cfg_file)
    r = _retrain("osnet", "osnet", cfg_file, root, out / "gap-train-synth0", "synth0", seed)
    m = _eval([r / "checkpoint.pth"], "synth0,synth3", root, out / "gap-eval", cfg)
    return next(iter(m["models"].values()))["targets"]


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="runs/testbed")
    ap.add_argument("--data-root", default=None)
    ap.add_argument("--seeds", default="1,2,3")
    ap.add_argument("--config", default=str(HERE / "testbed.yaml"))
    ap.add_argument("--results", default=str(HERE / "RESULTS_synth_testbed.md"))
    ap.add_argument("--recipe", default="lodo", help="name of the search recipe (folder suffix unless lodo)")
    ap.add_argument("--search-set", action="append", default=[], metavar="KEY=VALUE",
                    help="overrides for the search only (the retrains keep the config's settings)")
    ap.add_argument("--select", default=None, help="derive --select (default: what the run's settings call for)")
    ap.add_argument("--pair", default=None, metavar="A,B",
                    help="search nothing: derive each seed from the searches of recipes A and B together")
    ap.add_argument("--from", dest="from_recipe", default=None, metavar="A",
                    help="search nothing: derive each seed from recipe A's search again (with --select, --stem-first)")
    ap.add_argument("--stem-first", action="store_true", help="derive --stem-first")
    ap.add_argument("--compare", action="store_true",
                    help="run nothing: table every recipe found under --out against the reference retrains")
    a = ap.parse_args()
    if a.compare:
        return compare_recipes(Path(a.out), a.results)
    pair = _pair_recipes(a)
    seeds = [int(s) for s in a.seeds.split(",")]
    missing = [str(r) for s in seeds for r in _pair_runs(Path(a.out), s, pair)
               if not (r / "final_alphas.json").is_file()]
    if missing:  # before any training: a pair derives from searches that must be there
        raise OsnasError(f"--{'from' if a.from_recipe else 'pair'} {','.join(pair)}: no finished search in "
                         f"{', '.join(missing)}; run those recipes first (--recipe NAME --search-set ...)")
    from osnas.config import build_config
    from osnas.data import data_root
    from osnas.data.synth import ensure_synth
    from osnas.derive import run_derive
    from osnas.models.genotype import load_genotype
    from osnas.search import run_search

    t0 = time.time()
    out = Path(a.out)
    cfg = build_config(a.config)
    root = data_root(a.data_root or cfg.data.root)
    ensure_synth(root, cfg.data.sources + cfg.data.targets)
    sources = ",".join(cfg.data.sources)
    targets = ",".join(cfg.data.targets)
    gap = domain_gap(a.config, root, out, seeds[0])

    per_seed, genotypes = {}, {}
    tag = "" if a.recipe == "lodo" else f"-{a.recipe}"
    for seed in seeds:
        sdir = out / f"seed{seed}"
        search = sdir / f"search{tag}"
        gpath = search / "genotype.yaml"
        if pair:  # no search of its own: the other recipes' searches of this seed (two: derived together)
            if not gpath.is_file():
                search.mkdir(parents=True, exist_ok=True)
                runs = [str(r) for r in _pair_runs(out, seed, pair)]
                run_derive(runs if len(runs) > 1 else runs[0], out=str(gpath), select=a.select,
                           stem_first=a.stem_first)
        elif not (search / "final_alphas.json").is_file():
            resume = (search / "checkpoint.pth").is_file()
            run_search(data_root=str(root), config_file=a.config, out=str(search), resume=resume,
                       overrides=[] if resume else [f"run.seed={seed}", *a.search_set])
        if not gpath.is_file():
            run_derive(search, select=a.select, stem_first=a.stem_first)
        genotypes[seed] = load_genotype(gpath)
        ckpts = []
        for name in MODELS:
            gen = str(gpath) if name == "searched" else name
            rdir = sdir / f"retrain-{name}{tag if name == 'searched' else ''}"
            ckpts.append(_retrain(gen, name, a.config, root, rdir, sources, seed) / "checkpoint.pth")
        per_seed[seed] = _eval(ckpts, targets, root, sdir / f"eval{tag}", cfg)
        print(f"seed {seed} done after {(time.time() - t0) / 60:.1f} min", file=sys.stderr)
    write_results(a, cfg, gap, per_seed, genotypes, time.time() - t0)


def _pair_recipes(a) -> list:
    """--pair A,B as the two recipe names, or --from A as one, after checking the arguments agree
    ([] without either)."""
    src = getattr(a, "from_recipe", None)
    if src is not None:
        if a.pair is not None or src.strip() in ("", a.recipe, "lodo") or "," in src or a.search_set:
            raise OsnasError(f"--from {src!r} --recipe {a.recipe}: expected one other recipe's name (not lodo), "
                             "without --pair or --search-set (the search is that recipe's), e.g. --recipe "
                             "uniform-pooled-stem --from uniform-pooled --stem-first")
        return [src.strip()]
    if a.pair is None:
        return []
    pair = [r.strip() for r in a.pair.split(",") if r.strip()]
    if len(pair) != 2 or a.recipe in pair or "lodo" in pair + [a.recipe]:
        raise OsnasError(f"--pair {a.pair!r} --recipe {a.recipe}: expected two other recipes' names (not lodo), "
                         "e.g. --recipe pair-pooled --pair uniform-pooled,sampled-unseen-pooled")
    if a.search_set:
        raise OsnasError("--pair searches nothing: --search-set does not apply (set it on the paired recipes)")
    return pair


def _pair_runs(out: Path, seed: int, pair: list) -> list:
    """The search folders a --pair recipe derives seed `seed` from."""
    return [out / f"seed{seed}" / f"search-{r}" for r in pair]


def _ms(vals):
    m = statistics.mean(vals)
    s = statistics.stdev(vals) if len(vals) > 1 else 0.0
    return f"{100 * m:.1f} ± {100 * s:.1f}"


def write_results(a, cfg, gap, per_seed, genotypes, seconds):
    targets = cfg.data.targets
    lines = ["# Synthetic test-bed results", "",
             "Produced by one command (CPU, 2 cores):", "",
             "    " + " ".join(["python", "experiments/synthetic/run_testbed.py", *sys.argv[1:]]), "",
             f"with `{Path(a.config).name}` ({cfg.model.arch}, {cfg.data.height}x{cfg.data.width}, search "
             f"{cfg.search.epochs}x{cfg.search.steps_per_epoch} steps {cfg.search.order}-order {cfg.search.objective}"
             + (f", recipe {a.recipe}: {' '.join(a.search_set)}" if a.search_set else "")
             + (f", derive --select {a.select}" if a.select else "")
             + (" --stem-first" if getattr(a, "stem_first", False) else "") + ", "
             f"retrain {cfg.train.epochs}x{cfg.train.steps_per_epoch} steps of {cfg.data.batch_size} images). "
             f"Wall time {seconds / 60:.0f} min. Sources {', '.join(cfg.data.sources)}; held-out target "
             f"{', '.join(targets)}. Values are percentages.", "",
             "## 1. Domain gap (OSNet trained on synth0 only)", "",
             "| evaluated on | rank-1 | mAP |", "|---|---:|---:|"]
    for t, r in gap.items():
        lines.append(f"| {t}{' (same domain)' if t == 'synth0' else ' (other domain)'} | {100 * r['rank1']:.1f} | "
                     f"{100 * r['mAP']:.1f} |")
    lines += ["", f"## 2. Cross-domain: {'+'.join(cfg.data.sources)} → {'+'.join(targets)}, mean ± std over "
              f"{len(per_seed)} seeds ({', '.join(map(str, per_seed))})", "",
              "| model | " + " | ".join(f"{t} rank-1 | {t} mAP" for t in targets) + " |",
              "|---|" + "---:|" * (2 * len(targets))]
    for name in MODELS:
        cells = []
        for t in targets:
            r1 = [m["models"][name]["targets"][t]["rank1"] for m in per_seed.values()]
            mp = [m["models"][name]["targets"][t]["mAP"] for m in per_seed.values()]
            cells += [_ms(r1), _ms(mp)]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    lines += ["", "Per seed (rank-1 / mAP):", "", "| seed | " + " | ".join(MODELS) + " |",
              "|---|" + "---|" * len(MODELS)]
    for seed, m in per_seed.items():
        t = targets[0]
        lines.append(f"| {seed} | " + " | ".join(
            f"{100 * m['models'][n]['targets'][t]['rank1']:.1f} / {100 * m['models'][n]['targets'][t]['mAP']:.1f}"
            for n in MODELS) + " |")
    lines += ["", "## 3. What the search picks", "", "| seed | " + " | ".join(
        next(iter(genotypes.values())).positions) + " | IN at |", "|---|" + "---|" * (len(
            next(iter(genotypes.values())).positions) + 1)]
    for seed, g in genotypes.items():
        lines.append(f"| {seed} | " + " | ".join(
            f"{v['choice']} ({v['probs'][v['choice']]:.2f})" for v in g.positions.values())
            + f" | {', '.join(g.in_sites())} |")
    keys = [tuple(sorted(g.plan.items())) for g in genotypes.values()]
    common, n_same = Counter(keys).most_common(1)[0]
    pos_names = list(next(iter(genotypes.values())).positions)
    agree = []
    for p in pos_names:
        c = Counter(g.positions[p]["choice"] for g in genotypes.values())
        agree.append(f"{p} {c.most_common(1)[0][1]}/{len(genotypes)}")
    lines += ["", f"The most frequent genotype was found by {n_same} of {len(genotypes)} seeds "
              f"({len(set(keys))} distinct genotypes). Per-position agreement with the modal choice: "
              f"{', '.join(agree)}.", ""]
    Path(a.results).write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


def compare_recipes(out: Path, results: str) -> None:
    """Every recipe under `out` (seedN/eval[-NAME]/metrics.json) on the seeds it ran: held-out mAP
    of its searched genotype, paired against OSNet-AIN and OSNet retrained with the same seed,
    and the IN sites each seed chose."""
    seeds = sorted(int(d.name[4:]) for d in out.glob("seed*") if d.name[4:].isdigit())
    evals = sorted({e.name for s in seeds for e in (out / f"seed{s}").glob("eval*") if (e / "metrics.json").is_file()})
    if not evals:
        raise SystemExit(f"{out}: no seedN/eval*/metrics.json to compare")
    table = ["| recipe | seeds | searched | minus OSNet-AIN | minus OSNet | OSNet-AIN | OSNet | IN sites per seed |",
             "|---|---|---:|---:|---:|---:|---:|---|"]
    per_seed = ["| recipe | seed | searched | OSNet-AIN | OSNet | IN at |", "|---|---:|---:|---:|---:|---|"]
    recipes = ["| recipe | space | weight step | alphas judged on | search steps | optimiser, lr | derive |",
               "|---|---|---|---|---:|---|---|"]
    for e in evals:
        name, m, sites = e[5:] or "lodo", [], []
        ran = [s for s in seeds if (out / f"seed{s}" / e / "metrics.json").is_file()]
        for i, s in enumerate(ran):
            search = out / f"seed{s}" / e.replace("eval", "search")
            genotype = load_yaml(search / "genotype.yaml")
            derive = genotype.get("select", "?") + (
                " --stem-first" if "stem_first" in ((genotype.get("positions") or {}).get("stem") or {}) else "")
            if i == 0 and not (search / "config.yaml").is_file():  # --pair or --from: other recipes' searches
                paired = [Path(r).name.replace("search-", "", 1) for r in genotype.get("runs") or []]
                how = "derived together" if len(paired) > 1 else "derived again"
                recipes.append(f"| {name} | the searches of {' and '.join(paired)}, {how} | | | | | {derive} |")
            elif i == 0:  # the recipe, as its first seed's search ran it
                c = load_yaml(search / "config.yaml")["search"]
                recipes.append(f"| {name} | {c['space']} | {c['weight_step']} | {c['objective']} | "
                               f"{c['epochs'] * c['steps_per_epoch']} | {c['optimizer']}, {c['lr']:g} | {derive} |")
            models = json.loads((out / f"seed{s}" / e / "metrics.json").read_text())["models"]
            m.append({k.split("-")[0]: statistics.mean(t["mAP"] for t in v["targets"].values())
                      for k, v in models.items()})
            sites.append([k for k, v in (genotype.get("plan") or {}).items() if v == "in"])
            per_seed.append(f"| {name} | {s} | {100 * m[-1]['searched']:.1f} | {100 * m[-1]['osnet_ain']:.1f} | "
                            f"{100 * m[-1]['osnet']:.1f} | {', '.join(sites[-1]) or 'nowhere'} |")
        diff = lambda ref: [x["searched"] - x[ref] for x in m]  # noqa: E731
        table.append(f"| {name} | {len(m)} | {_ms([x['searched'] for x in m])} | {_ms(diff('osnet_ain'))} | "
                     f"{_ms(diff('osnet'))} | {_ms([x['osnet_ain'] for x in m])} | {_ms([x['osnet'] for x in m])} | "
                     f"{', '.join(str(len(x)) for x in sites)} |")
    lines = ["# Search recipes on the synth test-bed", "", "Produced by:", "",
             "    " + " ".join(["python", "experiments/synthetic/run_testbed.py", *sys.argv[1:]]), "",
             "Held-out mAP (%) on the target, mean ± std over the seeds each recipe ran; the differences are "
             "paired: the searched genotype minus OSNet-AIN (and OSNet) retrained with the same seed.", "",
             *table, "", "The recipes (from each search's config.yaml):", "", *recipes, "", "Per seed:", "", *per_seed]
    Path(results).write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    try:
        main()
    except OsnasError as e:  # bad input: one line, exit 2, as the osnas commands do
        print(f"run_testbed: {e}", file=sys.stderr)
        sys.exit(2)
