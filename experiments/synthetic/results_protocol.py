"""RESULTS.md and figures from the protocol's results.json files (run_protocol.py calls this;
it can also be run alone: python experiments/synthetic/results_protocol.py OUT [--results FILE])."""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

METHOD_TEXT = {
    "argmax": "(a) argmax of the alphas (bilevel, leave-one-domain-out)",
    "perturb": "(b) perturbation-based selection on the same runs (DARTS-PT)",
    "consensus": "(d) consensus of the same runs (mean probabilities over seeds)",
    "anneal": "(c) annealed search: entropy penalty, alpha step every 2 weight steps, alpha lr 0.1",
    "unseen": "(e) alphas judged on a source never trained on (triplet loss)",
}


def pct(v: float) -> str:
    return f"{100 * v:.1f}"


def _ms(vals) -> str:
    vals = list(vals)
    s = statistics.stdev(vals) if len(vals) > 1 else 0.0
    return f"{100 * statistics.mean(vals):.1f} ± {100 * s:.1f}"


def figure(name: str, s: dict, path: Path) -> Path:
    """Held-out mAP of every yardstick architecture (sorted), the searched genotypes marked."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    yard = s["yardstick"]
    order = sorted(yard, key=lambda k: yard[k]["mAP"])
    fig, (ax, bx) = plt.subplots(1, 2, figsize=(13, 4.4), gridspec_kw={"width_ratios": [3, 2]})
    colors = ["#c44e52" if k in ("osnet", "osnet_ibn", "osnet_ain") else "#8c8c8c" for k in order]
    ax.bar(range(len(order)), [100 * yard[k]["mAP"] for k in order], color=colors)
    methods = list(s["methods"])
    x0 = len(order) + 1  # one column per method, right of the sorted yardstick: a marker per seed
    marks = {"argmax": "o", "perturb": "s", "consensus": "*", "anneal": "^", "unseen": "D"}
    for i, m in enumerate(methods):
        ys = [100 * row["mAP"] for row in s["methods"][m]["per_seed"]]
        ax.plot([x0 + i] * len(ys), ys, ls="none", marker=marks.get(m, "o"), color=f"C{i}", ms=8, alpha=0.8)
    ax.set_xticks(list(range(len(order))) + [x0 + i for i in range(len(methods))],
                  [k if not k.startswith("random") else "" for k in order] + methods, rotation=60, fontsize=7)
    noise = s["noise"]["mAP_std"]
    ax.axhspan(100 * (yard["osnet_ain"]["mAP"] - 2 * noise), 100 * (yard["osnet_ain"]["mAP"] + 2 * noise),
               color="#c44e52", alpha=0.12, label="OSNet-AIN ± 2 noise std")
    ax.set_ylabel("held-out mAP (%)")
    ax.set_title(f"{name}: random architectures (grey, sorted), published (red), searched (one marker per seed)")
    ax.legend(fontsize=7, loc="upper left")
    agree = [100 * s["methods"][m]["mean_position_agreement"] for m in methods]
    bx.bar(methods, agree, color=[f"C{i}" for i in range(len(methods))])
    bx.axhline(90, color="k", ls="--", lw=0.8)
    bx.set_ylim(0, 105)
    bx.set_ylabel("per-position agreement over seeds (%)")
    bx.set_title("seed agreement per method")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def write_results(summaries: dict, results: Path, out: Path, argv, seconds: float, quick: bool = False) -> Path:
    lines = ["# Synthetic test-bed: is the search's answer trustworthy?", "",
             "Produced by one command (CPU, 2 cores, two jobs at a time):", "",
             "    python experiments/synthetic/run_protocol.py " + " ".join(argv), "",
             f"Wall time {seconds / 60:.0f} min." + (" **Quick form: sizes too small to conclude anything.**"
                                                     if quick else ""),
             "Held-out mAP is the mean over the held-out target domains; values in %.", ""]
    for name, s in summaries.items():
        c = s["config"]
        lines += [f"## Configuration `{name}`: {', '.join(c['sources'])} → {', '.join(c['targets'])}", "",
                  f"Space `{c['space']}`, {c['arch']}, search {c['search_steps']} steps, retrain "
                  f"{c['retrain_steps']} steps.", ""]
        n = s["noise"]
        lines += ["### Noise floor", "",
                  f"OSNet-AIN retrained with {len(n['mAP'])} seeds: held-out mAP {_ms(n['mAP'])}, rank-1 "
                  f"{_ms(n['rank1'])}. **Noise floor (std of the held-out mAP): {pct(n['mAP_std'])} points.**", ""]
        targets = list(n["targets"][0])
        lines += ["| target | mAP over seeds |", "|---|---:|"]
        lines += [f"| {t} | {_ms(r[t]['mAP'] for r in n['targets'])} |" for t in targets]
        yard = s["yardstick"]
        rand = [v["mAP"] for k, v in yard.items() if k.startswith("random")]
        lines += ["", "### Yardstick: random architectures and the published ones", "",
                  f"{len(rand)} architectures drawn uniformly from `{c['space']}`: held-out mAP {_ms(rand)} "
                  f"(min {pct(min(rand))}, median {pct(statistics.median(rand))}, max {pct(max(rand))}).", "",
                  "| model | held-out mAP | rank-1 | " + " | ".join(f"{t} mAP" for t in targets) + " |",
                  "|---|---:|---:|" + "---:|" * len(targets)]
        for k in ("osnet", "osnet_ibn", "osnet_ain"):
            v = yard[k]
            lines.append(f"| {k} | {pct(v['mAP'])} | {pct(v['rank1'])} | "
                         + " | ".join(pct(v["targets"][t]["mAP"]) for t in targets) + " |")
        lines += ["", "### Search methods", "",
                  "| method | same genotype | per-position agreement | held-out mAP (mean ± std over seeds) | "
                  "worst percentile | Kendall τ |", "|---|---:|---:|---:|---:|---:|"]
        taus = s["kendall_tau"]
        for m, r in s["methods"].items():
            tau = (f"{statistics.mean(taus):.2f} ± {statistics.stdev(taus) if len(taus) > 1 else 0:.2f}"
                   if m in ("argmax", "perturb", "consensus") and taus else "–")
            lines.append(f"| {METHOD_TEXT[m]} | {r['same_genotype']} | {100 * r['mean_position_agreement']:.0f}% | "
                         f"{pct(r['mAP_mean'])} ± {pct(r['mAP_std'])} | {r['min_percentile']:.0f} | {tau} |")
        lines += ["", "Per seed (held-out mAP, percentile among the yardstick, choices):", ""]
        for m, r in s["methods"].items():
            for row in r["per_seed"]:
                seed = row["seed"] if row["seed"] is not None else "all"
                ch = ", ".join(f"{k}={v}" for k, v in row["choices"].items())
                lines.append(f"- {m}, seed {seed}: {pct(row['mAP'])} ({row['percentile']:.0f}th) — {ch}")
        p = s["paired"]
        noise = n["mAP_std"]
        verdict = ("beats" if p["diff_mean"] > 2 * noise else
                   "does not beat" if p["diff_mean"] > -2 * noise else "is worse than")
        lines += ["", "### Paired test against OSNet-AIN", "",
                  f"The {p['default']} genotype retrained with the noise seeds, paired with OSNet-AIN on the "
                  f"same seeds: mAP difference {pct(p['diff_mean'])} ± {pct(p['diff_std'])} points; twice the "
                  f"noise floor is {pct(2 * noise)}. **It {verdict} OSNet-AIN by more than twice the noise floor.**"
                  if verdict != "does not beat" else
                  f"The {p['default']} genotype retrained with the noise seeds, paired with OSNet-AIN on the "
                  f"same seeds: mAP difference {pct(p['diff_mean'])} ± {pct(p['diff_std'])} points; twice the "
                  f"noise floor is {pct(2 * noise)}. **The difference is inside the noise: no win.**", ""]
        fig = figure(name, s, results.parent / f"protocol_{name}.png")
        lines += [f"![{name}]({fig.name})", ""]
    results.write_text("\n".join(lines) + "\n")
    print(f"wrote {results}", file=sys.stderr)
    return results


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out")
    ap.add_argument("--results", default=None)
    a = ap.parse_args()
    out = Path(a.out)
    summaries = {p.parent.name: json.loads(p.read_text()) for p in sorted(out.glob("*/results.json"))}
    write_results(summaries, Path(a.results or out / "RESULTS.md"), out, [f"--out {a.out}"], 0.0)


if __name__ == "__main__":
    main()
