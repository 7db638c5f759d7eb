"""`osnas search --pretrained FILE`: the supernets start from published torchreid ImageNet weights.

A checkpoint in torchreid's published key layout (plain OSNet x0.25, no IN anywhere; random but
recognisable tensors, tests/test_import.py) goes into a fresh supernet directly and through a
tiny search: every tensor the checkpoint has lands where the importer puts it, the IN candidates
it has no weights for start as the identity affine, and a checkpoint of another width is one
line of error.
"""

import json

import pytest
import torch

from conftest import TINY
from osnas.cli import main
from osnas.config import build_config
from osnas.models.space import load_space
from osnas.models.torchreid_import import convert_state_dict
from osnas.search.bilevel import pretrained_supernet, search_supernet
from osnas.utils import load_checkpoint
from test_import import synthetic_checkpoint

# one supernet, weights that never move (lr 0): what the search started from is what it saved
SEARCH = TINY + ["search.epochs=1", "search.steps_per_epoch=2", "search.warmup_epochs=0", "search.runs=1",
                 "search.lr=0"]


def _sets(items):
    return [x for s in items for x in ("--set", s)]


@pytest.fixture(scope="module")
def published(tmp_path_factory):
    """A torchreid-format training checkpoint ({'state_dict': ...}) of plain OSNet x0.25."""
    sd = synthetic_checkpoint("osnet_x0_25", num_classes=1000)
    path = tmp_path_factory.mktemp("pretrained") / "osnet_x0_25_imagenet.pth"
    torch.save({"state_dict": sd, "epoch": 0}, path)
    return path, sd


def _in_ops(net):
    return [(name, m) for name, m in net.named_modules() if isinstance(m, torch.nn.InstanceNorm2d) and m.affine]


def test_a_fresh_supernet_takes_every_published_tensor(published):
    path, sd = published
    cfg = build_config(overrides=TINY)
    model = search_supernet(cfg, load_space(cfg.search.space), num_classes=12)
    rep = pretrained_supernet(model, path)
    assert rep["layout"] == "plain" and rep["skipped"] == ["classifier.weight", "classifier.bias"]  # 1000 classes
    converted, implied, _ = convert_state_dict(sd)
    state = model.net.state_dict()
    placed = [k for k in converted if not k.startswith("head.classifier.")]
    assert sorted(placed) == rep["loaded"] and len(placed) > 100
    for k in placed:  # convolutions, the BN of every site, statistics and all
        assert torch.equal(state[k], converted[k].to(state[k].dtype)), k
    assert torch.equal(model.net.conv1.conv.weight, sd["conv1.conv.weight"])
    assert torch.equal(model.net.conv1.norm.ops["bn"].weight, sd["conv1.bn.weight"])
    assert set(implied.values()) <= {"bn", "none"}  # the published plain OSNet has no IN
    # the IN candidates the file has no weights for: the identity affine, as initialised
    ins = _in_ops(model.net)
    assert ins and all(n.endswith(".ops.in") for n, _ in ins)
    assert all(torch.equal(m.weight, torch.ones_like(m.weight)) and torch.equal(m.bias, torch.zeros_like(m.bias))
               for _, m in ins)
    assert sorted(rep["missing"]) == sorted(f"{n}.{p}" for n, _ in ins for p in ("weight", "bias"))


def test_a_search_starts_from_the_published_weights(published, synth_root, tmp_path, capsys):
    path, sd = published
    out = tmp_path / "search"
    capsys.readouterr()
    assert main(["search", "--data-root", str(synth_root), "--out", str(out), "--pretrained", str(path)]
                + _sets(SEARCH)) == 0
    assert json.loads((out / "run.json").read_text())["pretrained"] == str(path)
    ck = load_checkpoint(out / "checkpoint.pth")
    assert ck["global_step"] == 2
    model = ck["model"]
    converted = convert_state_dict(sd)[0]
    params = [k for k in converted if not k.startswith("head.classifier.")
              and not k.endswith(("running_mean", "running_var", "num_batches_tracked"))]
    for k in params:  # weights at lr 0 are the ones the search started from (BN statistics move with the data)
        assert torch.equal(model[f"net.{k}"], converted[k]), k
    ins = [k for k in model if k.startswith("net.") and ".ops.in." in k]
    assert ins and all(torch.equal(model[k], torch.ones_like(model[k]) if k.endswith("weight")
                                   else torch.zeros_like(model[k])) for k in ins)
    assert any(not torch.equal(model[f"alphas.{i}"], torch.zeros_like(model[f"alphas.{i}"]))
               for i in range(7))  # the alphas still moved


def test_a_checkpoint_of_another_width_is_one_line(synth_root, tmp_path, capsys):
    wide = tmp_path / "osnet_x0_5.pth"
    torch.save(synthetic_checkpoint("osnet_x0_5", num_classes=1000), wide)
    capsys.readouterr()
    code = main(["search", "--data-root", str(synth_root), "--out", str(tmp_path / "s"), "--pretrained", str(wide)]
                + _sets(SEARCH))
    err = [ln for ln in capsys.readouterr().err.splitlines() if ln.strip()]
    assert code == 2 and len(err) == 1 and err[0].startswith("osnas: error: "), err
    assert str(wide) in err[0] and "shape mismatches" in err[0] and "wrong width?" in err[0]
    assert not (tmp_path / "s" / "checkpoint.pth").exists()
    code = main(["search", "--data-root", str(synth_root), "--out", str(tmp_path / "m"), "--pretrained",
                 str(tmp_path / "missing.pth")] + _sets(SEARCH))
    err = [ln for ln in capsys.readouterr().err.splitlines() if ln.strip()]
    assert code == 2 and len(err) == 1 and "pretrained weights not found" in err[0]
    assert not (tmp_path / "m").exists()
