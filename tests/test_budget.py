"""The deployment budget in the search and in derive (osnas/search/budget.py).

A hand-made cost table checks the arithmetic (expected cost, the loss factor, the greedy
repair); tiny searches through the CLI check that a budget is recorded, lowers the expected
cost the alphas end at, and that derive never exceeds a hard budget and records the cost; a
budget no architecture meets is refused before anything is written.

The two tiny sources have 4 identities each, too few to keep some out (the default objective
for two sources, `identities`): the searches here hold the sources out in turn (lodo), one
supernet each, an alpha step at every step after warm-up with the identity alpha loss (what the
cost factor below was calibrated on: the budget multiplies the alpha loss, and a batch-hard
triplet loss of 0 on an easy batch takes the budget's pull with it; with the default triplet
loss the tight run ended dearer than the free one in 3 of 8 sessions, with `id` in 0 of 10)."""

import json

import pytest
import torch
import yaml

from _reid_gen import two_tiny_sources
from osnas.cli import main
from osnas.errors import OsnasError
from osnas.models.cost import expected_relative_cost, proxy_cost_table, relative_cost
from osnas.models.space import load_space
from osnas.search import budget as B

H, W = 32, 16
TINY = ["model.arch=osnet_x0_25", f"data.height={H}", f"data.width={W}", "data.batch_size=8",
        "data.num_instances=2", "data.workers=0", "run.progress=false", "run.log_every=1000",
        "search.epochs=4", "search.steps_per_epoch=3", "search.warmup_epochs=1", "search.alpha_lr=0.1",
        "search.runs=1", "search.objective=lodo", "search.alpha_every=1", "search.alpha_loss=id"]


def _sets(items):
    return [x for s in items for x in ("--set", s)]


@pytest.fixture(scope="module")
def space():
    return load_space("osnet_stem_blocks")


@pytest.fixture(scope="module")
def table(space):
    """The proxy table, with every IN candidate made clearly dearer (so tests do not hinge on the
    proxy's constants): +5% of the reference per IN site."""
    t = proxy_cost_table(space, "osnet_x0_25", 64, 32)
    for p in space.positions:
        base = t.latency_ms[p.name][p.names[0]]
        for c, sites in p.candidates.items():
            t.latency_ms[p.name][c] = base + 0.05 * t.reference_ms * sum(op == "in" for op in sites.values())
    return t


def test_expected_cost_of_one_hot_probs_is_the_predicted_cost(space, table):
    choices = {p.name: p.names[-1] for p in space.positions}
    probs = [torch.eye(len(p.names))[-1] for p in space.positions]
    assert float(expected_relative_cost(table, space, probs)) == pytest.approx(relative_cost(table, choices))
    plain = {p.name: p.names[0] for p in space.positions}
    assert relative_cost(table, plain) == pytest.approx(1.0, abs=1e-6)


def test_loss_factor_only_above_the_budget(space, table):
    from osnas.models.supernet import Supernet

    model = Supernet(space, arch="osnet_x0_25")
    uniform = B.expected_cost(model, table)  # every candidate equally likely
    assert uniform > 1.1
    record = [None]
    loss = B.with_cost(lambda m, b: torch.tensor(2.0), model, table, budget=1.05, weight=1.0, record=record)
    value = loss(model, None)
    f = uniform / 1.05
    assert float(value.detach()) == pytest.approx(2.0 * f + (f - 1.0), rel=1e-5)
    assert record[0] == pytest.approx(uniform, rel=1e-6)
    value.backward()  # the factor pushes probability towards cheaper candidates
    g = model.alphas[0].grad  # stem: [bn, in]
    assert g[1] > 0 > g[0]
    generous = B.with_cost(lambda m, b: torch.tensor(2.0), model, table, budget=2.0, weight=1.0)
    assert float(generous(model, None).detach()) == 2.0


def test_the_budget_still_pulls_where_the_alpha_loss_is_zero(space, table):
    """A batch-hard triplet loss is 0 on an easy batch: the budget must not vanish with it."""
    from osnas.models.supernet import Supernet

    model = Supernet(space, arch="osnet_x0_25")
    value = B.with_cost(lambda m, b: torch.tensor(0.0), model, table, budget=1.05, weight=1.0)(model, None)
    assert float(value.detach()) > 0
    value.backward()
    g = model.alphas[0].grad  # stem: [bn, in]
    assert g[1] > 0 > g[0]


def test_fit_budget_switches_the_cheapest_preference_first(space, table):
    n = len(space.positions)
    chosen = [1] * n  # IN everywhere (stem in, blocks in_res): 1 + 7 * 0.05 = 1.35
    pref = [torch.tensor([0.1, 0.9])] + [torch.tensor([0.25, 0.25, 0.25, 0.25]) for _ in range(n - 1)]
    pref[3] = torch.tensor([0.3, 0.7, 0.0, 0.0])
    new, switches = B.fit_budget(space, chosen, pref, table, budget=1.26)
    rel = relative_cost(table, {p.name: p.names[c] for p, c in zip(space.positions, new)})
    assert rel <= 1.26 + 1e-9
    # two switches of 0.05 each: the positions with no preference between candidates go first
    assert len(switches) == 2 and all(s["to"] == "plain" for s in switches)
    assert {s["position"] for s in switches} <= {p.name for p in space.positions[1:]} - {space.positions[3].name}
    with pytest.raises(OsnasError, match="below the cheapest"):
        B.fit_budget(space, chosen, pref, table, budget=0.5)


@pytest.fixture(scope="module")
def sources(tmp_path_factory):
    return two_tiny_sources(tmp_path_factory.mktemp("budget_data"), H, W)


def _last_cost(run):
    rows = [json.loads(x) for x in (run / "alphas.jsonl").read_text().splitlines() if x.strip()]
    return rows[-1]["cost"]


def test_budgeted_search_ends_cheaper_and_derive_keeps_the_hard_budget(tmp_path, sources, table):
    tfile = tmp_path / "cost.yaml"
    table.save(tfile)
    runs = {}
    # a steep factor (cost_weight 8): in 9 alpha steps the cost term must outweigh the alpha loss's own
    # pull whatever the data (the batch streams depend on the sources' paths, new in every session;
    # at weight 1 the tight run ended dearer than the free one in 3 of 12 sessions; at 8, 0 of 10)
    for name, budget in (("free", 0), ("tight", 1.0)):
        runs[name] = tmp_path / name
        rc = main(["search", "--sources", sources, "--out", str(runs[name]), "--space", "osnet_stem_blocks"]
                  + _sets(TINY + [f"search.cost_table={tfile}", f"search.cost_budget={budget}",
                                  "search.cost_weight=8"]))
        assert rc == 0
    assert _last_cost(runs["tight"]) < _last_cost(runs["free"])
    assert json.loads((runs["tight"] / "run.json").read_text())["cost_budget"] == 1.0
    # derive within a hard budget on the free run: never above it, the cost recorded
    out = tmp_path / "g.yaml"
    assert main(["derive", "--run", str(runs["free"]), "--out", str(out), "--cost-budget", "1.1"]) == 0
    g = yaml.safe_load(out.read_text())
    assert g["cost"]["relative"] <= 1.1 + 1e-9 and g["cost"]["budget"] == 1.1
    assert g["cost"]["backend"] == "proxy" and "latency_ms" not in g["cost"]  # a proxy is not timed
    # a measured table (osnas profile): the derived network is timed against the all-BN network
    from osnas.profile import run_profile

    measured = tmp_path / "measured.yaml"
    run_profile(space="osnet_stem_blocks", arch="osnet_x0_25", backend="eager", height=H, width=W, threads=1,
                repeats=3, warmup=1, out=str(measured), clock="cpu", progress=False)
    assert main(["derive", "--run", str(runs["free"]), "--out", str(out), "--cost-table", str(measured)]) == 0
    c = yaml.safe_load(out.read_text())["cost"]
    assert c["backend"] == "eager" and c["method"] == "measured" and c["table"] == str(measured)
    assert c["latency_ms"] > 0 and c["reference_measured_ms"] > 0 and c["timings"] == 40
    assert 0.5 < c["measured_relative"] < 2.0  # a few IN sites more than the all-BN network: far from 2x either way
    # below the cheapest architecture: one line, exit 2
    assert main(["derive", "--run", str(runs["free"]), "--out", str(tmp_path / "x.yaml"),
                 "--cost-budget", "0.5"]) == 2


def test_budget_without_table_is_refused(tmp_path, sources):
    rc = main(["search", "--sources", sources, "--out", str(tmp_path / "r")]
              + _sets(TINY + ["search.cost_budget=1.05"]))
    assert rc == 2
    assert not (tmp_path / "r" / "checkpoint.pth").exists()


@pytest.mark.parametrize("runs", [pytest.param("1", id="one-supernet"), pytest.param("3", id="three-supernets")])
def test_budget_below_the_cheapest_architecture_is_refused_before_anything_is_written(tmp_path, sources, capsys,
                                                                                       runs):
    """The proxy table's cheapest architecture is the all-BN network (1.0): a budget of 0.5 fits
    nothing, and the search says so in one line before it writes a run folder or reads data."""
    capsys.readouterr()
    rc = main(["search", "--sources", sources, "--out", str(tmp_path / "r")]
              + _sets(TINY + ["search.cost_table=proxy", "search.cost_budget=0.5", f"search.runs={runs}"]))
    err = [ln for ln in capsys.readouterr().err.splitlines() if ln.strip()]
    assert rc == 2 and len(err) == 1, err
    assert "search.cost_budget=0.5 is below the cheapest architecture" in err[0] and "Traceback" not in err[0]
    assert not (tmp_path / "r").exists()
