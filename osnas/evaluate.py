"""`osnas eval-crossdomain`: evaluate retrain checkpoints on held-out target datasets.

For each checkpoint and target: embed query and gallery, rank (cosine or squared
euclidean, optionally k-reciprocal re-ranking), and report CMC rank-1/5/10, mAP and mINP.
Writes metrics.json (schema below) and results.md; several checkpoints are printed side
by side (e.g. OSNet vs OSNet-AIN vs searched).

metrics.json = {"metric", "rerank", "targets": [...],
                "models": {label: {"checkpoint", "genotype", "arch", "sources",
                                   "targets": {target: {"rank1", "rank5", "rank10", "mAP",
                                                        "mINP", "cmc", "num_query",
                                                        "num_gallery", "num_valid"}}}}}
Values are fractions in [0, 1]; tables show percentages.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import List, Optional, Sequence

import numpy as np
import torch

from osnas import distributed as dist
from osnas.config import build_config
from osnas.data import data_root
from osnas.errors import OsnasError
from osnas.models.checkpoint import load_model_from_checkpoint
from osnas.rundir import EVAL_DIR, METRICS, RESULTS_MD
from osnas.utils import Progress, atomic_write_text, log, resolve_device, setup_run_logging, write_json


@torch.inference_mode()
def extract_features(model, items: Sequence[tuple], transform, batch_size: int = 128, workers: int = 2,
                     device: torch.device = torch.device("cpu"), flip: bool = False, desc: str = "features",
                     ctx=None) -> torch.Tensor:
    """Embeddings (N, D) float32 of items, in order. Under DDP each rank embeds a shard, then all-gather."""
    from osnas.data import make_test_loader

    ctx = ctx or dist.DistContext()
    n = len(items)
    shard = list(range(ctx.rank, n, ctx.world_size))
    loader = make_test_loader([items[i] for i in shard], transform, batch_size=batch_size, workers=workers)
    feats = []
    prog = Progress(len(loader), desc, "batch", enabled=ctx.is_main)
    for batch in loader:
        x = batch[0].to(device, non_blocking=True)
        f = model(x)
        if flip:
            f = (f + model(torch.flip(x, dims=[3]))) / 2
        feats.append(f.float().cpu())
        prog.update(1)
    prog.close()
    out = torch.cat(feats) if feats else torch.zeros(0, getattr(model, "feature_dim", 512))
    if ctx.distributed:
        out = dist.gather_rows(out, n, ctx)
    return out


SUMMARY_KEYS = ("rank1", "rank5", "rank10", "mAP", "mINP")


def evaluate_target(model, target: str, root: Path, cfg, device, ctx=None) -> dict:
    """Metrics of `model` on `target`. Datasets with several evaluation splits (VIPeR, GRID,
    PRID, iLIDS, CUHK01, classic CUHK03) are evaluated on every split, or on `eval.split`
    alone; the result is then the mean over the splits, with `std` and each split's numbers
    in `splits`, as the small-set protocols report (mean of 10 or 20 results)."""
    from osnas.data import build_dataset
    from osnas.data.datasets import splits_to_evaluate

    skip = cfg.data.skip_unparsable
    first = build_dataset(target, root, skip_unparsable=skip)  # split 0: read once, also to count the splits
    ks = splits_to_evaluate(first, cfg.eval.split)
    per = []
    for k in ks:
        ds = first if k == first.split else build_dataset(target, root, skip_unparsable=skip, split=k)
        name = target if len(ks) == 1 else f"{target} split {k}"
        per.append(evaluate_split(model, ds, name, cfg, device, ctx))
        per[-1]["split"] = k
    if len(per) == 1:
        return per[0]
    mean = {key: float(np.mean([r[key] for r in per])) for key in SUMMARY_KEYS}
    cmc_len = min(len(r["cmc"]) for r in per)
    return {**mean, "std": {key: float(np.std([r[key] for r in per])) for key in SUMMARY_KEYS},
            "cmc": [float(v) for v in np.mean([r["cmc"][:cmc_len] for r in per], axis=0)],
            "num_splits": len(per), "num_query": per[0]["num_query"], "num_gallery": per[0]["num_gallery"],
            "num_valid": per[0]["num_valid"], "examples": per[0]["examples"],
            "splits": [{k: v for k, v in r.items() if k != "examples"} for r in per]}


def evaluate_split(model, ds, name: str, cfg, device, ctx=None) -> dict:
    """Metrics of `model` on one evaluation split (`ds.query` against `ds.gallery`)."""
    from osnas.data import transforms_from_config
    from osnas.metrics import evaluate_features, evaluate_rank

    tf = transforms_from_config(cfg.data, train=False)
    e = cfg.eval
    qf = extract_features(model, ds.query, tf, e.batch_size, cfg.data.workers, device, e.flip_test,
                          f"{name} query", ctx)
    gf = extract_features(model, ds.gallery, tf, e.batch_size, cfg.data.workers, device, e.flip_test,
                          f"{name} gallery", ctx)
    q_pids = np.array([it[1] for it in ds.query])
    q_cams = np.array([it[2] for it in ds.query])
    g_pids = np.array([it[1] for it in ds.gallery])
    g_cams = np.array([it[2] for it in ds.gallery])
    if e.rerank:
        from osnas.rerank import re_ranking_features

        # checks first that the (Q+G)^2 matrices fit in memory (one-line error otherwise)
        dm = re_ranking_features(qf, gf, metric=e.metric, k1=e.k1, k2=e.k2, lambda_value=e.lambda_value)
        r = evaluate_rank(dm, q_pids, g_pids, q_cams, g_cams, max_rank=e.max_rank,
                          single_gallery_shot=ds.single_gallery_shot)
    else:
        r = evaluate_features(qf, gf, q_pids, g_pids, q_cams, g_cams, metric=e.metric, max_rank=e.max_rank,
                              chunk_size=e.chunk_size, single_gallery_shot=ds.single_gallery_shot)
    # the examples follow the distance the metrics used (the re-ranked one with --rerank)
    examples = retrieval_examples(qf, gf, ds.query, ds.gallery, e.metric, distmat=dm if e.rerank else None)
    cmc = [float(v) for v in r["cmc"]]
    at = lambda k: cmc[min(k, len(cmc)) - 1]  # noqa: E731 (CMC clipped to the gallery size)
    return {"rank1": at(1), "rank5": at(5), "rank10": at(10), "mAP": float(r["mAP"]), "mINP": float(r["mINP"]),
            "cmc": cmc, "num_query": len(ds.query), "num_gallery": len(ds.gallery),
            "num_valid": int(r.get("num_valid", len(ds.query))), "examples": examples}


def retrieval_examples(qf, gf, query, gallery, metric: str, n_queries: int = 8, top: int = 10, seed: int = 0,
                       distmat=None) -> list:
    """Top-`top` gallery matches of a few fixed queries (for the ranked-retrieval plot), by
    `distmat` (query x gallery) when given, else by the `metric` distance of the features.

    Same-identity same-camera gallery images are removed as in the metric.
    """
    from osnas.metrics import compute_distance_matrix

    if len(query) == 0 or len(gallery) == 0:
        return []
    rng = np.random.default_rng(seed)
    qi = sorted(rng.choice(len(query), size=min(n_queries, len(query)), replace=False).tolist())
    d = np.asarray(distmat)[qi] if distmat is not None else compute_distance_matrix(qf[qi], gf, metric).cpu().numpy()
    out = []
    for row, i in zip(d, qi):
        q_path, q_pid, q_cam = query[i][:3]
        keep = [j for j in np.argsort(row, kind="stable") if not (gallery[j][1] == q_pid and gallery[j][2] == q_cam)]
        out.append({"query": q_path, "pid": int(q_pid), "camid": int(q_cam),
                    "ranked": [{"path": gallery[j][0], "pid": int(gallery[j][1]), "distance": float(row[j]),
                                "match": bool(gallery[j][1] == q_pid)} for j in keep[:top]]})
    return out


def _labels(paths: List[str], cks: List[dict]) -> List[str]:
    names = []
    for p, ck in zip(paths, cks):
        g = ck.get("genotype", {}) or {}
        base = g.get("name") or Path(p).parent.name
        names.append(base)
    if len(set(names)) < len(names):  # same genotype twice: tell them apart by run folder
        names = [f"{n} ({Path(p).parent.name})" for n, p in zip(names, paths)]
    if len(set(names)) < len(names):  # the same checkpoint twice
        names = [f"{n} #{i + 1}" for i, n in enumerate(names)]
    return names


def results_table(metrics: dict) -> str:
    """Markdown: one row per model, 'R1 / mAP / mINP' per target, in percent (mean ± std over
    the evaluation splits of the small datasets)."""
    targets = metrics["targets"]
    head = "| model | " + " | ".join(f"{t} R1 | {t} mAP | {t} mINP" for t in targets) + " |"
    sep = "|---|" + "---:|" * (3 * len(targets))
    rows = [head, sep]
    for label, m in metrics["models"].items():
        cells = []
        for t in targets:
            r = m["targets"][t]
            sd = r.get("std")
            cells += [f"{100 * r[k]:.1f}" + (f" ± {100 * sd[k]:.1f}" if sd else "") for k in ("rank1", "mAP", "mINP")]
        rows.append(f"| {label} | " + " | ".join(cells) + " |")
    return "\n".join(rows) + "\n"


def run_eval_crossdomain(checkpoints: Sequence[str], targets: str, data_root: Optional[str] = None,
                         metric: Optional[str] = None, rerank: bool = False, out: Optional[str] = None,
                         overrides: Optional[list] = None) -> dict:
    from osnas.data import parse_names

    cfg = build_config(None, overrides)
    if metric:
        cfg.eval.metric = metric
    if rerank:
        cfg.eval.rerank = True
    if cfg.eval.metric not in ("cosine", "euclidean"):
        raise OsnasError(f"metric {cfg.eval.metric!r}: expected cosine or euclidean")
    root = data_root or cfg.data.root
    tlist = parse_names(targets)
    if not tlist:
        raise OsnasError("--targets: expected at least one dataset name")
    paths = [str(c) for c in checkpoints]
    for p in paths:  # fail on a bad path before any long work
        if not Path(p).is_file():
            raise OsnasError(f"{p}: checkpoint not found")
    with dist.session(cfg.run.device) as ctx:
        device = ctx.device if ctx.distributed else resolve_device(cfg.run.device)
        out_dir = Path(out) if out else (Path(paths[0]).parent / EVAL_DIR if len(paths) == 1
                                         else Path("runs") / f"eval-{time.strftime('%Y%m%d-%H%M%S')}")
        loaded = [load_model_from_checkpoint(p) for p in paths]  # bad checkpoints fail before the output folder is touched
        if ctx.is_main:
            out_dir.mkdir(parents=True, exist_ok=True)
            setup_run_logging(out_dir)
        labels = _labels(paths, [ck for _, ck in loaded])
        metrics = {"metric": cfg.eval.metric, "rerank": cfg.eval.rerank, "targets": tlist, "models": {}}
        for label, p, (model, ck) in zip(labels, paths, loaded):
            mcfg = _model_eval_config(cfg, ck, overrides or [])
            model.to(device)
            entry = {"checkpoint": p, "genotype": (ck.get("genotype") or {}).get("name", ""), "arch": ck.get("arch"),
                     "sources": ck.get("sources", []), "in_sites": model.in_sites(),
                     "input_size": [mcfg.data.height, mcfg.data.width], "targets": {}}
            for t in tlist:
                r = evaluate_target(model, t, data_root_path(root), mcfg, device, ctx)
                entry["targets"][t] = r
                if ctx.is_main:
                    log.info(f"{label} -> {t}: R1 {100 * r['rank1']:.1f} R5 {100 * r['rank5']:.1f} "
                             f"R10 {100 * r['rank10']:.1f} mAP {100 * r['mAP']:.1f} mINP {100 * r['mINP']:.1f}"
                             + (f" (mean of {r['num_splits']} splits)" if "num_splits" in r else ""))
            metrics["models"][label] = entry

        def write():
            write_json(out_dir / METRICS, metrics)
            table = results_table(metrics)
            atomic_write_text(out_dir / RESULTS_MD, f"# Cross-domain results ({cfg.eval.metric}"
                              f"{', re-ranked' if cfg.eval.rerank else ''})\n\n{table}")
            print(table, end="")
            print(f"wrote {out_dir / METRICS} and {out_dir / RESULTS_MD}")

        dist.on_main(write, ctx)  # under DDP a failing write stops every rank with the same error
        return metrics


def _model_eval_config(cfg, ck: dict, overrides: list):
    """Evaluate at the input size and normalisation the checkpoint was trained with, unless
    --set data.height/width/mean/std says otherwise."""
    import copy

    mcfg = copy.deepcopy(cfg)
    given = {o.split("=", 1)[0].strip() for o in overrides}
    if "input_size" in ck:
        h, w = ck["input_size"]
        if "data.height" not in given:
            mcfg.data.height = int(h)
        if "data.width" not in given:
            mcfg.data.width = int(w)
    for key in ("mean", "std"):
        if key in ck and f"data.{key}" not in given:
            setattr(mcfg.data, key, list(ck[key]))
    return mcfg


def data_root_path(root) -> Path:
    return data_root(str(root) if root else "")
