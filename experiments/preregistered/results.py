"""RESULTS.md and the figures of the pre-registered test, from results.json alone (RESULTS.md is
byte-identical on every run: a test regenerates it). Every verdict is judged against its
criterion as PLAN.md wrote it before the run.

    python experiments/preregistered/results.py [--results results.json] [--out RESULTS.md]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from expkit import report, stats  # noqa: E402

NEW, OLD = ("tex", "duo", "clear"), ("synth", "style", "geometry")
BASELINES = ("osnet", "osnet_ibn", "osnet_ain", "stem", "pick", "analyze")


def analyze_seeds(fam: dict) -> dict:
    """Analyze's score per seed: the mean over its answers' retrains with that seed."""
    keys = [f"analyze/answer{a}" for a in fam["answers"]]
    return {s: sum(report.per_seed(fam, k)[s] for k in keys) / len(keys) for s in fam["seeds"]}


def baselines(fam: dict) -> dict:
    """{name: {seed: mAP}} of every baseline the default is compared with."""
    out = {d: report.per_seed(fam, d) for d in report.CONSTANTS}
    out["pick"] = report.pick_seeds(fam)
    out["analyze"] = analyze_seeds(fam)
    return out


def judge(fam: dict) -> dict:
    """Every figure the criteria need, for one family."""
    base = baselines(fam)
    default = report.method_seeds(fam, "default")
    own = report.method_seeds(fam, "default", searched=True)
    best = report.best_published(fam)
    floor = report.noise_floor(fam)
    vs = {b: report.compare(default, base[b]) for b in BASELINES}
    rejected = stats.holm({b: r["p"] for b, r in vs.items()})
    ag = report.agreement(fam, "default")
    return {"floor": floor, "best": best, "default": default, "own": own, "vs": vs, "holm": rejected,
            "vs_best": report.compare(default, base[best]), "own_vs_best": report.compare(own, base[best]),
            "agreement": ag, "base": base,
            "T1": vs[best]["mean"] >= -floor, "T2": vs[best]["mean"] > 2 * floor,
            "T3": vs["pick"]["mean"] >= -floor and vs["analyze"]["mean"] >= -floor, "T4": ag["identical"] >= 4}


def cost_line(fam: dict) -> str:
    ans = fam["methods"]["default"]
    per = [(d["search_seconds"] + d["seconds"]) for d in ans]
    rt = fam.get("retrain_seconds") or []
    if not rt:
        return ""
    one = sum(rt) / len(rt)
    m = sum(per) / len(per)
    return (f"Cost at this test-bed's schedules: search + derive {m / 60:.1f} min per answer against "
            f"{one / 60:.1f} min per retrain (one thread each, two jobs at a time): {m / one:.2f}x one retrain; "
            f"the pick costs 3 retrains (3.00x).")


def best_measured(fam: dict, j: dict) -> list:
    """Where the family has designs beyond the published ones (tex's block-IN designs), how far
    the default is from the best architecture measured there: what a search could have found."""
    extra = [d for d in fam["genotypes"] if "/" not in d and d not in report.CONSTANTS]
    if not extra:
        return []
    best = max(extra, key=lambda d: stats.mean_sd(list(report.per_seed(fam, d).values()))[0])
    r = report.compare(j["default"], report.per_seed(fam, best))
    return [f"The best architecture measured on this family is {best}, not a published design; the default "
            f"minus {best}: {report.diff(r)}.", ""]


def family_lines(name: str, fam: dict) -> list:
    chk = fam["check"]
    head = [f"## `{name}` ({', '.join(fam.get('sources', []))} -> {', '.join(fam.get('targets', []))})", "",
            f"Validity check ({chk['rule']}): **{'passed' if chk['pass'] else 'failed'}**."]
    if name in OLD:
        head.append("An old family: used to develop the method, so its figures are no test of it (PLAN.md); "
                    "run under the same protocol and reported apart.")
    if "block_minus_stem" in chk:
        head.append("Block designs minus the stem alone, paired: " + "; ".join(
            f"{b} {report.diff(r)}" for b, r in chk["block_minus_stem"].items()) + ".")
    if "osnet" in chk:
        head.append(f"Plain OSNet: {100 * chk['osnet']:.1f} mAP.")
    if "methods" not in fam:
        why = ("the protocol after the check was not run (`run.py --check-only`)" if fam.get("check_only")
               else "a family that fails its check gets none (PLAN.md)")
        return head + [f"No search, pick or analyze was run: {why}.", ""]
    j = judge(fam)
    lines = head + ["", f"Noise floor {100 * j['floor']:.1f} mAP (pooled std over seeds of the constant designs); "
                        f"the best published design on the targets is {j['best']}.", ""]
    rows = [[d, report.ms(report.per_seed(fam, d))] for d in fam["genotypes"] if "/" not in d]
    rows += [["pick (b)", report.ms(j["base"]["pick"])], ["analyze (c)", report.ms(j["base"]["analyze"])],
             ["**default**", report.ms(j["default"])], ["the search's own answer", report.ms(j["own"])]]
    lines += report.table(rows, ["architecture", f"held-out mAP, mean ± std over {len(fam['seeds'])} seeds"]) + [""]
    lines += best_measured(fam, j)
    rows = [[b, report.diff(j["vs"][b]), "yes" if j["holm"][b] else "no"] for b in BASELINES]
    lines += report.table(rows, ["default minus", "paired over seeds (p)", "beyond chance after Holm (6 tests)"])
    lines += ["", "Answers (search seed 100 x answer):", ""]
    rows = []
    for a, d in zip(fam["answers"], fam["methods"]["default"]):
        dec = d["decision"]
        rows.append([str(a), report.in_sites(fam, f"default/answer{a}"), dec.get("verdict", ""),
                     ", ".join(dec.get("searched_in_sites", [])) or "none",
                     f"{dec.get('z', 0):+.1f}" if "z" in dec else ""])
    lines += report.table(rows, ["answer", "IN sites (the answer)", "check", "the search's own IN sites",
                                 "searched - best published (SE)"])
    picks = ", ".join(f"seed {s}: {p['choice']}" for s, p in sorted(fam["pick"].items()))
    an = "; ".join(", ".join(d["in_sites"]) or "none" for d in fam["analyze"])
    lines += ["", f"The pick (b) chose {picks}. Analyze (c) suggested: {an}.", cost_line(fam), ""]
    return lines


def verdicts(fams: dict) -> list:
    rows = []
    for name in [n for n in NEW + OLD if n in fams and "methods" in fams[n]]:
        j = judge(fams[name])
        mark = {True: "met", False: "**not met**"}
        label = f"{name} (old: used in development)" if name in OLD else name
        rows.append([label, f"{report.diff(j['vs_best'])} vs {j['best']}; floor {100 * j['floor']:.1f}",
                     mark[j["T1"]], mark[j["T2"]], mark[j["T3"]],
                     f"{j['agreement']['identical']}/{j['agreement']['answers']}: {mark[j['T4']]}"])
    out = report.table(rows, ["family", "default minus best published (paired)", "T1 not below by > floor",
                              "T2 above by > 2x floor", "T3 >= pick and analyze", "T4 same answer >= 4/5"])
    new = [n for n in NEW if n in fams and "methods" in fams[n]]
    if new:
        t2 = any(judge(fams[n])["T2"] for n in new)
        out += ["", "T2 over the new families: " + ("met on at least one." if t2 else
                "**not met: on no new family is the default above the best published design by more than twice "
                "the noise floor.**")]
    return out + [""]


def figure(name: str, fam: dict, path: Path) -> None:
    """Per family: every baseline and the default side by side, mean ± std over seeds."""
    from osnas.plot.common import new_figure, save_figure

    j = judge(fam)
    bars = {**{d: report.per_seed(fam, d) for d in report.CONSTANTS}, "pick": j["base"]["pick"],
            "analyze": j["base"]["analyze"], "default": j["default"], "searched": j["own"]}
    fig = new_figure(6.5, 3.4)
    ax = fig.add_subplot()
    names = list(bars)
    mean = [100 * stats.mean_sd(list(bars[n].values()))[0] for n in names]
    sd = [100 * stats.mean_sd(list(bars[n].values()))[1] for n in names]
    colors = ["#ff7f0e" if n == "default" else "#ffbb78" if n == "searched" else "#1f77b4" for n in names]
    ax.bar(range(len(names)), mean, yerr=sd, color=colors, capsize=3)
    ax.set_xticks(range(len(names)))
    ax.set_xticklabels(names, rotation=30, ha="right", fontsize=8)
    ax.set_ylabel(f"held-out mAP (%), mean ± std, {len(fam['seeds'])} seeds")
    ax.set_title(f"{name}: the default against what a practitioner would do instead", fontsize=9)
    save_figure(fig, path, "png")


def render(data: dict) -> str:
    fams = data["families"]
    lines = ["# Pre-registered test: results", "",
             "Generated by `python experiments/preregistered/results.py` from results.json. The plan, the families, "
             "the baselines and the criteria were committed before the new families existed: "
             "[PLAN.md](PLAN.md).", ""]
    for name in [n for n in NEW + OLD if n in fams]:
        f, env = fams[name], fams[name]["environment"]
        took = (f"first job {f['first_job']}, {f['span_minutes']} min from the first job to the last (the last "
                f"stretch {f['minutes']} min)") if "span_minutes" in f else f"started {f['started']}, {f['minutes']} min"
        lines.append(f"- `{name}`: `{f['command']}` at commit {f['commit']}, {took} on {env['cpu']} "
                     f"({env['threads']} threads, torch {env['torch']}, osnas {env['osnas']})"
                     + (" — QUICK RUN, not evidence" if f.get("quick") else "")
                     + (" — validity check only" if f.get("check_only") else ""))
    lines += ["", "## Verdicts", ""] + verdicts(fams)
    for name in [n for n in NEW + OLD if n in fams]:
        lines += family_lines(name, fams[name])
        if "methods" in fams[name]:
            lines += [f"![{name}](results_{name}.png) ![{name} site gaps](site_gap_{name}.png)", ""]
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--results", default=str(HERE / "results.json"))
    ap.add_argument("--out", default=str(HERE / "RESULTS.md"))
    ap.add_argument("--no-figures", action="store_true", help="RESULTS.md only")
    a = ap.parse_args(argv)
    data = json.loads(Path(a.results).read_text())
    out = Path(a.out)
    out.write_text(render(data))
    if not a.no_figures:
        from osnas.plot.analysis import site_gap
        from osnas.plot.common import save_figure

        for name, fam in data["families"].items():
            if "methods" in fam:
                figure(name, fam, out.parent / f"results_{name}.png")
                save_figure(site_gap(fam["analyze"][0]["analysis"]), out.parent / f"site_gap_{name}.png", "png")
    print(out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
