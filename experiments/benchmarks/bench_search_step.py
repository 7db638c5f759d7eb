"""Cost of one search step: weight-sharing supernet vs a plain OSNet step, same run.

One weight step (forward + backward + SGD) of the supernet over `--space` at x1.0, batch 16,
256x128, against a plain OSNet x1.0 step; the non-shared supernet (the reference: a whole
block per candidate) for comparison; the alpha step for first and second order; and the
single-path weight step (`search.weight_step=sampled` or `uniform`: one candidate per
position). The space defaults to `osnet_stem_blocks`, the one the protocol searches (the stem
searched too); `--space osnet_ain_blocks` is the reference space (stem fixed to IN).

Every configuration is timed once per round, in a new random order each round, so load from
other processes and what ran just before (memory reuse) bias no row; a new single path is
drawn each round (its cost depends on where IN lands). Each row reports the best time over
the rounds and, the headline, the median over rounds of its ratio to the plain step of the
same round, with twice the standard error of that median (1.2533 sigma / sqrt(rounds), sigma =
IQR / 1.349). A whole search step is the weight step plus the alpha step amortised over
`search.alpha_every` weight steps, summed within each round: the mixed rows with the
identity-loss alpha step (leave-one-domain-out), the sampled rows with the triplet one (the
default's sampled-unseen half). Targets: shared supernet weight step <= 1.2x plain; a whole
search step <= 1.5x plain.

    python experiments/benchmarks/bench_search_step.py [--space osnet_stem_blocks] [--rounds 20] [--json F]
"""

import argparse
import json
import random
import statistics
import time

import torch

from osnas.models import build_model, build_supernet
from osnas.models.latency import median_se
from osnas.search.architect import Architect
from osnas.search.bilevel import make_loss_fn

EVERY = (1, 2, 3, 4)  # alpha_every values the whole-step rows amortise over


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--space", default="osnet_stem_blocks")
    ap.add_argument("--arch", default="osnet_x1_0")
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--height", type=int, default=256)
    ap.add_argument("--width", type=int, default=128)
    ap.add_argument("--rounds", "--repeats", dest="rounds", type=int, default=20)
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--json", default=None)
    a = ap.parse_args()
    if a.threads:
        torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    classes, k = 100, 4
    x = torch.randn(a.batch, 3, a.height, a.width)
    y = torch.arange(a.batch) // k  # P identities x K images: what the triplet alpha loss needs
    batch = (x, y)
    w_loss = make_loss_fn("id", 0.1, 0.3)  # the weight step's loss, as the search uses it
    a_loss = make_loss_fn("triplet", 0.1, 0.3)  # the default's alpha loss (objective unseen)

    models = {
        "plain OSNet": build_model(a.arch, num_classes=classes),
        # the fixed stem IN and four IN blocks: what IN itself costs
        "OSNet-AIN (derived net)": build_model(a.arch.replace("osnet_", "osnet_ain_"), num_classes=classes),
        "supernet (shared)": build_supernet(a.space, arch=a.arch, num_classes=classes),
        "supernet (non-shared, reference)": build_supernet(a.space, arch=a.arch, num_classes=classes, shared=False),
    }
    steps = {}
    for name, m in models.items():
        m.train()
        opt = torch.optim.SGD(m.weight_parameters() if hasattr(m, "arch_parameters") else m.parameters(), lr=0.01,
                              momentum=0.9)

        def wstep(m=m, opt=opt):
            opt.zero_grad()
            w_loss(m, batch).backward()
            opt.step()

        steps[f"weight step: {name}"] = wstep
    sn = models["supernet (shared)"]
    s_opt = torch.optim.SGD(sn.weight_parameters(), lr=0.01, momentum=0.9)
    gen = torch.Generator().manual_seed(0)

    def sampled_step():  # a new path every round, as the search draws one every step
        s_opt.zero_grad()
        w_loss(sn, batch, sn.sample_path(gen)).backward()
        s_opt.step()

    steps["weight step: supernet (sampled path)"] = sampled_step
    w_opt = torch.optim.SGD(sn.weight_parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4)
    for order in ("first", "second"):
        arch = Architect(sn, a_loss, torch.optim.Adam(sn.arch_parameters(), lr=3e-3), order=order, w_optimizer=w_opt)
        steps[f"alpha step: {order}-order"] = lambda arch=arch: arch.step(batch, batch)

    # the leave-one-domain-out searches judge alphas by the identity loss: their first-order step
    lodo = Architect(sn, w_loss, torch.optim.Adam(sn.arch_parameters(), lr=3e-3), order="first")
    steps["alpha step: first-order, id loss (lodo)"] = lambda: lodo.step(batch, batch)
    times = {key: [] for key in steps}
    for fn in steps.values():  # warm-up
        fn()
    order = random.Random(0)
    for _ in range(a.rounds):
        keys = list(steps)
        order.shuffle(keys)  # a new order each round: what runs after what (memory reuse) biases no row
        for key in keys:
            fn = steps[key]
            t0 = time.perf_counter()
            fn()
            times[key].append(time.perf_counter() - t0)
    # whole search steps, per round from the parts timed in that round
    for name, alpha in (("first", "alpha step: first-order, id loss (lodo)"), ("second", "alpha step: second-order")):
        for every in EVERY:
            times[f"search step: {name}-order, alpha_every={every}"] = [
                w + al / every for w, al in zip(times["weight step: supernet (shared)"], times[alpha])]
    for every in EVERY:
        times[f"search step: sampled path, first-order, alpha_every={every}"] = [
            w + al / every for w, al in zip(times["weight step: supernet (sampled path)"],
                                            times["alpha step: first-order"])]
    base = times["weight step: plain OSNet"]
    ratios = {key: [t / b for t, b in zip(ts, base)] for key, ts in times.items()}
    median = {key: statistics.median(r) for key, r in ratios.items()}
    band = {key: 2 * _se_median(r) for key, r in ratios.items()}
    best = {key: min(ts) for key, ts in times.items()}
    print(f"{a.space}, {a.arch}, batch {a.batch}, {a.height}x{a.width}, {torch.get_num_threads()} threads, "
          f"{a.rounds} rounds")
    print(f"{'step':<66} {'best s':>7} {'x plain (median ± 2 se)':>24}")
    for key in times:
        print(f"{key:<66} {best[key]:7.3f} {median[key]:15.3f} ± {band[key]:.3f}")
    if a.json:
        with open(a.json, "w") as f:
            json.dump({"config": vars(a), "seconds_best": best, "ratio_median": median, "ratio_2se": band,
                       "ratios_per_round": ratios}, f, indent=2)


def _se_median(values: list) -> float:
    """Standard error of the median of `values` (nan under 4 rounds: no quartiles to speak of)."""
    if len(values) < 4:
        return float("nan")
    q = statistics.quantiles(values, n=4)
    return median_se(q[2] - q[0], len(values))


if __name__ == "__main__":
    main()
