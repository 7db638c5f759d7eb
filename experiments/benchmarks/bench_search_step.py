"""Cost of one search step: weight-sharing supernet vs a plain OSNet step, same run.

One weight step (forward + backward + SGD) of the `osnet_ain_blocks` supernet at x1.0,
batch 16, 256x128, against a plain OSNet x1.0 step; the non-shared supernet (the
reference: a whole block per candidate) for comparison; and the alpha step's cost for
first and second order, and the single-path weight step (`search.weight_step=sampled`: one
candidate per position drawn from the alphas). Configurations are measured round-robin (best of N each) so load
from other processes hits them alike. Targets: shared supernet weight step <= 1.2x plain;
a whole search step (weight step + alpha step, the alpha step amortised over
`search.alpha_every` weight steps) <= 1.5x plain.

    python experiments/benchmarks/bench_search_step.py [--arch osnet_x1_0] [--batch 16] [--repeats 5] [--json F]
"""

import argparse
import json
import time

import torch
import torch.nn.functional as F

from osnas.models import build_model, build_supernet
from osnas.search.architect import Architect


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--arch", default="osnet_x1_0")
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--height", type=int, default=256)
    ap.add_argument("--width", type=int, default=128)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--json", default=None)
    a = ap.parse_args()
    if a.threads:
        torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    classes = 100
    x = torch.randn(a.batch, 3, a.height, a.width)
    y = torch.randint(0, classes, (a.batch,))
    batch = (x, y)

    def loss_fn(m, b):
        logits, _ = m(b[0])
        return F.cross_entropy(logits, b[1])

    models = {
        "plain OSNet": build_model(a.arch, num_classes=classes),
        # same fixed stem IN as the space, and IN in four blocks: what IN itself costs
        "OSNet-AIN (derived net)": build_model(a.arch.replace("osnet_", "osnet_ain_"), num_classes=classes),
        "supernet (shared)": build_supernet("osnet_ain_blocks", arch=a.arch, num_classes=classes),
        "supernet (non-shared, reference)": build_supernet("osnet_ain_blocks", arch=a.arch, num_classes=classes,
                                                           shared=False),
    }
    steps = {}
    for name, m in models.items():
        m.train()
        opt = torch.optim.SGD(m.weight_parameters() if hasattr(m, "arch_parameters") else m.parameters(), lr=0.01,
                              momentum=0.9)

        def wstep(m=m, opt=opt):
            opt.zero_grad()
            loss_fn(m, batch).backward()
            opt.step()

        steps[f"weight step: {name}"] = wstep
    sn = models["supernet (shared)"]
    s_opt = torch.optim.SGD(sn.weight_parameters(), lr=0.01, momentum=0.9)
    gen = torch.Generator().manual_seed(0)

    def sampled_step():  # a new path every step, as the search draws them
        s_opt.zero_grad()
        path = sn.sample_path(gen)
        logits, _ = sn(x, path=path)
        F.cross_entropy(logits, y).backward()
        s_opt.step()

    steps["weight step: supernet (sampled path)"] = sampled_step
    w_opt = torch.optim.SGD(sn.weight_parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4)
    for order in ("first", "second"):
        arch = Architect(sn, loss_fn, torch.optim.Adam(sn.arch_parameters(), lr=3e-3), order=order, w_optimizer=w_opt)
        steps[f"alpha step: {order}-order"] = lambda arch=arch: arch.step(batch, batch)
    best = {k: float("inf") for k in steps}
    for fn in steps.values():  # warm-up
        fn()
    for _ in range(a.repeats):
        for k, fn in steps.items():
            t0 = time.perf_counter()
            fn()
            best[k] = min(best[k], time.perf_counter() - t0)
    base = best["weight step: plain OSNet"]
    for order in ("first", "second"):  # a whole search step, from the parts measured above
        for every in (1, 2, 3):
            best[f"search step: {order}-order, alpha_every={every}"] = (
                best["weight step: supernet (shared)"] + best[f"alpha step: {order}-order"] / every)
    for every in (1, 2, 3):
        best[f"search step: sampled path, first-order, alpha_every={every}"] = (
            best["weight step: supernet (sampled path)"] + best["alpha step: first-order"] / every)
    print(f"{a.arch}, batch {a.batch}, {a.height}x{a.width}, {torch.get_num_threads()} threads, best of {a.repeats}")
    print(f"{'step':<48} {'seconds':>8} {'x plain':>8}")
    for k, v in best.items():
        print(f"{k:<48} {v:8.3f} {v / base:8.2f}")
    if a.json:
        with open(a.json, "w") as f:
            json.dump({"config": vars(a), "seconds": best, "ratio_to_plain": {k: v / base for k, v in best.items()}},
                      f, indent=2)


if __name__ == "__main__":
    main()
