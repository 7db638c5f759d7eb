"""The single-path weight step (`search.weight_step=sampled`, the default) and its uniform
variant (`uniform`: no alpha step).

A sampled path must compute exactly what the derived network computes, train only the
candidates on the path, follow the alphas' probabilities, be a function of (seed, step) so a
resumed search draws the same paths (the kill-and-resume test is in test_pipeline.py), and be
recorded per step in alphas.jsonl.
"""

import collections

import pytest
import torch
import torch.nn as nn

from osnas.cli import main
from osnas.models import build_model, build_supernet
from osnas.models.genotype import genotype_from_probs
from osnas.search import run_search
from osnas.search.bilevel import read_history, step_generator
from test_search_core import _randomise_bn

ARCH = "osnet_x0_25"
SEARCH = ["model.arch=osnet_x0_25", "data.height=64", "data.width=32", "data.batch_size=8", "data.num_instances=2",
          "data.workers=0", "run.progress=false", "run.log_every=1000", "search.epochs=3",
          "search.steps_per_epoch=2", "search.warmup_epochs=1", "search.runs=1"]


def _random_state(sn):
    """BN statistics, IN affine weights and alphas away from their initial values."""
    _randomise_bn(sn)
    g = torch.Generator().manual_seed(5)
    for mod in sn.modules():
        if isinstance(mod, nn.InstanceNorm2d):  # affine IN: make candidates differ
            mod.weight.data.uniform_(0.5, 1.5, generator=g)
    for a in sn.alphas:
        a.data.normal_(generator=g)


@pytest.mark.parametrize("space,shared", [("osnet_stem_blocks", True), ("osnet_ain_blocks", False)])
def test_a_path_computes_what_the_derived_network_computes(space, shared):
    torch.manual_seed(0)
    sn = build_supernet(space, arch=ARCH, num_classes=5, shared=shared)
    _random_state(sn)
    x = torch.randn(3, 3, 64, 32)
    gen = torch.Generator().manual_seed(1)
    for mode in ("eval", "train"):
        getattr(sn, mode)()
        for _ in range(3):
            path = sn.sample_path(gen)
            choices = {p.name: p.names[i] for p, i in zip(sn.positions, path)}
            g = genotype_from_probs(sn.space, sn.onehot(choices), arch=ARCH, shared=shared)
            net = build_model(g, num_classes=5)
            net.load_state_dict(sn.derived_state_dict(g), strict=True)
            getattr(net, mode)()
            with torch.no_grad():  # eval: the embedding; train: (logits, features)
                a, b, c = sn(x, path=path), sn(x, sn.onehot(choices)), net(x)
            a, b, c = ([t] if torch.is_tensor(t) else list(t) for t in (a, b, c))
            assert all(torch.equal(u, v) for u, v in zip(a, b)), "path != one-hot mixture"
            assert all(torch.equal(u, v) for u, v in zip(a, c)), "path != derived network"


def test_a_sampled_step_trains_only_the_path_and_never_the_alphas():
    torch.manual_seed(0)
    sn = build_supernet("osnet_stem_blocks", arch=ARCH, num_classes=4).train()
    path = [1, 0, 3, 0, 0, 0, 0]  # stem=in; conv2.0 plain; conv2.1 both
    logits, _ = sn(torch.randn(4, 3, 64, 32), path=path)
    nn.functional.cross_entropy(logits, torch.arange(4)).backward()
    assert all(a.grad is None for a in sn.alphas)
    net = sn.net
    assert net.conv1.norm.ops["in"].weight.grad is not None
    assert net.conv1.norm.ops["bn"].weight.grad is None  # the stem's BN candidate was not on the path
    block = net.conv2[1]  # conv2.1=both: IN at the residual end and after the addition
    assert block.end.ops["in"].weight.grad is not None and block.post.ops["in"].weight.grad is not None
    assert block.end.ops["bn"].weight.grad is None
    assert net.conv2[0].end.ops["bn"].weight.grad is not None  # conv2.0=plain: its BN end trained
    assert net.conv2[0].end.ops["in"].weight.grad is None


def test_paths_follow_the_alphas_and_the_generator():
    sn = build_supernet("osnet_stem_blocks", arch=ARCH, num_classes=4)
    with torch.no_grad():
        sn.alphas[1].copy_(torch.tensor([0.0, 9.0, 0.0, 0.0]))  # conv2.0: in_res nearly certain
    gen = torch.Generator().manual_seed(0)
    draws = [sn.sample_path(gen) for _ in range(300)]
    assert collections.Counter(d[1] for d in draws)[1] >= 295
    stem = collections.Counter(d[0] for d in draws)  # uniform: both candidates, roughly half each
    assert 100 <= stem[0] <= 200
    assert {d[2] for d in draws} == {0, 1, 2, 3}
    again = torch.Generator().manual_seed(0)
    assert [sn.sample_path(again) for _ in range(300)] == draws
    # one step's generator depends on the seed and the step only
    assert torch.equal(torch.rand(4, generator=step_generator(1, 7)), torch.rand(4, generator=step_generator(1, 7)))
    assert not torch.equal(torch.rand(4, generator=step_generator(1, 7)), torch.rand(4, generator=step_generator(1, 8)))
    assert not torch.equal(torch.rand(4, generator=step_generator(1, 7)), torch.rand(4, generator=step_generator(2, 7)))


def test_a_sampled_search_records_its_paths_and_is_deterministic(synth_root, tmp_path):
    a = run_search(data_root=str(synth_root), out=str(tmp_path / "a"), overrides=SEARCH + ["search.weight_step=sampled"])
    b = run_search(data_root=str(synth_root), out=str(tmp_path / "b"), overrides=SEARCH + ["search.weight_step=sampled"])
    ha, hb = read_history(a), read_history(b)
    assert ha == hb and len(ha) == 6
    paths = [tuple(r["path"].values()) for r in ha]
    assert all(set(r["path"]) == set(r["probs"]) for r in ha)
    assert len(set(paths)) > 1, "every step trained the same path"
    assert ha[-1]["alphas"] != ha[0]["alphas"]  # the alpha steps still run
    mixed = read_history(run_search(data_root=str(synth_root), out=str(tmp_path / "m"),
                                    overrides=SEARCH + ["search.weight_step=mixed"]))
    assert "path" not in mixed[0]


def test_uniform_paths_ignore_the_alphas():
    sn = build_supernet("osnet_stem_blocks", arch=ARCH, num_classes=4)
    with torch.no_grad():
        sn.alphas[1].copy_(torch.tensor([0.0, 9.0, 0.0, 0.0]))  # the alphas would make in_res nearly certain
    gen = torch.Generator().manual_seed(0)
    draws = collections.Counter(sn.sample_path(gen, "uniform")[1] for _ in range(400))
    assert set(draws) == {0, 1, 2, 3} and all(60 <= n <= 140 for n in draws.values())
    with pytest.raises(Exception, match="unknown path draw 'sparse'; valid: alphas, uniform$"):
        sn.sample_path(gen, "sparse")  # the sparse draw was removed


def test_a_uniform_search_never_steps_the_alphas_and_derives_by_retrieval(synth_root, tmp_path, capsys):
    """weight_step=uniform: single paths, no alpha step, alphas as initialised; derive defaults
    to --select retrieval-pooled and refuses to read the unmoved alphas by argmax."""
    step = "uniform"
    sets = SEARCH + [f"search.weight_step={step}"]
    a = run_search(data_root=str(synth_root), out=str(tmp_path / "a"), overrides=sets)
    h = read_history(a)
    assert len(h) == 6 and all(r["alphas"] == h[0]["alphas"] for r in h)
    assert all(r.get("loss_a") is None for r in h) and len({tuple(r["path"].values()) for r in h}) > 1
    assert h == read_history(run_search(data_root=str(synth_root), out=str(tmp_path / "b"), overrides=sets))
    capsys.readouterr()
    assert main(["derive", "--run", str(a), "--batches", "1"]) == 0
    from osnas.models.genotype import load_genotype

    assert load_genotype(a / "genotype.yaml").select == "retrieval-pooled"
    capsys.readouterr()
    assert main(["derive", "--run", str(a), "--select", "argmax", "--out", str(tmp_path / "g.yaml")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and f"weight_step={step}" in err[0] and "--select retrieval-pooled" in err[0]
    assert not (tmp_path / "g.yaml").exists()


@pytest.mark.parametrize("sets,needle", [
    (["search.weight_step=single_path"],
     "search.weight_step='single_path': expected one of sampled, mixed, uniform"),
    (["search.weight_step=sparse"], "search.weight_step='sparse': expected one of sampled, mixed, uniform"),
    (["search.weight_step=sampled", "search.order=single"], "search.weight_step=sampled needs a bilevel search"),
    (["search.weight_step=uniform", "search.cost_table=proxy", "search.cost_budget=1.02"],
     "search.weight_step=uniform never steps them"),
])
def test_bad_weight_step_settings_exit_2(synth_root, tmp_path, capsys, sets, needle):
    rc = main(["search", "--data-root", str(synth_root), "--out", str(tmp_path / "x")]
              + [x for s in SEARCH + sets for x in ("--set", s)])
    err = capsys.readouterr().err
    assert rc == 2 and needle in err and "Traceback" not in err
    assert not (tmp_path / "x" / "checkpoint.pth").exists()
