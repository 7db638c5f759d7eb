"""From a family's results (protocol.run_family) to the figures a study reports.

Every figure is computed from the committed results.json alone, so RESULTS.md regenerates
byte for byte. Scores are held-out mAP (the mean over a family's targets), in percent.

- a design's or an answer's score per retrain seed; a method's score per seed is the mean over
  its answers of their score with that seed, so methods and designs pair by seed;
- the noise floor: the pooled standard deviation over retrain seeds of the constant designs
  (the square root of their mean variance): how far one retrain moves by its seed alone;
- the best published design: the published design with the highest mean on the targets (an
  oracle no user has); the pick: per seed, the design the kept-out source chose (protocol._pick);
- paired differences per seed, with standard error and two-sided t-test p-value; Holm's
  correction over the comparisons of one table;
- agreement: how many answers share the modal architecture, and per position the share of the
  answers that chose its modal candidate.
"""

from __future__ import annotations

import math
from collections import Counter
from typing import Dict, List

from expkit import stats

PUBLISHED = ("osnet", "osnet_ibn", "osnet_ain")
CONSTANTS = PUBLISHED + ("stem",)


def per_seed(fam: dict, key: str) -> Dict[int, float]:
    """{seed: held-out mAP} of a genotype key (a design name, or METHOD/answerA)."""
    pid = fam["genotypes"][key]["plan_id"]
    return {int(s): v for s, v in fam["scores"][pid].items()}


def method_seeds(fam: dict, method: str, searched: bool = False) -> Dict[int, float]:
    """A method's score per seed: the mean over its answers (`searched`: the search's own answers,
    before the check against the published designs replaced any)."""
    keys = [answer_key(fam, method, a, searched) for a in fam["answers"]]
    return {s: sum(per_seed(fam, k)[s] for k in keys) / len(keys) for s in fam["seeds"]}


def answer_key(fam: dict, method: str, a: int, searched: bool = False) -> str:
    k = f"{method}/answer{a}"
    return f"{k}/searched" if searched and f"{k}/searched" in fam["genotypes"] else k


def pick_seeds(fam: dict) -> Dict[int, float]:
    """The practitioner's pick per seed: the chosen design's all-source retrain with that seed."""
    return {int(s): per_seed(fam, p["choice"])[int(s)] for s, p in fam["pick"].items()}


def noise_floor(fam: dict) -> float:
    var = [stats.mean_sd(list(per_seed(fam, d).values()))[1] ** 2 for d in CONSTANTS if d in fam["genotypes"]]
    return math.sqrt(sum(var) / len(var))


def best_published(fam: dict) -> str:
    return max(PUBLISHED, key=lambda d: (stats.mean_sd(list(per_seed(fam, d).values()))[0], -PUBLISHED.index(d)))


def compare(a: Dict[int, float], b: Dict[int, float]) -> dict:
    seeds = sorted(set(a) & set(b))
    return stats.paired([a[s] for s in seeds], [b[s] for s in seeds])


def agreement(fam: dict, method: str) -> dict:
    """Answers sharing the modal architecture, and the per-position share of the modal candidate."""
    ans = fam["methods"][method]
    plans = Counter(fam["genotypes"][f"{method}/answer{a}"]["plan_id"] for a in fam["answers"])
    per_pos: List[float] = []
    for pos in ans[0]["choices"]:
        c = Counter(d["choices"][pos] for d in ans)
        per_pos.append(c.most_common(1)[0][1] / len(ans))
    return {"identical": plans.most_common(1)[0][1], "answers": len(ans),
            "positions": sum(per_pos) / len(per_pos)}


def ms(d: Dict[int, float]) -> str:
    """'mean ± sd' over seeds, in percent."""
    m, s = stats.mean_sd(list(d.values()))
    return stats.fmt(m, s)


def diff(r: dict) -> str:
    """A paired difference in percent: '+1.2 ± 0.4 (p 0.03)'."""
    return f"{100 * r['mean']:+.1f} ± {100 * r['se']:.1f} (p {r['p']:.2g})"


def in_sites(fam: dict, key: str) -> str:
    """An architecture's IN sites, or the published design it is."""
    pid = fam["genotypes"][key]["plan_id"]
    design = next((d for d in PUBLISHED if d in fam["genotypes"] and fam["genotypes"][d]["plan_id"] == pid), None)
    if design:
        return design
    s = fam["genotypes"][key]["in_sites"]
    return ", ".join(s) if s else "none (plain OSNet)"


def table(rows: List[List[str]], header: List[str]) -> List[str]:
    out = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return out + ["| " + " | ".join(r) + " |" for r in rows]
