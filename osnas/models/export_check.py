"""Is an exported model deployable? `osnas export --check`: ONNX Runtime vs PyTorch, and where
low precision hurts.

Instance normalisation (IN) uses per-sample statistics at inference, so unlike BN it cannot be
folded into the convolution before it, and it is where deployment breaks: TensorRT aborted in
its InstanceNormalization plugin on an OSNet-AIN ONNX model with a dynamic batch (onnx-tensorrt
issue #565, TensorRT issue #895), IN is the largest FP16 error source in TensorRT engines
(TensorRT issue #2691), and OpenVINO and OpenCV DNN have no IN operator and rewrite it. So every
genotype with IN sites has to be checked on the deployed graph, not just on PyTorch.

The check (`run_export_check`, or `check_onnx` on an existing file) does three things:

1. equality: runs the exported ONNX file in ONNX Runtime (CPU provider) at several batch
   sizes through its one dynamic-batch graph (exported at batch 2, so 1, 3, 8 really use the
   dynamic axis) and compares with the fp32 embedding of the same unfolded eval-mode PyTorch
   model on the same seeded random inputs (and the images of a target dataset when given).
   It passes when the largest relative error ||a - b|| / ||b|| of an embedding is <= tol
   (1e-4). Only this part decides pass/fail.
2. low-precision drift per normalisation site (`site_drift`): the network in fp32 except one
   IN site, whose input, affine parameters and output are rounded to bf16 or fp16 (the site
   is computed by PyTorch's kernel in that dtype); drift = the embedding's relative L2 error
   and 1 - cosine against fp32, max over the batch. PyTorch's CPU kernels do not accumulate
   the statistics of low-precision input in that dtype (an fp16 sum over a 256x128 map of
   values near 100 would overflow; theirs does not), so this is mostly the rounding of the
   site's values, a lower bound of what a kernel accumulating in fp16 adds. For contrast,
   the first BN site is done the same way, and the whole network in bf16 (CPU autocast) for
   reference.
3. with a target dataset (`retrieval_check`): rank-1 (cosine) of the fp32, bf16-autocast and
   ONNX Runtime embeddings of its query/gallery images, and the change.

The report is a dict (written as FILE.check.json next to the export) with the numbers, the
torch/onnxruntime/onnx versions and `pass`. A failed equality check is `ExportCheckFailed`,
an `OsnasError` with exit code 1 (bad input keeps exit code 2).
"""

from __future__ import annotations

import contextlib
import math
import platform
from pathlib import Path
from typing import Dict, Iterable, List, Optional, Sequence, Union

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from osnas.errors import OsnasError, first_line

DEFAULT_BATCHES = (1, 3, 8)
DEFAULT_TOL = 1e-4
LOW_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}
EXPORT_BATCH = 2  # the example batch export_onnx traces with (any other size uses the dynamic axis)
MAX_BATCH = 4096  # the dynamic axis' upper bound in export_onnx


class ExportCheckFailed(OsnasError):
    """The exported model does not reproduce PyTorch's embedding: exit code 1 (not a user error).

    `report` holds the full report dict (also written as FILE.check.json).
    """

    exit_code = 1

    def __init__(self, msg: str, report: Optional[dict] = None):
        super().__init__(msg)
        self.report = report


# ----------------------------------------------------------------------------- small helpers
def parse_batches(spec: Union[str, Iterable[int], None]) -> List[int]:
    """'1,3,8' (or a list) -> [1, 3, 8]: distinct positive batch sizes, order kept."""
    if spec is None:
        return list(DEFAULT_BATCHES)
    items = [s.strip() for s in spec.split(",")] if isinstance(spec, str) else list(spec)
    out: List[int] = []
    for s in items:
        try:
            b = int(s)
            if isinstance(s, float) and s != b:
                raise ValueError
        except (TypeError, ValueError):
            raise OsnasError(f"--check-batches: {s!r} is not a batch size; expected e.g. 1,3,8") from None
        if not 1 <= b <= MAX_BATCH:
            raise OsnasError(f"--check-batches: batch size {b} out of range; expected 1..{MAX_BATCH}")
        if b not in out:
            out.append(b)
    if not out:
        raise OsnasError("--check-batches: expected at least one batch size, e.g. 1,3,8")
    return out


def embedding_drift(y: torch.Tensor, ref: torch.Tensor) -> Dict[str, float]:
    """How far embeddings y (B, D) are from ref (B, D): max over the batch of the relative L2
    error ||y - ref|| / ||ref|| and of 1 - cos(y, ref); +inf where y is not finite.

    (An all-zero reference row, possible after the ReLU head, is measured against 1e-6 of the
    batch's largest norm rather than divided by zero.)
    """
    y, ref = y.detach().double(), ref.detach().double()
    rn = ref.norm(dim=1)  # (B,)
    floor = max(float(rn.max()) * 1e-6, 1e-30)
    rel = (y - ref).norm(dim=1) / rn.clamp(min=floor)  # (B,)
    # 1 - cos as half the squared distance of the unit vectors: the same quantity, without the
    # cancellation of 1 - cos (which leaves ~1e-16 for identical rows on some CPUs and hides drifts
    # of that size); against a zero row the cosine is 0, a drift of 1
    yn = y.norm(dim=1)  # (B,)
    off = 0.5 * ((y / yn.clamp(min=1e-30)[:, None] - ref / rn.clamp(min=1e-30)[:, None]) ** 2).sum(dim=1)  # (B,)
    off[(yn == 0) | (rn == 0)] = 1.0
    bad = ~torch.isfinite(y).all(dim=1)
    rel[bad], off[bad] = math.inf, math.inf
    return {"rel_l2": float(rel.max()), "one_minus_cos": float(off.max())}


def _finite_or_none(o):
    """The report with non-finite floats as None (strict JSON has no inf/NaN)."""
    if isinstance(o, dict):
        return {k: _finite_or_none(v) for k, v in o.items()}
    if isinstance(o, (list, tuple)):
        return [_finite_or_none(v) for v in o]
    if isinstance(o, float) and not math.isfinite(o):
        return None
    return o


def _import_ort():
    try:
        import onnxruntime as ort
    except ImportError:
        raise OsnasError("--check runs the export in ONNX Runtime, which is not installed: "
                         "pip install onnxruntime (or pip install osnas[export])") from None
    return ort


def onnx_session(path: Union[str, Path], threads: Optional[int] = None):
    """An ONNX Runtime CPU session of `path` (`threads` intra-op threads; default: torch's).

    Raises whatever ONNX Runtime raises on a file it cannot load (the check reports it as a
    failure); OsnasError when onnxruntime is missing.
    """
    ort = _import_ort()
    so = ort.SessionOptions()
    so.intra_op_num_threads = int(threads or torch.get_num_threads())
    so.inter_op_num_threads = 1
    so.log_severity_level = 3  # errors only: the exported graph's benign warnings are not news
    return ort.InferenceSession(str(path), sess_options=so, providers=["CPUExecutionProvider"])


def _ort_embed(sess, x: torch.Tensor, chunk: int) -> torch.Tensor:
    """(N, 3, H, W) -> (N, D) float32 through the session, `chunk` images per run."""
    name = sess.get_inputs()[0].name
    outs = [sess.run(None, {name: x[i:i + chunk].numpy()})[0] for i in range(0, x.shape[0], chunk)]
    return torch.from_numpy(np.concatenate(outs, 0)).float()


def _seeded_inputs(batches: Sequence[int], height: int, width: int, seed: int) -> Dict[int, torch.Tensor]:
    """One (b, 3, H, W) standard-normal batch per batch size (ImageNet-normalised images have
    about this range), all from one seeded generator."""
    g = torch.Generator().manual_seed(int(seed))
    return {b: torch.randn(b, 3, height, width, generator=g) for b in batches}


@torch.no_grad()
def _torch_embed(model: nn.Module, x: torch.Tensor, chunk: int = 32) -> torch.Tensor:
    return torch.cat([model(x[i:i + chunk]).float() for i in range(0, x.shape[0], chunk)], 0)


# ----------------------------------------------------------------------------- 1. equality
def check_onnx(model: nn.Module, onnx_path: Union[str, Path], height: int = 256, width: int = 128,
               batches: Sequence[int] = DEFAULT_BATCHES, seed: int = 0, tol: float = DEFAULT_TOL,
               images: Optional[torch.Tensor] = None, threads: Optional[int] = None,
               keep_embeddings: bool = False) -> dict:
    """Compare the ONNX file's embedding (ONNX Runtime, CPU) with `model`'s eval-mode fp32 one.

    model: the unfolded osnas OSNet the file was exported from (put in eval mode here).
    batches: batch sizes run through the one graph; images: optional real (N, 3, H, W) inputs,
    run in chunks of max(batches) (keep_embeddings: their embeddings under "_feats").
    Returns {"batches": [{batch, rel_err, abs_err, pass}], "images": {n, rel_err, pass} | None,
    "dynamic_batch", "error", "pass"}; rel_err is the largest
    per-embedding ||onnx - torch|| / ||torch||. A file ONNX Runtime cannot load or run fails
    the check with `error` set (it is not deployable as it is).
    """
    model.eval()
    batches = parse_batches(batches)
    out: dict = {"tolerance": tol, "batches": [], "images": None, "dynamic_batch": None, "error": None}
    try:
        sess = onnx_session(onnx_path, threads)
        dim0 = sess.get_inputs()[0].shape[0]
        out["dynamic_batch"] = not isinstance(dim0, int)  # a symbolic name ('batch') when dynamic
        for b, x in _seeded_inputs(batches, height, width, seed).items():
            y = _ort_embed(sess, x, b)  # (b, D): the whole batch in one run
            ref = _torch_embed(model, x)
            rel = embedding_drift(y, ref)["rel_l2"] if y.shape == ref.shape else math.inf
            abs_err = float((y - ref).abs().max()) if y.shape == ref.shape else math.inf
            out["batches"].append({"batch": b, "rel_err": rel, "abs_err": abs_err, "pass": rel <= tol})
        if images is not None and len(images):
            y = _ort_embed(sess, images, max(batches))
            ref = _torch_embed(model, images, max(batches))
            rel = embedding_drift(y, ref)["rel_l2"]
            out["images"] = {"n": int(images.shape[0]), "rel_err": rel, "pass": rel <= tol}
            if keep_embeddings:  # for the retrieval part (popped before the report is written)
                out["_feats"] = {"onnx": y, "fp32": ref}
    except OsnasError:
        raise
    except Exception as e:  # noqa: BLE001 - ONNX Runtime's own errors (load or run): a failed check
        out["error"] = f"ONNX Runtime could not run {onnx_path}: {first_line(e)}"
    rows = out["batches"] + ([out["images"]] if out["images"] else [])
    out["pass"] = out["error"] is None and bool(rows) and all(r["pass"] for r in rows)
    return out


# ----------------------------------------------------------------------------- 2. drift per site
def norm_site_module(model: nn.Module, site: str):
    """The NormSite module of `site` in an osnas OSNet ('stem' -> model.conv1.norm,
    'conv3.1.end' -> model.conv3[1].end, 'pool2' -> model.pool2.norm)."""
    from osnas.models.osnet import norm_sites, site_kind

    if site not in norm_sites():
        raise OsnasError(f"unknown normalisation site {site!r}; valid sites: {', '.join(norm_sites())}")
    kind = site_kind(site)
    if kind in ("end", "post"):
        stage, i, _ = site.split(".")
        return getattr(getattr(model, stage)[int(i)], kind)
    return getattr(model, {"stem": "conv1"}.get(site, site)).norm  # stem, pool2, pool3, conv5


class _LowPrecisionNorm(nn.Module):
    """An eval-mode IN or BN computed in `dtype`: input, parameters (and BN's running statistics)
    rounded to dtype, normalised by PyTorch's kernel in dtype, output back to the input's dtype.

    Records the input's shape (C, H, W) and largest |value| (fp16 overflows above 65504).
    """

    def __init__(self, norm: nn.Module, dtype: torch.dtype):
        super().__init__()
        self.norm, self.dtype = norm, dtype
        self.shape: Optional[list] = None
        self.max_abs = 0.0

    def forward(self, x):  # x: (B, C, H, W) fp32
        self.shape = list(x.shape[1:])
        self.max_abs = max(self.max_abs, float(x.detach().abs().max()))
        n, d = self.norm, self.dtype
        w = n.weight.to(d) if n.weight is not None else None
        b = n.bias.to(d) if n.bias is not None else None
        if isinstance(n, nn.InstanceNorm2d):
            y = F.instance_norm(x.to(d), weight=w, bias=b, eps=n.eps)
        else:  # eval-mode BatchNorm2d: the running statistics
            y = F.batch_norm(x.to(d), n.running_mean.to(d), n.running_var.to(d), w, b, False, 0.0, n.eps)
        return y.to(x.dtype)


@contextlib.contextmanager
def _site_in_low_precision(model: nn.Module, site: str, dtype: torch.dtype):
    """Within the block, `site`'s op runs as _LowPrecisionNorm (yielded); restored afterwards."""
    ns = norm_site_module(model, site)
    op = next(iter(ns.ops))
    orig = ns.ops[op]
    wrapper = _LowPrecisionNorm(orig, dtype)
    ns.ops[op] = wrapper
    try:
        yield wrapper
    finally:
        ns.ops[op] = orig


def _single_op_plan(model: nn.Module) -> Dict[str, str]:
    multi = [s for s, ops in model.plan.items() if len(ops) != 1]
    if multi or getattr(model, "nonshared", None):
        raise OsnasError(f"cannot check a supernet (sites {', '.join(multi[:3])} hold several ops): "
                         f"derive a genotype first")
    return {s: ops[0] for s, ops in model.plan.items()}


@torch.no_grad()
def site_drift(model: nn.Module, x: torch.Tensor, dtypes: Sequence[str] = ("bf16", "fp16"),
               bn_contrast: bool = True, whole_bf16: bool = True) -> dict:
    """Embedding drift when one normalisation site at a time runs in low precision.

    model: an osnas OSNet with one op per site (eval mode); x: (B, 3, H, W) inputs.
    Returns {"sites": one row per IN site in network order, "bn_contrast": the same for the
    first BN site (None without BN sites or with bn_contrast=False), "whole_bf16": the whole
    network under CPU bf16 autocast (None if off)}. A row is {"site", "op", "shape" (C, H, W
    at the site), "max_abs_input", and per dtype {"rel_l2", "one_minus_cos"}} (max over the
    batch; see embedding_drift).
    """
    from osnas.models.osnet import norm_sites

    for d in dtypes:
        if d not in LOW_DTYPES:
            raise OsnasError(f"unknown low-precision dtype {d!r}; expected {', '.join(LOW_DTYPES)}")
    plan = _single_op_plan(model)
    model.eval()
    ref = model(x).float()  # (B, D) fp32 reference

    def row(site: str) -> dict:
        r = {"site": site, "op": plan[site], "shape": None, "max_abs_input": None}
        for d in dtypes:
            with _site_in_low_precision(model, site, LOW_DTYPES[d]) as w:
                y = model(x).float()
            r["shape"], r["max_abs_input"] = w.shape, w.max_abs
            r[d] = embedding_drift(y, ref)
        return r

    order = norm_sites()
    out = {"sites": [row(s) for s in order if plan[s] == "in"], "bn_contrast": None, "whole_bf16": None}
    bn = [s for s in order if plan[s] == "bn"]
    if bn_contrast and bn:
        out["bn_contrast"] = row(bn[0])
    if whole_bf16:
        with torch.autocast("cpu", dtype=torch.bfloat16):
            y = model(x).float()
        out["whole_bf16"] = embedding_drift(y, ref)
    return out


# ----------------------------------------------------------------------------- 3. retrieval
def rank1_cosine(qf: torch.Tensor, gf: torch.Tensor, q_pids, g_pids, q_cams, g_cams) -> float:
    """Rank-1 (fraction) by cosine distance, the Market-1501 protocol: gallery items with the
    query's identity and camera are removed, a query without a remaining match is skipped,
    ties go to the lower gallery index (the rule of osnas.metrics, which this layer may not
    import; tests compare the two)."""
    q = F.normalize(qf.double(), dim=1)
    g = F.normalize(gf.double(), dim=1)
    d = (1 - q @ g.T).numpy()  # (Q, G)
    qp, gp = np.asarray(q_pids)[:, None], np.asarray(g_pids)[None, :]
    removed = (qp == gp) & (np.asarray(q_cams)[:, None] == np.asarray(g_cams)[None, :])
    d[removed] = np.inf
    match = (qp == gp) & ~removed
    valid = match.any(1)
    if not valid.any():
        raise OsnasError("retrieval check: no query has a match in the gallery (other camera)")
    top = np.argmin(d, axis=1)  # first index of the minimum: stable tie order
    return float(match[np.arange(len(top)), top][valid].mean())


def dataset_images(ds, height: int, width: int):
    """(x (Q+G, 3, H, W) query then gallery images, pids, cams, Q) of a ReidDataset, loaded as
    `osnas extract` does (resized, ImageNet-normalised)."""
    from osnas.models.deploy import load_image

    if not ds.query or not ds.gallery:
        raise OsnasError(f"{ds.name}: no query or gallery images to check retrieval on")
    items = list(ds.query) + list(ds.gallery)
    x = torch.stack([load_image(Path(it[0]), height, width) for it in items])
    return x, np.array([it[1] for it in items]), np.array([it[2] for it in items]), len(ds.query)


def retrieval_check(model: nn.Module, ds, height: int, width: int, session=None, batch_size: int = 32,
                    feats: Optional[Dict[str, torch.Tensor]] = None, loaded=None) -> dict:
    """Rank-1 of `ds` (a ReidDataset: its query vs gallery) with the fp32 model, the whole
    model under bf16 CPU autocast and, given an ONNX Runtime `session`, the exported graph.

    feats: embeddings already computed ({"fp32"/"onnx": (Q+G, D)}, query then gallery);
    loaded: dataset_images(ds, ...) already called. Returns {"target", "num_query",
    "num_gallery", "fp32", "bf16", "bf16_change", "onnx", "onnx_change" (rank-1 fractions and
    their differences), "bf16_drift" (embedding_drift of bf16 against fp32)}.
    """
    x, pids, cams, nq = loaded if loaded is not None else dataset_images(ds, height, width)
    model.eval()
    feats = dict(feats or {})
    if "fp32" not in feats:
        feats["fp32"] = _torch_embed(model, x, batch_size)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        feats["bf16"] = _torch_embed(model, x, batch_size)
    if session is not None and "onnx" not in feats:
        feats["onnx"] = _ort_embed(session, x, batch_size)
    r1 = {k: rank1_cosine(f[:nq], f[nq:], pids[:nq], pids[nq:], cams[:nq], cams[nq:]) for k, f in feats.items()}
    return {"target": ds.name, "num_query": nq, "num_gallery": len(pids) - nq, "fp32": r1["fp32"],
            "bf16": r1["bf16"], "bf16_change": r1["bf16"] - r1["fp32"], "onnx": r1.get("onnx"),
            "onnx_change": r1["onnx"] - r1["fp32"] if "onnx" in r1 else None,
            "bf16_drift": embedding_drift(feats["bf16"], feats["fp32"])}


# ----------------------------------------------------------------------------- report
def _fmt(v: Optional[float], spec: str = ".1e") -> str:
    if v is None:
        return "-"
    return "inf" if not math.isfinite(v) else format(v, spec)


def format_report(r: dict) -> str:
    """The compact text table of a check report (what `osnas export --check` prints)."""
    eq = r["equality"]
    v = r["versions"]
    lines = [f"export check: {r['onnx']}  (ONNX Runtime {v['onnxruntime']} CPU vs torch {v['torch']} fp32, "
             f"input (B, 3, {r['input'][0]}, {r['input'][1]}), weights: {r['weights']})",
             f"ONNX Runtime vs PyTorch (max rel err per embedding; tol {eq['tolerance']:.0e}; "
             f"batch axis {'dynamic' if eq['dynamic_batch'] else 'FIXED' if eq['dynamic_batch'] is False else '?'}, "
             f"exported at batch {EXPORT_BATCH})",
             f"  {'inputs':<20} {'rel err':>9} {'abs err':>9}"]
    for b in eq["batches"]:
        lines.append(f"  {'batch ' + str(b['batch']) + ' (random)':<20} {_fmt(b['rel_err']):>9} "
                     f"{_fmt(b['abs_err']):>9}  {'ok' if b['pass'] else 'FAIL'}")
    if eq["images"]:
        im = eq["images"]
        lines.append(f"  {str(im['n']) + ' images':<20} {_fmt(im['rel_err']):>9} {'':>9}  "
                     f"{'ok' if im['pass'] else 'FAIL'}")
    if eq["error"]:
        lines.append(f"  {eq['error']}")
    d = r["drift"]
    ds = d["dtypes"]
    lines.append(f"low-precision drift of the embedding, one site at a time (max over {d['n_inputs']} inputs; "
                 f"rel L2 | 1-cos)")
    head = f"  {'site':<13} {'op':<3} {'C x H x W':<12} {'max|x|':>7}"
    for dt in ds:
        head += f" {dt + ' relL2':>11} {dt + ' 1-cos':>11}"
    lines.append(head)

    def site_line(s: dict, note: str = "") -> str:
        shape = "x".join(str(n) for n in s["shape"]) if s["shape"] else "-"
        t = f"  {s['site']:<13} {s['op']:<3} {shape:<12} {_fmt(s['max_abs_input'], '.3g'):>7}"
        for dt in ds:
            t += f" {_fmt(s[dt]['rel_l2']):>11} {_fmt(s[dt]['one_minus_cos']):>11}"
        return t + note

    if not d["sites"]:
        lines.append("  (no IN site)")
    lines += [site_line(s) for s in d["sites"]]
    if d["bn_contrast"]:
        lines.append(site_line(d["bn_contrast"], "  (BN, for contrast)"))
    if d["whole_bf16"]:
        w = d["whole_bf16"]
        lines.append(f"  {'whole net':<13} {'':<3} {'bf16 autocast':<12} {'':>7} {_fmt(w['rel_l2']):>11} "
                     f"{_fmt(w['one_minus_cos']):>11}")
    rk = r.get("retrieval")
    if rk:
        s = (f"rank-1 on {rk['target']} ({rk['num_query']} query, {rk['num_gallery']} gallery): "
             f"fp32 {100 * rk['fp32']:.2f}, bf16 {100 * rk['bf16']:.2f} ({100 * rk['bf16_change']:+.2f} points)")
        if rk.get("onnx") is not None:
            s += f", ONNX Runtime {100 * rk['onnx']:.2f} ({100 * rk['onnx_change']:+.2f})"
        lines.append(s)
    lines.append(("PASS: " if r["pass"] else "FAIL: ") + r["message"])
    return "\n".join(lines)


def _versions() -> dict:
    v = {"torch": torch.__version__, "python": platform.python_version(), "onnxruntime": None, "onnx": None}
    with contextlib.suppress(ImportError):
        import onnxruntime

        v["onnxruntime"] = onnxruntime.__version__
    with contextlib.suppress(ImportError):
        import onnx

        v["onnx"] = onnx.__version__
    return v


def _message(eq: dict, batches: Sequence[int], report_path: Path) -> str:
    if eq["error"]:
        return f"{eq['error']} (report: {report_path})"
    bad = [(b["rel_err"], f"batch {b['batch']}") for b in eq["batches"] if not b["pass"]]
    if eq["images"] and not eq["images"]["pass"]:
        bad.append((eq["images"]["rel_err"], f"the {eq['images']['n']} dataset images"))
    if bad:
        err, where = max(bad)
        return (f"ONNX Runtime output differs from PyTorch: max rel err {_fmt(err)} > "
                f"{eq['tolerance']:.0e} at {where} (report: {report_path})")
    return (f"ONNX Runtime matches PyTorch within {eq['tolerance']:.0e} at batches "
            f"{', '.join(map(str, batches))}{' and on the images' if eq['images'] else ''}; "
            f"report {report_path}")


def check_report(model: nn.Module, onnx_path: Union[str, Path], height: int = 256, width: int = 128,
                 batches: Sequence[int] = DEFAULT_BATCHES, seed: int = 0, tol: float = DEFAULT_TOL,
                 dataset=None, label: str = "", weights: str = "") -> dict:
    """The full report of an existing ONNX file exported from `model` (not written, not printed).

    dataset: an optional ReidDataset for the retrieval part (its images also join the
    equality check). label/weights: how the model was named and where its weights came from.
    """
    from osnas.models.osnet import OSNet

    if not isinstance(model, OSNet):
        raise OsnasError(f"expected an osnas OSNet, got {type(model).__name__}")
    _single_op_plan(model)
    batches = parse_batches(batches)
    _import_ort()
    model.eval()
    onnx_path = Path(onnx_path)
    report_path = onnx_path.with_name(onnx_path.name + ".check.json")
    loaded = dataset_images(dataset, height, width) if dataset is not None else None
    eq = check_onnx(model, onnx_path, height, width, batches, seed, tol,
                    images=loaded[0] if loaded else None, keep_embeddings=True)
    feats = eq.pop("_feats", None)  # fp32 and ONNX embeddings of the dataset images (None if ORT failed)
    retrieval = None
    if loaded:
        retrieval = retrieval_check(model, dataset, height, width, batch_size=max(batches), loaded=loaded,
                                    feats=feats)
    x = _seeded_inputs([max(batches)], height, width, seed)[max(batches)]  # (B, 3, H, W), B = the largest batch size
    drift = site_drift(model, x)
    drift.update(n_inputs=int(x.shape[0]), dtypes=list(LOW_DTYPES),
                 how="one site's input, affine parameters and output rounded to the dtype, normalised by "
                     "PyTorch's CPU kernel for that dtype (statistics not accumulated in it); all else fp32")
    report = {"onnx": str(onnx_path), "report": str(report_path), "model": label, "weights": weights or "random",
              "input": [int(height), int(width)], "seed": int(seed), "versions": _versions(),
              "provider": "CPUExecutionProvider", "in_sites": model.in_sites(), "equality": eq, "drift": drift,
              "retrieval": retrieval, "pass": bool(eq["pass"])}
    report["message"] = _message(eq, batches, report_path)
    return report


def run_export_check(checkpoint=None, model=None, weights=None, fmt: str = "onnx", out=None, height: int = 256,
                     width: int = 128, batches: Union[str, Sequence[int], None] = None, data_root=None,
                     target: Optional[str] = None, tol: float = DEFAULT_TOL, seed: int = 0,
                     strict: bool = True) -> dict:
    """`osnas export --check`: export to ONNX, check the file, print the table, write
    OUT.check.json; returns the report dict.

    strict (the CLI): a failed equality check raises ExportCheckFailed (exit code 1) after the
    report is written; strict=False returns the failing report. Bad arguments raise OsnasError
    before anything is exported.
    """
    from osnas.models.deploy import _check_model_args, _check_size, _model_from_args, export_onnx
    from osnas.utils import write_json

    if fmt != "onnx":
        raise OsnasError(f"--check runs the export in ONNX Runtime: it needs --format onnx, not {fmt!r}")
    _check_size(height, width)
    if not out:
        raise OsnasError("expected --out FILE")
    _check_model_args(checkpoint, model, weights)
    batches = parse_batches(batches)
    if data_root and not target:
        raise OsnasError("--data-root goes with --check-target DATASET (the dataset to compare rank-1 on)")
    _import_ort()
    ds = None
    if target:
        from osnas.data import build_dataset

        ds = build_dataset(target, root=data_root)
    net = _model_from_args(checkpoint, model, weights)
    path = export_onnx(net, out, height, width)
    print(f"wrote {path} (onnx, input (B, 3, {height}, {width}) ImageNet-normalised, "
          f"output (B, {net.feature_dim}) embedding)")
    report = check_report(net, path, height, width, batches, seed, tol, dataset=ds,
                          label=str(checkpoint or model), weights=str(checkpoint or weights or ""))
    write_json(report["report"], _finite_or_none(report))
    print(format_report(report))
    if strict and not report["pass"]:
        raise ExportCheckFailed(report["message"], report)
    return report
