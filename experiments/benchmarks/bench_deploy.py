"""Deployment latency on this CPU: what instance normalisation costs once BN is folded away.

    python experiments/benchmarks/bench_deploy.py                       # OSNet, OSNet-IBN, OSNet-AIN x1.0
    python experiments/benchmarks/bench_deploy.py --genotype runs/s1/genotype.yaml --repeats 5
    python experiments/benchmarks/bench_deploy.py --json experiments/benchmarks/bench_deploy.json

For each model (x1.0, 256x128 by default; genotype files are built at --arch) and batch size
(1 and 8) it times three paths to the same embedding:
  eager    the unfolded osnas OSNet in eval mode (`model(x)` under inference_mode)
  folded   `fold_bn(model)`: every BN folded into its convolution, IN kept (eager PyTorch)
  onnxrt   the `osnas export` ONNX file in ONNX Runtime (CPU provider, same thread count)
IN uses per-sample statistics and cannot be folded, so a network with IN sites keeps
normalisation passes the all-BN network no longer has; the ratios against plain OSNet folded
show that cost per path.

Timing: every measurement of a path is paired with one of the reference (OSNet x1.0 folded,
same batch), taken right before or right after it (the order alternates), so load from other
processes hits both alike; a cell's ratio is the median of its paired ratios, its latency the
median of its timings. The reference's own ratio is 1 by definition. Correctness: the
relative error of each path's embedding against the eager one (max over the batch).
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
import time
from pathlib import Path
from statistics import median

import torch

REF = ("osnet_x1_0", "folded")  # the reference cell: plain OSNet with BN folded
VARIANTS = ("eager", "folded", "onnxrt")


def parse():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default="osnet_x1_0,osnet_ibn_x1_0,osnet_ain_x1_0", help="comma list of model names")
    ap.add_argument("--genotype", action="append", default=[], help="genotype file (repeatable), built at --arch")
    ap.add_argument("--arch", default="osnet_x1_0", help="width of the --genotype models")
    ap.add_argument("--batches", default="1,8")
    ap.add_argument("--height", type=int, default=256)
    ap.add_argument("--width", type=int, default=128)
    ap.add_argument("--threads", type=int, default=2, help="torch and ONNX Runtime intra-op threads")
    ap.add_argument("--repeats", type=int, default=10, help="paired timings per cell and batch")
    ap.add_argument("--warmup", type=int, default=2, help="untimed runs per cell and batch")
    ap.add_argument("--json", default=None, help="write the results to this JSON file")
    return ap.parse_args()


def build_models(args) -> dict:
    """label -> eval-mode osnas OSNet (seeded random weights: latency does not depend on them)."""
    from osnas.models import build_model

    specs = [(n, n, "") for n in args.models.split(",") if n]
    specs += [(Path(g).stem, g, args.arch) for g in args.genotype]
    if REF[0] not in [s[0] for s in specs]:
        specs.insert(0, (REF[0], REF[0], ""))
    out = {}
    for label, src, arch in specs:
        torch.manual_seed(0)
        out[label] = build_model(src, num_classes=0, arch=arch).eval()
    return out


def build_paths(models: dict, args, tmp: Path) -> dict:
    """(label, variant) -> callable x -> embedding."""
    from osnas.models.deploy import export_onnx, fold_bn
    from osnas.models.export_check import onnx_session

    def infer(m):
        def run(x):
            with torch.inference_mode():
                return m(x)
        return run

    def ort(sess):
        name = sess.get_inputs()[0].name
        return lambda x: torch.from_numpy(sess.run(None, {name: x.numpy()})[0])

    paths = {}
    for label, m in models.items():
        t = time.time()
        p = export_onnx(m, tmp / f"{label}.onnx", args.height, args.width)
        paths[(label, "eager")] = infer(m)
        paths[(label, "folded")] = infer(fold_bn(m))
        paths[(label, "onnxrt")] = ort(onnx_session(p, threads=args.threads))
        print(f"  built {label} ({len(m.in_sites())} IN sites) in {time.time() - t:.1f}s", file=sys.stderr, flush=True)
    return paths


def _time(f, x) -> float:
    t = time.perf_counter()
    f(x)
    return time.perf_counter() - t


def measure(paths: dict, models: dict, args) -> list:
    from osnas.models.export_check import embedding_drift

    batches = [int(b) for b in args.batches.split(",") if b]
    rows = []
    for b in batches:
        x = torch.randn(b, 3, args.height, args.width, generator=torch.Generator().manual_seed(b))
        err = {}
        for (label, v), f in paths.items():  # warm-up (ORT and oneDNN pick their kernels), correctness
            for _ in range(max(args.warmup, 1)):
                y = f(x)
            err[(label, v)] = embedding_drift(y, paths[(label, "eager")](x))["rel_l2"]
        cells = [k for k in paths if k != REF]
        times = {k: [] for k in paths}
        ratios = {k: [] for k in cells}
        for r in range(args.repeats):
            for i, k in enumerate(cells):  # pair by pair: the reference right before or right after
                if (r + i) % 2 == 0:
                    t_ref, t = _time(paths[REF], x), _time(paths[k], x)
                else:
                    t, t_ref = _time(paths[k], x), _time(paths[REF], x)
                times[k].append(t)
                times[REF].append(t_ref)
                ratios[k].append(t / t_ref)
            print(f"  batch {b}: repeat {r + 1}/{args.repeats}, reference {1000 * times[REF][-1]:.0f} ms",
                  file=sys.stderr, flush=True)
        for (label, v) in paths:
            med = median(times[(label, v)])
            rows.append({"model": label, "in_sites": len(models[label].in_sites()), "variant": v, "batch": b,
                         "median_ms": 1000 * med, "ms_per_image": 1000 * med / b,
                         "ratio_vs_osnet_folded": 1.0 if (label, v) == REF else median(ratios[(label, v)]),
                         "timings": len(times[(label, v)]), "rel_err_vs_eager": err[(label, v)]})
    return rows


def table(rows: list, batches: list) -> str:
    """Markdown: one row per model and path, median ms and the ratio to OSNet folded per batch."""
    head = "| model | IN sites | path | " + " | ".join(f"batch {b}: ms | x OSNet folded" for b in batches) \
           + " | rel err vs eager |"
    lines = [head, "|---|---:|---|" + "---:|---:|" * len(batches) + "---:|"]
    seen = []
    for r in rows:
        if (r["model"], r["variant"]) not in seen:
            seen.append((r["model"], r["variant"]))
    for m, v in seen:
        cells = {r["batch"]: r for r in rows if r["model"] == m and r["variant"] == v}
        first = cells[batches[0]]
        txt = " | ".join(f"{cells[b]['median_ms']:.1f} | {cells[b]['ratio_vs_osnet_folded']:.2f}" for b in batches)
        err = max(c["rel_err_vs_eager"] for c in cells.values())
        lines.append(f"| {m} | {first['in_sites']} | {v} | {txt} | {err:.1e} |")
    return "\n".join(lines)


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def main():
    args = parse()
    torch.set_num_threads(args.threads)
    import onnxruntime

    from osnas.utils import write_json

    load0 = os.getloadavg()
    models = build_models(args)
    with tempfile.TemporaryDirectory() as tmp:
        paths = build_paths(models, args, Path(tmp))
        rows = measure(paths, models, args)
    load1 = os.getloadavg()
    batches = [int(b) for b in args.batches.split(",") if b]
    print(f"\n{args.height}x{args.width}, {args.threads} threads, {args.repeats} paired timings per cell "
          f"(medians), {_cpu_name()}, {os.cpu_count()} CPUs, load average {load0[0]:.2f} -> {load1[0]:.2f}; "
          f"torch {torch.__version__}, onnxruntime {onnxruntime.__version__}\n")
    print(table(rows, batches))
    if args.json:
        out = {"what": __doc__.splitlines()[0], "size": [args.height, args.width], "threads": args.threads,
               "repeats": args.repeats, "reference": "osnet_x1_0 folded (same batch, paired timings)",
               "cpu": _cpu_name(), "cpus": os.cpu_count(), "load_average": [load0[0], load1[0]],
               "versions": {"torch": torch.__version__, "onnxruntime": onnxruntime.__version__},
               "command": " ".join(sys.argv), "results": rows}
        write_json(args.json, out)  # atomic: a killed run leaves no half-written file
        print(f"\nwrote {args.json}")


if __name__ == "__main__":
    main()
