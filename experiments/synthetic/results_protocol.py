"""RESULTS.md and figures of the protocol (run_protocol.py) from its summaries: one per
configuration, results_<configuration>.json, kept beside RESULTS.md with run.json (the command,
its wall time and commit) and bench_search_step.json (the step bench the targets quote), so a
study folder regenerates its RESULTS.md byte for byte without the run folders:

    python experiments/synthetic/results_protocol.py FOLDER [--results FILE]

FOLDER holds the run folders' */results.json (a protocol's --out) or the copies kept beside a
results file. Another results file in the same folder (--results RESULTS_X.md) keeps its own:
RESULTS_X.results_<configuration>.json, RESULTS_X.run.json and RESULTS_X.<figure>_<configuration>.png.
A committed study calls `regenerate` from its own results.py (experiments/synthetic/defaults/)."""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
from pathlib import Path

from recipes import RECIPES

HERE = Path(__file__).resolve().parent
RUN_INFO = "run.json"  # beside a results file: {"args", "minutes", "commit"} of the command that wrote it


def percentile(value: float, population: list) -> float:
    """Share of the population the value beats or ties (100 = at least as good as all)."""
    return 100.0 * sum(v <= value for v in population) / len(population)


def mean_map(entry: dict) -> float:
    """A yardstick architecture's held-out mAP: the mean over its retrain seeds (`mAP_seeds`,
    with --yardstick-seeds above 1), else its one retrain."""
    return statistics.mean(entry.get("mAP_seeds") or [entry["mAP"]])


def modal(plans: list) -> dict:
    """The most frequent of several dicts (plans or choices); ties: the earliest."""
    keys = [json.dumps(p, sort_keys=True) for p in plans]
    best = max(keys, key=lambda k: (keys.count(k), -keys.index(k)))
    return json.loads(best)


def pct(v: float) -> str:
    return f"{100 * v:.1f}"


def ordinal(v: float) -> str:
    """A percentile as English writes it: 1st, 2nd, 3rd, 11th, 83rd, 91st, 100th."""
    n = round(v)
    suffix = "th" if n % 100 in (11, 12, 13) else {1: "st", 2: "nd", 3: "rd"}.get(n % 10, "th")
    return f"{n}{suffix}"


def _ms(vals) -> str:
    vals = list(vals)
    s = statistics.stdev(vals) if len(vals) > 1 else 0.0
    return f"{100 * statistics.mean(vals):.1f} ± {100 * s:.1f}"


def prefix(results: Path) -> str:
    """What the files kept beside a results file start with: nothing for RESULTS.md, else its
    name and a dot (RESULTS_defaults.md: "RESULTS_defaults."), so two results files of the
    protocol can share a folder without overwriting each other's figures and summaries."""
    return "" if results.name == "RESULTS.md" else results.stem + "."


def figures(name: str, s: dict, folder: Path, start: str = "") -> list:
    """The comparison figures of one configuration (osnas.plot.comparison, the ones `osnas plot
    --run OUT/NAME` draws), written as <start><figure>_<name>.png beside RESULTS.md."""
    from osnas.plot import comparison as K
    from osnas.plot.common import save_figure

    title = f"{name}: random architectures (grey, sorted), published (red), searched (a marker per seed" + (
        f"; hollow: its mean over {s['yardstick_seeds']} retrains)" if s.get("yardstick_seeds", 1) > 1 else ")")
    figs = [("distribution", K.distribution(s, title)), ("agreement", K.agreement(s, f"{name}: seed agreement"))]
    if K.has_latency(s):
        figs.append(("pareto", K.pareto(s, f"{name}: held-out mAP against measured latency")))
    return [save_figure(f, folder / f"{start}{k}_{name}.png", "png") for k, f in figs]


def targets_section(s: dict, bench: Path | None = None) -> list:
    """The issue's targets, checked on the default method's numbers (the paired one); the best
    other method is named beside it, for reference, and does not make a target met."""
    d = s["paired"]["default"]
    m = s["methods"][d]
    rows = [(mm, r) for mm, r in s["methods"].items()]
    best_agree = max(rows, key=lambda x: x[1]["mean_position_agreement"])
    top_pct = max(_worst(r) for _, r in rows)
    best_pct = ", ".join(mm for mm, r in rows if _worst(r) == top_pct)  # every method at the top, ties included
    noise = s["noise"]["mAP_std"]
    diff = s["paired"]["diff_mean"]

    def yn(ok):
        return "met" if ok else "**not met**"

    same, seeds = (int(x) for x in m["same_genotype"].split("/")) if m["same_genotype"] != "–" else (0, 5)
    agreed = same >= 0.8 * seeds or m["mean_position_agreement"] >= 0.9  # "4 of 5" at any number of seeds
    population = [v["mAP"] for v in s["yardstick"].values()]
    ain_top = sum(percentile(v, population) >= 90 for v in s["noise"]["mAP"])
    n = s.get("yardstick_seeds", 1)
    if "min_percentile_resolved" in m:  # placed by means over n retrains: that decides
        worst = m["min_percentile_resolved"]
        top = (f"- genotype in the top 10% of the yardstick in every seed, each architecture the mean of {n} retrains: "
               f"{yn(worst >= 90)} (worst percentile {worst:.0f}; by one retrain each: {m['min_percentile']:.0f}; "
               "per method, on means: ")
    else:
        top = (f"- genotype in the top 10% of the yardstick in every seed: {yn(m['min_percentile'] >= 90)} "
               f"(worst percentile {m['min_percentile']:.0f}; per method: ")
    return ["### Targets", "", f"For the default method, `{d}`:", "",
            f"- same genotype in ≥ 4 of 5 seeds (80% of them), or per-position agreement ≥ 0.9: {yn(agreed)} "
            f"({m['same_genotype']} identical, {100 * m['mean_position_agreement']:.0f}% agreement; the most of any "
            f"method: {best_agree[0]}, {best_agree[1]['same_genotype']} and "
            f"{100 * best_agree[1]['mean_position_agreement']:.0f}%)",
            top + ", ".join(f"{mm} {_worst(r):.0f}" for mm, r in rows) + f"; the highest: {best_pct}). "
            f"For scale: OSNet-AIN retrained with the {len(s['noise']['mAP'])} noise seeds is in the top 10% in "
            f"{ain_top} of them (one retrain per architecture cannot place a genotype reliably)",
            f"- beats OSNet-AIN by more than twice the noise floor, paired: {yn(diff > 2 * noise)} "
            f"({pct(diff)} vs {pct(2 * noise)})",
            ("- the supernet ranks architectures as retraining does: Kendall τ "
             + ", ".join(f"{v} {statistics.mean(t):.2f}" for v, t in _taus(s).items()) + " (0 = no relation"
             + (f"; against the means of {n} retrains" if n > 1 else "") + ")")
            if _taus(s) else "",
            step_target_line(bench or BENCH), ""]


def _worst(r: dict) -> float:
    """A method's worst seed's percentile: on means when its genotypes were retrained with several seeds."""
    return r.get("min_percentile_resolved", r["min_percentile"])


def _means_text(s: dict) -> str:
    """The yardstick retrained with several seeds: the distribution of the means, the figures the
    methods' percentiles, the Kendall tau and the position effects are read on."""
    n = s.get("yardstick_seeds", 1)
    if n < 2:
        return "."
    rand = [mean_map(v) for k, v in s["yardstick"].items() if k.startswith("random")]
    spread = statistics.mean(statistics.stdev(v["mAP_seeds"]) for v in s["yardstick"].values())
    return (f", one retrain each (seed 1). Every yardstick architecture was retrained with {n} seeds: the means are "
            f"{_ms(rand)} (min {pct(min(rand))}, median {pct(statistics.median(rand))}, max {pct(max(rand))}), and one "
            f"architecture's retrains spread by {pct(spread)} points (mean std). Every derived genotype was retrained "
            f"with the same {n} seeds: the methods' percentiles (\"means\"), the Kendall τ and the position effects "
            "below are read on the means; the percentile by one retrain is shown beside them.")


def _taus(s: dict) -> dict:
    return s.get("kendall_tau_by_search") or ({"lodo": s["kendall_tau"]} if s.get("kendall_tau") else {})


def _no_in(position: str) -> str:
    """The candidate without IN at a position of the searched spaces: bn at the stem, plain in a block."""
    return "bn" if position == "stem" else "plain"


def yardstick_section(s: dict) -> list:
    """What the random architectures themselves resolve: the effect of IN at each position on the
    held-out mAP, all positions fitted together by least squares (mAP ~ 1 + one IN indicator per
    position) so a strong position does not leak into the others; and per method how many seeds
    chose the side the fit favours where the effect is beyond twice its standard error."""
    import numpy as np

    randoms = s["random_architectures"]
    maps = np.array([mean_map(s["yardstick"][f"random{i:02d}"]) for i in range(len(randoms))])
    positions = list(randoms[0])
    has_in = np.array([[a[p] != _no_in(p) for p in positions] for a in randoms], dtype=float)
    x = np.hstack([np.ones((len(randoms), 1)), has_in])  # (n, 1 + positions)
    n = s.get("yardstick_seeds", 1)
    lines = ["### What the yardstick resolves", "",
             "The effect of IN at each position on the held-out mAP of the random architectures"
             + (f" (each the mean of {n} retrains)" if n > 1 else "") + ", all positions "
             "fitted together (least squares: mAP ~ 1 + an IN indicator per position), ± its standard error. Only "
             "an effect beyond twice its error says which side a search should find; with 7 positions tested, "
             "about one in three configurations shows one such effect by chance.", ""]
    dof = len(randoms) - x.shape[1]
    if dof < 2 or np.linalg.matrix_rank(x) < x.shape[1]:
        return lines + [f"Too few random architectures ({len(randoms)}) to fit {len(positions)} positions.", ""]
    beta, *_ = np.linalg.lstsq(x, maps, rcond=None)
    resid = maps - x @ beta
    cov = float(resid @ resid) / dof * np.linalg.inv(x.T @ x)
    se = np.sqrt(np.diag(cov))
    lines += ["| position | architectures with IN there | effect of IN | resolved |", "|---|---:|---:|---|"]
    favoured = {}
    for i, p in enumerate(positions, 1):
        ok = abs(beta[i]) > 2 * se[i]
        if ok:
            favoured[p] = beta[i] > 0
        lines.append(f"| {p} | {int(has_in[:, i - 1].sum())} of {len(randoms)} | {pct(beta[i])} ± {pct(se[i])} | "
                     + (("**IN**" if beta[i] > 0 else "**no IN**") if ok else "no") + " |")
    if favoured:
        lines += ["", "Seeds choosing the favoured side at the resolved positions ("
                  + ", ".join(f"{p}: {'IN' if v else 'no IN'}" for p, v in favoured.items()) + "):", ""]
        for m, r in s["methods"].items():
            cells = []
            for p, want in favoured.items():
                hits = sum((row["choices"][p] != _no_in(p)) == want for row in r["per_seed"])
                cells.append(f"{p} {hits}/{len(r['per_seed'])}")
            lines.append(f"- {m}: " + ", ".join(cells))
    return lines + [""]


def lean_section(s: dict) -> list:
    """Where each search's alphas ended: per position, the mean over seeds of the probability of
    the op without IN (bn at the stem, plain in a block) against its uniform value. A value well
    below uniform in every search is a bias of the alpha objectives, whatever the data say."""
    fp = s.get("final_probs")
    if not fp:
        return []
    positions = list(next(iter(fp.values()))[0])
    uniform = {p: 1 / len(next(iter(fp.values()))[0][p]) for p in positions}
    lines = ["### Where the alphas end", "",
             "Per search and position, the final probability of the op without IN (bn at the stem, plain in a block), "
             "mean over seeds (min–max). Uniform: " + ", ".join(f"{p} {uniform[p]:.2f}" for p in positions[:2])
             + ", ... Far below uniform in every search means the alpha objectives lean towards IN there.", "",
             "| search | " + " | ".join(positions) + " |", "|---|" + "---:|" * len(positions)]
    for v, rows in fp.items():
        if all(len(set(pr.values())) == 1 for r in rows for pr in r.values()):  # alphas never moved (uniform)
            continue
        cells = []
        for p in positions:
            vals = [r[p][_no_in(p)] for r in rows]
            cells.append(f"{statistics.mean(vals):.2f} ({min(vals):.2f}–{max(vals):.2f})")
        lines.append(f"| {v} | " + " | ".join(cells) + " |")
    return lines + [""]


def _paired_genotype(s: dict) -> str:
    """Which genotype the paired test retrained: the default method's most frequent one (ties:
    the earliest seed's, as `modal` picks it), with its choices."""
    rows = s["methods"][s["paired"]["default"]]["per_seed"]
    top = modal([r["choices"] for r in rows])
    first = next(r for r in rows if r["choices"] == top)
    n = sum(r["choices"] == top for r in rows)
    how = ("its only genotype" if len(rows) == 1 else f"found by {n} of {len(rows)} seeds" if n > 1 else
           f"every seed found another; seed {first['seed']}'s, the first")
    return how + ": " + ", ".join(f"{k}={v}" for k, v in first["choices"].items())


def projection_section(s: dict) -> list:
    """Each search seed's supernet asked directly about the stem: is the disagreement between
    seeds noise in the alpha batches, or do the supernets themselves see different things?"""
    proj = {v: rows for v, rows in (s.get("stem_projection") or {}).items() if rows and all(rows)}
    if not proj:
        return []
    lines = ["### Why seeds disagree: each supernet's own verdict on the stem", "",
             "Per search seed, the supernet's held-out loss (its alpha loss on its alpha batches) with the stem "
             "projected onto BN minus onto IN, the other positions at their probabilities: > 0 means that seed's "
             "supernet prefers IN. ± the standard error over the alpha batches.", "",
             "| search | " + " | ".join(f"seed {i}" for i in range(1, 1 + max(len(r) for r in proj.values())))
             + " | seeds preferring IN beyond 2 errors |",
             "|---|" + "---:|" * max(len(r) for r in proj.values()) + "---:|"]
    for v, rows in proj.items():
        cells = [f"{r['diff']:+.3f} ± {r['se']:.3f} (p(in) {r['p_in']:.2f})" for r in rows]
        sure_in = sum(r["diff"] > 2 * r["se"] for r in rows)
        sure_bn = sum(r["diff"] < -2 * r["se"] for r in rows)
        lines.append(f"| {v} | " + " | ".join(cells) + f" | {sure_in} (BN beyond 2 errors: {sure_bn}) |")
    return lines + [""]


BENCH = HERE.parent / "benchmarks" / "bench_search_step.json"
STEP_KEYS = {  # the bench's whole-step rows the targets quote, and how they read
    "weight step: supernet (sampled path)": "uniform path, no alpha step (uniform, uniform-pooled, vote3, "
                                            "vote3-stem: three such searches per answer; the pairs' first half)",
    "search step: sampled path, first-order, alpha_every=2": "sampled path, alpha step every 2 (the sampled methods; "
                                                             "pair-pooled's second half)",
    "search step: first-order, alpha_every=1": "mixed weight step, alpha step every step (lodo)",
    "search step: sampled path, first-order, alpha_every=3": "sampled path, alpha step every 3 (pair3-pooled's second "
                                                             "half)",
}
STEP_LIMIT = 1.5


def step_target_line(bench: Path = BENCH) -> str:
    """The step target read off the last run of experiments/benchmarks/bench_search_step.py: each
    quoted row's median ratio to a plain step ± twice its standard error; met when the whole band
    is at or under the limit, not met when it is all above, at the limit otherwise ("" without a run)."""
    if not bench.is_file():
        return ""
    b = json.loads(bench.read_text())
    if "ratio_median" not in b:  # a run from before the bench took rounds
        return ""
    cells = []
    for k, label in STEP_KEYS.items():
        if k not in b["ratio_median"]:
            continue
        v, e = b["ratio_median"][k], b["ratio_2se"][k]
        verdict = ("met" if v + e <= STEP_LIMIT else "**not met**" if v - e > STEP_LIMIT
                   else "at the limit, inside the timing noise")
        cells.append(f"{label} {v:.2f} ± {e:.2f}x ({verdict})")
    c = b["config"]
    return (f"- a whole search step at most {STEP_LIMIT:g}x a plain OSNet step (space {c.get('space', '?')}, "
            f"{c['arch']}, batch {c['batch']}, {c['height']}x{c['width']}; median over {c['rounds']} rounds ± 2 "
            "standard errors): " + "; ".join(cells) + f" ({bench.name})")


def _minutes(s: dict, method: str) -> str:
    """A method's search wall time per answer (the sum over the searches it reads), and its derive's
    where the derive scores the supernet."""
    r = RECIPES.get(method)
    if r is None:
        return "–"
    minutes = s.get("search_minutes", {})
    k = r.runs_per_answer  # vote3: an answer reads three searches of its variant
    per_search = [[sum(ms[i:i + k]) for i in range(0, len(ms) - k + 1, k)]
                  for ms in (minutes.get(v, []) for v in r.searches)]
    mins = [sum(t) for t in zip(*per_search) if all(x == x for x in t)]  # per answer, over the method's searches
    if not mins:
        return "–"
    per = f"{statistics.mean(mins):.1f} per seed"
    derive = [row.get("derive_seconds") for row in s["methods"].get(method, {}).get("per_seed", [])]
    derive = [v for v in derive if v is not None]
    if r.select != "argmax" and r.select != "consensus":  # perturb and retrieval score the supernet
        per += f" + {statistics.mean(derive) / 60:.1f} derive" if derive else " + derive"
    return per


def cost_section(s: dict) -> list:
    """Measured latency of the published, searched and budget-searched genotypes; the Pareto
    front; whether a genotype matches OSNet-AIN within the noise floor at lower latency."""
    from osnas.plot.comparison import pareto_front

    lat = s.get("latency")
    if not lat:
        return []
    yard, noise = s["yardstick"], s["noise"]["mAP_std"]
    lines = ["### Deployment cost", "",
             f"Latency measured on the deployment path ({lat['backend']} on the CPU, fp32, BN folded, "
             f"{lat['threads']} thread, {lat.get('clock', 'wall')} clock, batch {lat['batch']}, the test-bed's width "
             f"at input {lat.get('height', '?')}x{lat.get('width', '?')}), every network timed in the same rounds as "
             f"the all-BN network ({lat['all_bn_ms']:.3f} ms, IQR {lat['all_bn_iqr_ms']:.3f}); relative latency = "
             "the median over rounds of the ratio to the all-BN network in that round.", "",
             "| architecture | held-out mAP | latency (ms) | relative to all-BN |", "|---|---:|---:|---:|"]
    rows = [(k, yard[k]["mAP"], yard[k]["latency_ms"], yard[k]["relative_latency"]) for k in
            ("osnet", "osnet_ibn", "osnet_ain") if k in yard]
    for m, r in list(s["methods"].items()) + list(s.get("budgets", {}).items()):
        for row in r["per_seed"]:
            if "latency_ms" in row:
                rows.append((f"{m} seed {row['seed']}", row["mAP"], row["latency_ms"], row["relative_latency"]))
    lines += [f"| {k} | {pct(m)} | {ms:.3f} | {rel:.3f} |" for k, m, ms, rel in rows]
    rnd = [(k, v["mAP"], v["relative_latency"]) for k, v in yard.items()
           if k.startswith("random") and "relative_latency" in v]
    pts = [(rel, m) for _, m, _, rel in rows] + [(rel, m) for _, m, rel in rnd]
    names = [k for k, *_ in rows] + [k for k, *_ in rnd]
    front = pareto_front(pts)
    lines += ["", "Pareto front (lowest relative latency first): " + ", ".join(
        f"{names[i]} ({pct(pts[i][1])} mAP, {pts[i][0]:.3f})" for i in front) + ".", ""]
    # the timing noise floor: plain OSNet and the all-BN reference are the same network, timed apart;
    # at least twice the standard error of a median ratio
    from osnas.models.latency import median_se

    n = lat.get("repeats", 100)
    se = median_se(lat.get("osnet_relative_iqr", 0.0), n)
    lat_noise = max(abs(lat.get("osnet_relative", 1.0) - 1.0), 2 * se)
    if s.get("budgets"):
        lines += ["Cost-aware searches: each derived genotype's predicted cost (the profiled cost table) and "
                  "measured cost, both relative to the all-BN network; within budget = measured ≤ budget + "
                  f"the timing noise ({lat_noise:.3f}).", "",
                  "| search | budget | predicted | measured | within budget |", "|---|---:|---:|---:|---|"]
        for m, r in s["budgets"].items():
            for row in r["per_seed"]:
                pred, meas = row["cost"].get("relative"), row["relative_latency"]
                ok = meas <= r["budget"] + lat_noise
                lines.append(f"| {m} seed {row['seed']} | {r['budget']:g} | "
                             f"{pred if pred is None else format(pred, '.3f')} | {meas:.3f} | "
                             f"{'yes' if ok else '**no**'} |")
        lines.append("")
        for m, r in s["budgets"].items():
            if "paired" in r:
                pr = r["paired"]
                lines.append(f"- {m} retrained with the {len(pr['diffs'])} noise seeds, paired with OSNet-AIN: "
                             f"held-out mAP difference {pct(pr['diff_mean'])} ± {pct(pr['diff_std'])} points "
                             f"(twice the noise floor: {pct(2 * noise)}).")
        lines.append("")
    if "osnet_ain" in yard:
        ain_m, ain_rel = yard["osnet_ain"]["mAP"], yard["osnet_ain"]["relative_latency"]
        match = [(names[i], pts[i]) for i in range(len(pts)) if names[i] != "osnet_ain"
                 and pts[i][1] >= ain_m - noise and pts[i][0] < ain_rel - lat_noise]
        lines.append(f"Timing noise floor: plain OSNet, the same network as the all-BN reference, measured "
                     f"{lat.get('osnet_relative', float('nan')):.3f} of it (IQR of the per-round ratios "
                     f"{lat.get('osnet_relative_iqr', float('nan')):.3f} over {n} rounds: twice the standard error of "
                     f"the median is {2 * se:.3f}); a latency difference smaller than {lat_noise:.3f} is not counted. "
                     f"OSNet-AIN measured {ain_rel:.3f}.")
        lines.append("")
        budgeted = [(k, v) for k, v in match if "@" in k]
        others = [k for k, _ in match if "@" not in k]
        lines.append(("**Within the noise floor of OSNet-AIN's held-out mAP (≥ "
                      f"{pct(ain_m - noise)}) and faster than it by more than the timing noise:** "
                      + (", ".join(f"{k} ({pct(m)} mAP, {rel:.3f})" for k, (rel, m) in budgeted) or "no cost-aware "
                         "search's genotype")
                      + f"; besides, {len(others)} other architectures (" + ", ".join(others) + ")")
                     if match else
                     f"**No architecture matches OSNet-AIN's held-out mAP ({pct(ain_m)}) within the noise floor "
                     f"({pct(noise)}) at a measured latency lower by more than the timing noise.**")
        lines.append("")
    return lines


def export_section(s: dict) -> list:
    """osnas export --check of every derived genotype's retrained checkpoint."""
    checks = s.get("export_check")
    if not checks:
        return []
    lines = ["### Deployability (`osnas export --check` on the retrained checkpoints)", "",
             "ONNX (dynamic batch) in ONNX Runtime against PyTorch fp32 at batches 1, 3 and 8; the embedding drift "
             "when one IN site at a time runs in bf16 / fp16 (worst site); rank-1 on the first target with fp32, "
             "bf16 (autocast) and ONNX Runtime embeddings.", "",
             "| genotype | IN sites | passes (max rel. error) | worst IN site drift bf16 / fp16 "
             "| rank-1 fp32 → bf16 → ONNX |",
             "|---|---:|---|---:|---:|"]
    for k, c in checks.items():
        r1 = (f"{pct(c['rank1_fp32'])} → {pct(c['rank1_bf16'])} → {pct(c['rank1_onnx'])}"
              if c.get("rank1_fp32") is not None else "–")
        lines.append(f"| {k} | {c['in_sites']} | {'yes' if c['pass'] else '**NO**'} ({c['max_rel_err']:.1e}) | "
                     f"{c['worst_site_drift']['bf16']:.1e} / {c['worst_site_drift']['fp16']:.1e} | {r1} |")
    n_fail = sum(not c["pass"] for c in checks.values())
    lines += ["", f"**{len(checks) - n_fail} of {len(checks)} genotypes pass the export check.**", ""]
    return lines


REPRODUCE = ("Every figure here is bit-exact only on the machine and library set that produced it (each run "
             "folder's run.json names them): on another, float-level differences grow through training. The "
             "protocol's committed runs are indexed in experiments/README.md; experiments/synthetic/FINDINGS.md "
             "sets them side by side.")


def header_lines(info: dict, quick: bool = False) -> list:
    """The command that wrote the results (`info`: run.json's args, minutes, commit), and what is read how."""
    commit = info.get("commit") or ""
    minutes = info.get("minutes")
    at = (f"; osnas at {commit[:-len('-dirty')]} with uncommitted changes" if commit.endswith("-dirty") else
          f"; osnas at commit {commit}: `git checkout {commit}` runs it as it ran" if commit else "")
    return ["# Synthetic test-bed: is the search's answer trustworthy?", "",
            "Produced by one command (CPU, 2 cores, two jobs at a time" + at + "):", "",
            "    python experiments/synthetic/run_protocol.py " + info.get("args", ""), "",
            (f"Wall time of this invocation {minutes:.0f} min (every job whose result was already in the "
             "run folder was read, not run again; each search's own time is in the methods' table)."
             if minutes else
             "Regenerated from the protocol's results.json files (results_protocol.py); the run's wall time is "
             "in its log.") + (" **Quick form: sizes too small to conclude anything.**" if quick else ""),
            "Held-out mAP is the mean over the held-out target domains; values in %.", "",
            REPRODUCE, "",
            "A third family, the demo's synth domains (IN helps most there), runs search recipes of the same "
            "registry (experiments/synthetic/recipes.py) against OSNet-AIN with experiments/synthetic/run_testbed.py "
            "(the studies experiments/synthetic/synth_recipes/ and synth_stem_first/).", ""]


def noise_and_yardstick_lines(s: dict) -> list:
    c, n, yard = s["config"], s["noise"], s["yardstick"]
    targets = list(n["targets"][0])
    lines = ["### Noise floor", "",
             f"OSNet-AIN retrained with {len(n['mAP'])} seeds: held-out mAP {_ms(n['mAP'])}, rank-1 "
             f"{_ms(n['rank1'])}. **Noise floor (std of the held-out mAP): {pct(n['mAP_std'])} points.**", "",
             "| target | mAP over seeds |", "|---|---:|"]
    lines += [f"| {t} | {_ms(r[t]['mAP'] for r in n['targets'])} |" for t in targets]
    rand = [v["mAP"] for k, v in yard.items() if k.startswith("random")]
    lines += ["", "### Yardstick: random architectures and the published ones", "",
              f"{len(rand)} architectures drawn uniformly from `{c['space']}`: held-out mAP {_ms(rand)} "
              f"(min {pct(min(rand))}, median {pct(statistics.median(rand))}, max {pct(max(rand))})"
              + _means_text(s), "",
              "| model | held-out mAP | rank-1 | " + " | ".join(f"{t} mAP" for t in targets) + " |",
              "|---|---:|---:|" + "---:|" * len(targets)]
    for k in ("osnet", "osnet_ibn", "osnet_ain"):
        v = yard[k]
        lines.append(f"| {k} | {pct(v['mAP'])} | {pct(v['rank1'])} | "
                     + " | ".join(pct(v["targets"][t]["mAP"]) for t in targets) + " |")
    return lines + [""] + yardstick_table(s)


def _tau_key(method: str) -> str:
    """Which Kendall tau list a method's row reads: its own where it scores subnets (retrieval), else
    its search variant's alpha loss."""
    r = RECIPES.get(method)
    return "" if r is None else method if r.scores_subnets else r.searches[0]


def methods_lines(s: dict) -> list:
    lines = ["", "### Search methods", "",
             "| method | same genotype | per-position agreement | held-out mAP (mean ± std over seeds) | "
             "worst percentile | Kendall τ | search wall time (min, 1 thread) |",
             "|---|---:|---:|---:|---:|---:|---:|"]
    by_search = _taus(s)
    for m, r in s["methods"].items():
        taus = by_search.get(_tau_key(m), [])
        tau = f"{statistics.mean(taus):.2f} ± {statistics.stdev(taus) if len(taus) > 1 else 0:.2f}" if taus else "–"
        lines.append(f"| {RECIPES[m].text} | {r['same_genotype']} | {100 * r['mean_position_agreement']:.0f}% | "
                     f"{pct(r['mAP_mean'])} ± {pct(r['mAP_std'])} | {r['min_percentile']:.0f}"
                     + (f" (means: {r['min_percentile_resolved']:.0f})" if "min_percentile_resolved" in r else "")
                     + f" | {tau} | {_minutes(s, m)} |")
    lines += ["", "Per seed (held-out mAP, percentile among the yardstick, choices):", ""]
    for m, r in s["methods"].items():
        for row in r["per_seed"]:
            seed = row["seed"] if row["seed"] is not None else "all"
            ch = ", ".join(f"{k}={v}" for k, v in row["choices"].items())
            means = (f"; mean of {len(row['mAP_seeds'])} retrains {_ms(row['mAP_seeds'])}, "
                     f"{ordinal(row['percentile_resolved'])} among the yardstick's means"
                     if "mAP_seeds" in row else "")
            lines.append(f"- {m}, seed {seed}: {pct(row['mAP'])} ({ordinal(row['percentile'])}){means} — {ch}")
    return lines


def paired_lines(s: dict) -> list:
    """The default method's modal genotype against OSNet-AIN (and plain OSNet) over the noise seeds."""
    p, noise = s["paired"], s["noise"]["mAP_std"]
    verdict = ("beats" if p["diff_mean"] > 2 * noise else
               "does not beat" if p["diff_mean"] > -2 * noise else "is worse than")
    head = (f"The {p['default']} genotype ({_paired_genotype(s)}) retrained with the noise seeds, paired with "
            f"OSNet-AIN on the same seeds: mAP difference {pct(p['diff_mean'])} ± {pct(p['diff_std'])} points; "
            f"twice the noise floor is {pct(2 * noise)}.")
    lines = ["", "### Paired test against OSNet-AIN", "",
             head + (f" **It {verdict} OSNet-AIN by more than twice the noise floor.**"
                     if verdict != "does not beat" else " **The difference is inside the noise: no win.**"), ""]
    po = s.get("paired_osnet")
    if po:  # the same genotype against the answer "no IN at all"
        lines += ["| seed | " + p["default"] + " | OSNet-AIN | difference | OSNet (no IN) | difference |",
                  "|---|---:|---:|---:|---:|---:|"]
        lines += [f"| {i} | {pct(x)} | {pct(y)} | {pct(x - y)} | {pct(z)} | {pct(x - z)} |"
                  for i, ((x, y), (_, z)) in enumerate(zip(p["pairs"], po["pairs"]), 1)]
        lines += ["", f"Against plain OSNet (no IN anywhere) on the same seeds: {pct(po['diff_mean'])} ± "
                  f"{pct(po['diff_std'])} points; OSNet over these seeds: {_ms(z for _, z in po['pairs'])}."]
    else:
        lines += ["| seed | " + p["default"] + " | OSNet-AIN | difference |", "|---|---:|---:|---:|"]
        lines += [f"| {i} | {pct(x)} | {pct(y)} | {pct(x - y)} |" for i, (x, y) in enumerate(p["pairs"], 1)]
    return lines + [""] + paired_methods_section(s, noise)


def configuration_lines(name: str, s: dict, bench: Path) -> list:
    """Every section of one configuration, in RESULTS.md's order."""
    c = s["config"]
    lines = [f"## Configuration `{name}`: {', '.join(c['sources'])} → {', '.join(c['targets'])}", "",
             f"Space `{c['space']}`, {c['arch']}, {_search_steps_text(c)}, retrain {c['retrain_steps']} steps.", ""]
    lines += noise_and_yardstick_lines(s) + methods_lines(s)
    lines += yardstick_section(s) + projection_section(s) + lean_section(s) + targets_section(s, bench)
    return lines + paired_lines(s) + cost_section(s) + export_section(s)


def write_results(summaries: dict, results: Path, info: dict, bench: Path = BENCH, quick: bool = False) -> Path:
    """RESULTS.md at `results` and beside it its figures, each configuration's summary, run.json
    (`info`) and the step bench it quotes: everything `regenerate` reads again."""
    start = prefix(results)
    lines = header_lines(info, quick)
    for name, s in summaries.items():
        lines += configuration_lines(name, s, bench)
        lines += [f"![{name}]({f.name})" for f in figures(name, s, results.parent, start)] + [""]
    results.write_text("\n".join(lines) + "\n")
    for name, s in summaries.items():  # kept beside RESULTS.md: it regenerates without the run folders
        (results.parent / f"{start}results_{name}.json").write_text(json.dumps(s, indent=1) + "\n")
    (results.parent / f"{start}{RUN_INFO}").write_text(json.dumps(info, indent=1) + "\n")
    kept = results.parent / f"{start}{BENCH.name}"
    if bench.is_file() and bench.resolve() != kept.resolve():
        shutil.copyfile(bench, kept)
    print(f"wrote {results} and its {start}results_<configuration>.json", file=sys.stderr)
    return results


def yardstick_table(s: dict) -> list:
    """Every yardstick architecture, sorted by its held-out mAP (the mean over its retrains when
    there are several): where it puts IN and each retrain's figure, so later work can place a new
    genotype among them without retraining them (the numbers are in results_<configuration>.json)."""
    yard = s["yardstick"]
    where = {f"random{i:02d}": a for i, a in enumerate(s.get("random_architectures", []))}
    n = s.get("yardstick_seeds", 1)
    lines = ["Every yardstick architecture" + (f", by the mean of its {n} retrains" if n > 1 else "") + ":", "",
             "| architecture | IN at | held-out mAP per retrain | mean |", "|---|---|---|---:|"]
    for k in sorted(yard, key=lambda k: -mean_map(yard[k])):
        a = where.get(k)
        sites = "published" if a is None else (
            ", ".join(p if a[p] == "in" else f"{p} {a[p]}" for p in a if a[p] != _no_in(p)) or "none")
        per = ", ".join(pct(v) for v in (yard[k].get("mAP_seeds") or [yard[k]["mAP"]]))
        lines.append(f"| {k} | {sites} | {per} | {pct(mean_map(yard[k]))} |")
    return lines + [""]


def paired_methods_section(s: dict, noise: float) -> list:
    """Each paired method's most frequent genotype over the noise seeds, against OSNet-AIN and
    plain OSNet on the same seeds (mean ± std of the paired differences)."""
    pm = s.get("paired_methods") or {}
    if len(pm) < 2:
        return []
    lines = ["Every paired method's most frequent genotype (ties: the first seed's), retrained with the noise seeds "
             f"(twice the noise floor: {pct(2 * noise)}):", "",
             "| method | genotype | held-out mAP | minus OSNet-AIN | minus OSNet |", "|---|---|---:|---:|---:|"]
    for m, r in pm.items():
        ch = ", ".join(f"{k}={v}" for k, v in r["choices"].items())
        cells = [f"{pct(r[k]['diff_mean'])} ± {pct(r[k]['diff_std'])}" for k in ("vs_osnet_ain", "vs_osnet")]
        lines.append(f"| {m} | {ch} | {_ms(r['mAP'])} | {cells[0]} | {cells[1]} |")
    return lines + [""]


def _search_steps_text(c: dict) -> str:
    """The header's search budget: each search variant's own steps where the summary has them (the
    configuration's search.epochs is the leave-one-domain-out search's only)."""
    by = c.get("search_steps_by_variant")
    if not by:
        return f"search {c['search_steps']} steps"
    return "search steps " + ", ".join(f"{v} {n}" for v, n in by.items())


def read_summaries(folder: Path, results: Path) -> dict:
    """The configurations' summaries in `folder`: a protocol's run folders (*/results.json), else the
    copies kept beside `results`; style and geometry first."""
    summaries = {p.parent.name: json.loads(p.read_text()) for p in sorted(folder.glob("*/results.json"))}
    start = prefix(results) + "results_"
    if not summaries:
        summaries = {p.stem[len(start):]: json.loads(p.read_text()) for p in sorted(folder.glob(start + "*.json"))}
    if not summaries:
        raise SystemExit(f"results_protocol: no */results.json or {start}*.json in {folder}")
    known = ("style", "geometry")
    return {c: summaries[c] for c in [c for c in known if c in summaries] + [c for c in summaries if c not in known]}


def regenerate(folder: Path, results: Path, command: str | None = None) -> Path:
    """RESULTS.md (`results`) again from what a run or a committed study keeps in `folder`: the
    summaries, run.json (else `command` in the header) and the step bench the run quoted (else
    none: the step target is left out rather than read off a later bench)."""
    folder = Path(folder)
    start = prefix(results)
    info_file = folder / f"{start}{RUN_INFO}"
    info = json.loads(info_file.read_text()) if info_file.is_file() else {}
    if command is not None or not info:
        info = {"args": command or f"--out {folder}"}
    bench = folder / f"{start}{BENCH.name}"
    return write_results(read_summaries(folder, results), Path(results), info, bench)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("folder", help="a protocol's --out, or a folder holding the summaries kept beside a results file")
    ap.add_argument("--results", default=None, help="the results file to write (default FOLDER/RESULTS.md)")
    ap.add_argument("--command", default=None, help="the run_protocol.py arguments for the header (default: the "
                                                    "run.json kept in FOLDER)")
    a = ap.parse_args(argv)
    folder = Path(a.folder)
    regenerate(folder, Path(a.results or folder / "RESULTS.md"), a.command)


if __name__ == "__main__":
    main()
