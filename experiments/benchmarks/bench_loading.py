"""Loading throughput: JPEG decode + train augmentation at 256x128, images/s, by worker count.

    python experiments/benchmarks/bench_loading.py [--images 768] [--workers 0,1,2] [--json]

Images are the built-in synthetic ones (128x64 JPEG, like Market-1501 crops), written to a
temporary folder. Each setting runs `--epochs` passes through a persistent-worker
DataLoader; the first batch (worker start-up) is timed separately from the steady rate.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
import time
from pathlib import Path


def make_images(folder: Path, n: int) -> list:
    from osnas.data.synth import SynthParams, plan_domain, render_domain

    params = SynthParams(train_ids=n // 8 + 1, test_ids=1, min_images=8, max_images=12, distractors=0, junk=0)
    plan = plan_domain(0, params)
    plan["files"] = [f for f in plan["files"] if f[0] == "bounding_box_train"][:n]
    items = []
    for split, name, data in render_domain(plan, params):
        p = folder / name
        p.write_bytes(data)
        pid = int(name.split("_")[0])
        items.append((str(p), pid, 0, 0))
    return items


def bench(items, workers: int, batch_size: int, epochs: int, height: int, width: int) -> dict:
    from osnas.data import ImageDataset, RandomBatchSampler, build_loader, build_transforms

    tf = build_transforms(height, width, train=True, flip=True, pad_crop=True, pad=10, color_jitter=True,
                          brightness=0.2, contrast=0.15)
    sampler = RandomBatchSampler(len(items), batch_size, seed=0)
    loader = build_loader(ImageDataset(items, tf), batch_sampler=sampler, workers=workers, seed=0, pin_memory=False)
    t0 = time.perf_counter()
    n, first, t_first = 0, None, None
    for ep in range(epochs):
        sampler.set_epoch(ep)
        for batch in loader:
            if t_first is None:
                t_first = time.perf_counter()
                first = t_first - t0
                continue
            n += batch[0].shape[0]
    el = time.perf_counter() - t_first
    del loader
    return {"workers": workers, "images": n, "seconds": round(el, 3), "images_per_s": round(n / el, 1),
            "first_batch_s": round(first, 3)}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=768)
    ap.add_argument("--workers", default="0,1,2")
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--height", type=int, default=256)
    ap.add_argument("--width", type=int, default=128)
    ap.add_argument("--threads", type=int, default=1, help="torch threads in the main process")
    ap.add_argument("--json", nargs="?", const="", default=None,
                    help="write results as JSON (default: bench_loading.json next to this script)")
    a = ap.parse_args(argv)

    import torch

    torch.set_num_threads(a.threads)
    with tempfile.TemporaryDirectory() as tmp:
        t = time.perf_counter()
        items = make_images(Path(tmp), a.images)
        print(f"generated {len(items)} images in {time.perf_counter() - t:.1f}s", file=sys.stderr)
        rows = [bench(items, int(w), a.batch_size, a.epochs, a.height, a.width) for w in a.workers.split(",")]
    print(f"loading throughput: decode + train augment to {a.height}x{a.width}, batch {a.batch_size}, "
          f"{os.cpu_count()} CPUs")
    print(f"{'workers':>7} {'images/s':>9} {'first batch s':>14}")
    for r in rows:
        print(f"{r['workers']:>7} {r['images_per_s']:>9.1f} {r['first_batch_s']:>14.2f}")
    if a.json is not None:
        from osnas.utils import write_json

        out = Path(a.json) if a.json else Path(__file__).with_suffix(".json")
        write_json(out, {"config": vars(a), "machine": {"cpus": os.cpu_count(), "python": platform.python_version(),
                                                        "torch": torch.__version__}, "results": rows})
        print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
