"""`osnas analyze`: where do the sources differ in exactly what instance normalisation removes?

A cheap, interpretable diagnostic before (or instead of) a search. A plain OSNet (all BN, no
IN) is trained briefly on the union of the sources; then, with the network in eval mode, every
normalisation site records, per image, the mean and standard deviation of each channel over
the feature map: the two numbers an IN at that site would remove. Per site:

  domain_share    the share of the variance of those statistics explained by the source
                  domain. High: the sources differ in what IN would remove (style).
  identity_share  the share explained by the person identity within a domain. High: the
                  statistics carry identity (e.g. absolute clothing colour), which IN would
                  throw away too.
  probe           how well a linear probe on the statistics tells the domains apart, on
                  identities it was not fitted on (accuracy, and accuracy minus chance).
  score           domain_share - identity_share: the net case for IN at the site; rank 1 = best.

Both shares are chance-corrected (epsilon squared): a grouping explains some variance by
chance alone (with K images per identity, identity would "explain" about 1/K of pure noise),
so each between-group sum of squares is reduced by its degrees of freedom times the mean
square of the level below it before dividing by the total. Identities are nested in domains,
so the identity share counts only the variation between identities of the same domain.

The suggestion places IN at the sites with the largest positive score (at most
`analyze.max_sites`, only above `analyze.min_score`) that a position of the search space
`analyze.space` can hold; nothing qualifying is a legitimate answer: plain OSNet.

OUT/ holds: train/ (the plain-OSNet run: reused when finished, resumed when interrupted),
analysis.json, genotype.yaml (for `osnas retrain --genotype`), config.yaml, site_gap.png,
site_gap_bars.png and log.txt.
"""

from __future__ import annotations

import dataclasses
import math
import sys
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
import torch.nn as nn

from osnas.config import Config, save_config
from osnas.data import RandomIdentitySampler, build_multisource, read_image, transforms_from_config
from osnas.data import data_root as resolve_data_root
from osnas.errors import OsnasError, OsnasInterrupted
from osnas.models.checkpoint import load_model_from_checkpoint
from osnas.models.genotype import NAMED, Genotype, named_genotype
from osnas.models.osnet import NormSite, default_plan, norm_sites, site_kind, site_unit
from osnas.models.space import Position, SearchSpace, load_space
from osnas.retrain import train
from osnas.rundir import CHECKPOINT, GENOTYPE
from osnas.session import resolve_run_config
from osnas.training import SeededDataset, batch_loader, derive_seed
from osnas.utils import Progress, load_checkpoint, log, resolve_device, setup_run_logging, write_json

ANALYSIS_JSON = "analysis.json"
TRAIN_DIR = "train"  # the plain-OSNet training run inside OUT
FIGURES = ("site_gap", "site_gap_bars")
STATS = ("mean", "std")  # the per-image channel statistics an IN removes
PROBE_STEPS = 300  # full-batch Adam steps of the linear domain probe
PROBE_LR = 0.05
PROBE_L2 = 1e-3  # ridge on the probe's weights: more features than images is common
RULE = ("IN at the sites with the largest score = domain_share - identity_share, only where score > min_score, "
        "at most max_sites, and only where a position of the space can hold IN")


# ----------------------------------------------------------------------------- configuration
def check_analyze_config(a) -> None:
    """Bad `analyze.*` values are one-line errors naming the key, before any work."""
    for key, low in (("epochs", 1), ("batches", 1), ("max_sites", 0), ("steps_per_epoch", 0)):
        v = getattr(a, key)
        if v < low:
            raise OsnasError(f"config key analyze.{key}: expected an integer >= {low}, got {v}")
    if not math.isfinite(a.min_score):
        raise OsnasError(f"config key analyze.min_score: expected a finite number, got {a.min_score}")


def resolve_analyze_config(sources=None, data_root=None, config_file=None, overrides=None,
                           out=None) -> Tuple[Config, Path]:
    """(cfg, out folder), resolved as the training stages do; the `analyze.epochs` and
    `analyze.steps_per_epoch` schedule is copied into `train.*` for the plain-OSNet run."""
    cfg, out_dir = resolve_run_config(config_file, overrides, out, False, sources, data_root, prefix="analyze")
    check_analyze_config(cfg.analyze)
    if len(cfg.data.sources) < 2:
        raise OsnasError(f"osnas analyze compares source domains: needs at least 2 sources, got "
                         f"{len(cfg.data.sources)} ({', '.join(cfg.data.sources)}); pass --sources A,B[,...]")
    if cfg.data.num_instances < 2:
        raise OsnasError(f"osnas analyze needs several images per identity to tell identity from image noise: "
                         f"data.num_instances must be >= 2, got {cfg.data.num_instances}")
    if out_dir.exists() and not out_dir.is_dir():
        raise OsnasError(f"{out_dir}: --out must be a folder, got a file")
    cfg.train.epochs, cfg.train.steps_per_epoch = cfg.analyze.epochs, cfg.analyze.steps_per_epoch
    return cfg, out_dir


# ----------------------------------------------------------------------------- training
def _check_reusable(ck: dict, cfg: Config, path: Path) -> None:
    """A checkpoint in OUT/train is reused or resumed only if it is a plain OSNet of this width,
    input size and sources; anything else is an error (never silently retrained over)."""
    missing = [k for k in ("model", "epoch", "sources", "arch", "genotype", "input_size") if k not in ck]
    if missing:
        raise OsnasError(f"{path}: not a training checkpoint of osnas analyze (missing {', '.join(missing)})")
    g = ck["genotype"]
    plan = g.get("plan") if isinstance(g, dict) else None
    want = {"sources": list(cfg.data.sources), "arch": cfg.model.arch,
            "input_size": [cfg.data.height, cfg.data.width]}
    have = {"sources": list(ck["sources"]), "arch": ck["arch"], "input_size": list(ck["input_size"])}
    diff = [f"{k} {have[k]} (asked {want[k]})" for k in want if have[k] != want[k]]
    if plan != NAMED["osnet"]:
        diff.append("a network that is not plain OSNet")
    if diff:
        raise OsnasError(f"{path}: holds {'; '.join(diff)}; use another --out, or the settings it was trained with")


def train_plain(cfg: Config, out_dir: Path) -> Path:
    """Train plain OSNet on the sources into OUT/train (the retrain loop and schedule `train.*`);
    returns its checkpoint. A finished checkpoint is reused, an interrupted one resumed."""
    run_dir = out_dir / TRAIN_DIR
    ck_path = run_dir / CHECKPOINT
    resume = False
    if ck_path.is_file():
        ck = load_checkpoint(ck_path, "analyze training checkpoint")
        _check_reusable(ck, cfg, ck_path)
        done = int(ck["epoch"])
        del ck
        if done >= cfg.train.epochs:
            print(f"analyze: reusing the plain OSNet in {run_dir} ({done} epochs)", file=sys.stderr, flush=True)
            return ck_path
        resume = True
    try:
        train(cfg, named_genotype("osnet", cfg.model.arch), run_dir, resume=resume)
    except OsnasInterrupted:
        raise OsnasInterrupted(f"interrupted: the training checkpoint is saved in {run_dir}; run the same "
                               f"osnas analyze command again (same --out) to continue it") from None
    return ck_path


# ----------------------------------------------------------------------------- statistics pass
def site_stage(site: str) -> str:
    """The stage a site belongs to, as OSNet's layers group them: stem | conv2 | conv3 | conv4 | conv5
    (the transition pool2 closes conv2, pool3 closes conv3)."""
    if site in ("stem", "conv5"):
        return site
    if site.startswith("pool"):
        return f"conv{site[4:]}"
    return site.split(".", 1)[0]


def site_modules(model: nn.Module) -> Dict[str, nn.Module]:
    """site name -> the NormSite module that applies its op, in network order.

    The input of that module is what an IN at the site would normalise: the conv output at
    stem / pool / conv5 / end sites, and at a `post` site (op `none` in plain OSNet) the block
    output before its final ReLU (end(x3) + shortcut)."""
    found = {}
    for name, m in model.named_modules():
        if isinstance(m, NormSite):
            unit = name[: -len(".norm")] if name.endswith(".norm") else name
            found[{"conv1": "stem"}.get(unit, unit)] = m
    missing = [s for s in norm_sites() if s not in found]
    if missing:
        raise OsnasError(f"network has no normalisation module for sites {', '.join(missing)}")
    return {s: found[s] for s in norm_sites()}


class SiteRecorder:
    """Forward pre-hooks on normalisation sites: per image, the channel means and standard
    deviations of the feature map entering each site, (B, C, H, W) -> (B, C) each.

        with SiteRecorder(site_modules(model)) as rec:
            model(x) ...
        stats = rec.result()   # {site: {"mean": (N, C), "std": (N, C)}}
    """

    def __init__(self, modules: Dict[str, nn.Module]):
        self.modules = dict(modules)
        self.parts = {s: {k: [] for k in STATS} for s in self.modules}
        self._handles = []

    def _hook(self, site: str):
        def record(module, args):
            x = args[0].detach().float()  # (B, C, H, W)
            self.parts[site]["mean"].append(x.mean(dim=(2, 3)).cpu())  # (B, C)
            self.parts[site]["std"].append(x.var(dim=(2, 3), unbiased=False).sqrt().cpu())  # (B, C), as IN
        return record

    def __enter__(self) -> "SiteRecorder":
        self._handles = [m.register_forward_pre_hook(self._hook(s)) for s, m in self.modules.items()]
        return self

    def __exit__(self, *exc) -> None:
        for h in self._handles:
            h.remove()
        self._handles = []

    def result(self) -> Dict[str, Dict[str, np.ndarray]]:
        return {s: {k: torch.cat(v[k]).numpy().astype(np.float64) for k in STATS} for s, v in self.parts.items()}


def draw_images(items: Sequence[tuple], domain_names: Sequence[str], batch_size: int, num_instances: int,
                batches: int, seed: int) -> List[int]:
    """Indices into `items` of `batches` PK batches (P identities x K images) from each domain,
    each image once (an identity with fewer than K images is drawn with replacement)."""
    out = []
    for d, name in enumerate(domain_names):
        idx = [i for i, it in enumerate(items) if int(it[3]) == d]
        try:
            sampler = RandomIdentitySampler([items[i] for i in idx], batch_size, num_instances,
                                            seed=derive_seed(seed, "analyze", d), num_batches=batches)
            drawn = [idx[j] for b in sampler for j in b]
        except OsnasError as e:
            raise OsnasError(f"source {name}: {e}") from None
        out += list(dict.fromkeys(drawn))  # first occurrence of each image, order kept
    return out


def collect_statistics(model: nn.Module, items: Sequence[tuple], indices: Sequence[int], data_cfg,
                       device: torch.device, progress: bool = True):
    """Run the images `indices` of `items` through `model` (eval mode, evaluation transform);
    returns ({site: {"mean": (N, C), "std": (N, C)}}, domains (N,), pids (N,))."""
    chosen = [items[i] for i in indices]
    dataset = SeededDataset(chosen, transforms_from_config(data_cfg, train=False), read_image)
    keys = [(j, 0) for j in range(len(chosen))]  # the evaluation transform draws nothing: seed 0
    bs = data_cfg.batch_size
    batches = [keys[k:k + bs] for k in range(0, len(keys), bs)]
    model.eval()
    with SiteRecorder(site_modules(model)) as rec, torch.no_grad(), \
            Progress(len(batches), "analyze", "batch", enabled=progress) as bar:
        for x, *_ in batch_loader(dataset, batches, data_cfg.workers):
            model(x.to(device))
            bar.update(1)
    domains = np.array([int(it[3]) for it in chosen])
    pids = np.array([int(it[1]) for it in chosen])
    return rec.result(), domains, pids


# ----------------------------------------------------------------------------- variance shares
def _codes(*labels) -> Tuple[np.ndarray, int]:
    """Integer group codes 0..G-1 of the rows' label tuples, and G."""
    keys = np.stack([np.asarray(lab).reshape(-1) for lab in labels], axis=1)
    _, inv = np.unique(keys, axis=0, return_inverse=True)
    inv = inv.reshape(-1)
    return inv, int(inv.max()) + 1 if len(inv) else 0


def _group_means(x: np.ndarray, codes: np.ndarray, n: int) -> Tuple[np.ndarray, np.ndarray]:
    """Per-group means (n, C) of rows x (N, C), and the group sizes (n,)."""
    sums = np.zeros((n, x.shape[1]))
    np.add.at(sums, codes, x)
    counts = np.bincount(codes, minlength=n)
    return sums / np.maximum(counts, 1)[:, None], counts


def variance_shares(x, domains, pids, corrected: bool = True) -> Dict[str, float]:
    """How much of the variance of each column of x (N, C) the domain and the identity explain.

    Nested decomposition per channel: SS_total = SS_domain + SS_identity|domain + SS_within.
    `domain` = SS_domain / SS_total, `identity` = SS_identity|domain / SS_total, averaged over
    the channels that vary. `corrected` subtracts what chance explains (epsilon squared):
    SS_domain - (D-1) MS_identity|domain and SS_identity|domain - (G-D) MS_within, where the
    mean squares estimate the variance of the level below. Returns the corrected shares as
    `domain` / `identity` (clipped at 0) and the plain eta squared as `domain_raw` / `identity_raw`.
    """
    x = np.asarray(x, dtype=np.float64)
    if x.ndim == 1:
        x = x[:, None]
    n = len(x)
    dcode, D = _codes(domains)
    icode, G = _codes(domains, pids)  # identities nested in domains
    dmean, dcount = _group_means(x, dcode, D)
    imean, icount = _group_means(x, icode, G)
    id_domain = np.zeros(G, dtype=int)
    id_domain[icode] = dcode  # the domain of each identity
    grand = x.mean(axis=0)  # (C,)
    ss_t = ((x - grand) ** 2).sum(axis=0)
    ss_d = (dcount[:, None] * (dmean - grand) ** 2).sum(axis=0)
    ss_i = (icount[:, None] * (imean - dmean[id_domain]) ** 2).sum(axis=0)
    ss_w = np.maximum(ss_t - ss_d - ss_i, 0.0)
    ms_w = ss_w / (n - G) if n > G else np.zeros_like(ss_w)
    ms_i = ss_i / (G - D) if G > D else ms_w
    valid = ss_t > 1e-12 * (x ** 2).sum(axis=0) + 1e-300  # channels that vary at all
    if not valid.any():
        return {"domain": 0.0, "identity": 0.0, "domain_raw": 0.0, "identity_raw": 0.0}
    t = ss_t[valid]
    raw_d, raw_i = float(np.mean(ss_d[valid] / t)), float(np.mean(ss_i[valid] / t))
    if not corrected:
        return {"domain": raw_d, "identity": raw_i, "domain_raw": raw_d, "identity_raw": raw_i}
    cor_d = float(np.mean((ss_d - (D - 1) * ms_i)[valid] / t))
    cor_i = float(np.mean((ss_i - (G - D) * ms_w)[valid] / t))
    return {"domain": max(cor_d, 0.0), "identity": max(cor_i, 0.0), "domain_raw": raw_d, "identity_raw": raw_i}


# ----------------------------------------------------------------------------- linear probe
def probe_split(domains, pids, seed: int) -> np.ndarray:
    """Train mask (N,) for the probe: per domain, a random half of the identities (rounded up)
    with all their images; the other half scores it, so the probe must recognise the domain
    on people it never saw. A domain with one identity splits its images instead."""
    domains, pids = np.asarray(domains), np.asarray(pids)
    mask = np.zeros(len(domains), dtype=bool)
    for d in np.unique(domains):
        rng = np.random.default_rng([int(seed) & ((1 << 63) - 1), 77, int(d)])
        rows = np.flatnonzero(domains == d)
        ids = np.unique(pids[rows])
        if len(ids) >= 2:
            keep = set(ids[rng.permutation(len(ids))[: (len(ids) + 1) // 2]].tolist())
            mask[rows] = [p in keep for p in pids[rows]]
        else:
            mask[rows[rng.permutation(len(rows))[: (len(rows) + 1) // 2]]] = True
    return mask


def linear_probe(features, labels, train_mask, steps: int = PROBE_STEPS) -> float:
    """Accuracy on the rows outside `train_mask` of a multinomial logistic regression fitted on
    the rows inside it: features standardised with the train rows' mean and std, zero initial
    weights, `steps` full-batch Adam steps, a small ridge. Deterministic (float64 on the CPU)."""
    x = torch.as_tensor(np.asarray(features, dtype=np.float64))  # (N, F)
    _, y_np = np.unique(np.asarray(labels), return_inverse=True)
    y = torch.as_tensor(y_np.reshape(-1))
    tr = torch.as_tensor(np.asarray(train_mask, dtype=bool))
    if tr.all() or not tr.any():
        raise OsnasError("too few images to fit and score the domain probe (raise analyze.batches)")
    mu, sd = x[tr].mean(0), x[tr].std(0, unbiased=False)
    x = (x - mu) / torch.where(sd > 1e-12, sd, torch.ones_like(sd))  # constant features -> 0
    k = int(y.max()) + 1
    w = torch.zeros(x.shape[1], k, dtype=torch.float64, requires_grad=True)
    b = torch.zeros(k, dtype=torch.float64, requires_grad=True)
    opt = torch.optim.Adam([w, b], lr=PROBE_LR)
    xt, yt = x[tr], y[tr]
    for _ in range(steps):
        opt.zero_grad()
        loss = nn.functional.cross_entropy(xt @ w + b, yt) + PROBE_L2 * (w ** 2).sum()
        loss.backward()
        opt.step()
    with torch.no_grad():
        pred = (x[~tr] @ w + b).argmax(1)
    return float((pred == y[~tr]).double().mean())


# ----------------------------------------------------------------------------- per-site table
def measure_sites(stats: Dict[str, Dict[str, np.ndarray]], domains, pids, seed: int) -> Dict[str, dict]:
    """Per site (network order): shares, probe, score and rank (see the module docstring)."""
    chance = 1.0 / len(np.unique(domains))
    mask = probe_split(domains, pids, seed)
    rows = {}
    for site in [s for s in norm_sites() if s in stats]:
        st = stats[site]
        shares = [variance_shares(st[k], domains, pids) for k in STATS]  # mean and std statistics
        avg = {k: float(np.mean([s[k] for s in shares])) for k in shares[0]}
        acc = linear_probe(np.concatenate([st[k] for k in STATS], axis=1), domains, mask)
        rows[site] = {"stage": site_stage(site), "unit": site_unit(site), "kind": site_kind(site),
                      "channels": int(st["mean"].shape[1]),
                      "domain_share": avg["domain"], "identity_share": avg["identity"],
                      "domain_eta2": avg["domain_raw"], "identity_eta2": avg["identity_raw"],
                      "probe_acc": acc, "probe_over_chance": acc - chance,
                      "score": avg["domain"] - avg["identity"]}
    return rank_sites(rows)


def rank_sites(rows: Dict[str, dict]) -> Dict[str, dict]:
    """Add `rank` (1 = largest score; ties in network order) to every row; returns rows."""
    names = list(rows)
    order = sorted(range(len(names)), key=lambda i: (-rows[names[i]]["score"], i))
    for r, i in enumerate(order, 1):
        rows[names[i]]["rank"] = r
    return rows


# ----------------------------------------------------------------------------- suggestion
def holding_positions(space: SearchSpace) -> Dict[str, Position]:
    """site -> the position of `space` with a candidate that puts IN there."""
    out = {}
    for p in space.positions:
        for a in p.candidates.values():
            out.update({s: p for s, op in a.items() if op == "in"})
    return out


def position_choice(p: Position, in_sites) -> Optional[str]:
    """The candidate of `p` whose IN sites are exactly `in_sites` among its own (plain-OSNet ops
    elsewhere preferred), or None when no candidate has that combination."""
    want = {s for s in p.sites if s in set(in_sites)}
    plain = {s: ops[0] for s, ops in default_plan().items()}
    best = None
    for c, a in p.candidates.items():
        if {s for s, op in a.items() if op == "in"} == want:
            off_plain = sum(op != plain[s] for s, op in a.items() if s not in want)
            if best is None or off_plain < best[0]:
                best = (off_plain, c)
    return best[1] if best else None


def suggest_sites(rows: Dict[str, dict], space: SearchSpace, max_sites: int, min_score: float
                  ) -> Tuple[Dict[str, str], List[str]]:
    """(choices {position: candidate}, suggested sites in network order): greedily by rank,
    the sites with score > min_score that a position can hold (with the sites already taken
    in that position), at most max_sites. The other positions take their no-IN candidate."""
    holders = holding_positions(space)
    chosen: List[str] = []
    for site in sorted(rows, key=lambda s: rows[s]["rank"]):
        if len(chosen) >= max_sites or rows[site]["score"] <= min_score:
            break
        if site in holders and position_choice(holders[site], chosen + [site]) is not None:
            chosen.append(site)
    choices = {}
    for p in space.positions:
        c = position_choice(p, chosen)
        choices[p.name] = c if c is not None else p.names[p.simplest]
    return choices, [s for s in norm_sites() if s in chosen]


def suggestion_genotype(space: SearchSpace, choices: Dict[str, str], rows: Dict[str, dict], arch: str,
                        sources: Sequence[str], seed: int) -> Genotype:
    """The suggested architecture as a genotype file `osnas retrain --genotype` takes."""
    positions = {p.name: {"choice": choices[p.name],
                          "scores": {s: round(rows[s]["score"], 6) for s in p.sites if s in rows}}
                 for p in space.positions}
    return Genotype(plan=space.plan_for(choices), name="analyze", arch=arch, space=space.name,
                    space_hash=space.sha256, positions=positions, sources=list(sources), seed=seed,
                    select="analyze")


# ----------------------------------------------------------------------------- report
def analysis_record(cfg: Config, union, rows: Dict[str, dict], space: SearchSpace, choices: Dict[str, str],
                    suggested: List[str], genotype: Genotype, domains: np.ndarray, pids: np.ndarray) -> dict:
    """Everything analysis.json holds (and the figures and the printout are drawn from)."""
    holders = holding_positions(space)
    sites = {}
    for s, r in rows.items():
        sites[s] = {k: (round(v, 6) if isinstance(v, float) else v) for k, v in r.items()}
        sites[s].update(holdable=s in holders, suggested=s in suggested)
    images = {name: {"images": int((domains == d).sum()), "identities": int(len(np.unique(pids[domains == d])))}
              for d, name in enumerate(union.domain_names)}
    d, t = cfg.data, cfg.train
    return {"stage": "analyze", "sources": list(union.domain_names),
            "config": {"arch": cfg.model.arch, "height": d.height, "width": d.width, "batch_size": d.batch_size,
                       "num_instances": d.num_instances, "seed": cfg.run.seed, "train_epochs": t.epochs,
                       "train_steps_per_epoch": t.steps_per_epoch, "analyze": dataclasses.asdict(cfg.analyze)},
            "images": images, "chance": round(1.0 / len(union.domain_names), 6),
            "checkpoint": f"{TRAIN_DIR}/{CHECKPOINT}", "sites": sites,
            "suggestion": {"space": space.name, "space_hash": space.sha256, "choices": dict(choices),
                           "in_sites": genotype.in_sites(), "suggested_sites": list(suggested),
                           "plain": not genotype.in_sites(), "genotype": GENOTYPE},
            "rule": {"max_sites": cfg.analyze.max_sites, "min_score": cfg.analyze.min_score, "text": RULE}}


def format_report(analysis: dict) -> str:
    """The stdout table (site, shares, probe, score, rank) and the suggestion."""
    sites, chance = analysis["sites"], analysis["chance"]
    w = max(len(s) for s in sites)
    lines = [f"{'site':<{w}}  {'domain':>7}  {'identity':>8}  {'probe':>5}  {'score':>7}  {'rank':>4}",
             f"{'':<{w}}  {'share':>7}  {'share':>8}  {'acc':>5}  {'':>7}  {'':>4}"]
    for s, r in sites.items():
        mark = "  <- IN" if r["suggested"] else ("" if r["holdable"] else "  (not in the space)")
        lines.append(f"{s:<{w}}  {r['domain_share']:7.3f}  {r['identity_share']:8.3f}  {r['probe_acc']:5.2f}  "
                     f"{r['score']:+7.3f}  {r['rank']:4d}{mark}")
    lines.append(f"probe: domain accuracy on held-out identities (chance {chance:.2f}); "
                 f"score = domain share - identity share")
    sug = analysis["suggestion"]
    where = ", ".join(sug["in_sites"]) if sug["in_sites"] else "nowhere: plain OSNet"
    lines.append(f"suggested genotype: IN at {where} (space {sug['space']}: "
                 + " ".join(f"{k}={v}" for k, v in sug["choices"].items()) + ")")
    return "\n".join(lines)


def _write_outputs(out_dir: Path, cfg: Config, analysis: dict, genotype: Genotype) -> Path:
    """analysis.json, genotype.yaml, config.yaml and the two figures, each written atomically."""
    from osnas.plot import analysis as figures
    from osnas.plot.common import save_figure

    g_path = genotype.save(out_dir / GENOTYPE)
    write_json(out_dir / ANALYSIS_JSON, analysis)
    save_config(cfg, out_dir)
    save_figure(figures.site_gap(analysis), out_dir / f"{FIGURES[0]}.png", "png")
    save_figure(figures.site_gap_bars(analysis), out_dir / f"{FIGURES[1]}.png", "png")
    return g_path


def run_analyze(sources=None, data_root=None, config_file=None, overrides=None, out=None) -> Path:
    """`osnas analyze`: train plain OSNet briefly (or reuse OUT/train), measure the per-site
    domain and identity shares of the channel statistics, suggest where IN belongs, write
    OUT/{analysis.json, genotype.yaml, config.yaml, site_gap.png, site_gap_bars.png}; returns OUT.

    sources: comma string or list ([] / None: the built-in synthetic domains); data_root: the
    data folder; config_file / overrides: a YAML config and `section.key=value` strings."""
    cfg, out_dir = resolve_analyze_config(sources, data_root, config_file, overrides, out)
    a, d = cfg.analyze, cfg.data
    space = load_space(a.space)  # a bad space name fails before any training
    union = build_multisource(d.sources, resolve_data_root(d.root), skip_unparsable=d.skip_unparsable,
                              combine_all=d.combine_all)
    indices = draw_images(union.train, union.domain_names, d.batch_size, d.num_instances, a.batches, cfg.run.seed)
    ck_path = train_plain(cfg, out_dir)
    setup_run_logging(out_dir)
    model, ck = load_model_from_checkpoint(ck_path)
    trained_epochs = int(ck.get("epoch", 0))  # a reused run may have more epochs than asked now
    del ck  # the optimiser state is not needed
    device = resolve_device(cfg.run.device)
    log.info(f"analyze: statistics of {len(indices)} images ({a.batches} PK batches per source) at "
             f"{len(norm_sites())} sites")
    stats, domains, pids = collect_statistics(model.to(device), union.train, indices, d, device, cfg.run.progress)
    rows = measure_sites(stats, domains, pids, cfg.run.seed)
    choices, suggested = suggest_sites(rows, space, a.max_sites, a.min_score)
    genotype = suggestion_genotype(space, choices, rows, cfg.model.arch, union.domain_names, cfg.run.seed)
    analysis = analysis_record(cfg, union, rows, space, choices, suggested, genotype, domains, pids)
    analysis["trained_epochs"] = trained_epochs
    g_path = _write_outputs(out_dir, cfg, analysis, genotype)
    print(format_report(analysis))
    print(f"genotype: {g_path}")
    root = f" --data-root {d.root}" if d.root else ""
    print(f"retrain it: osnas retrain --genotype {g_path} --sources {','.join(union.domain_names)}{root}", flush=True)
    return out_dir
