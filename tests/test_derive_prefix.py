"""Derive scores subnets that share the first steps of the network once (osnas/derive/prefix.py):
the embeddings must equal a whole forward's exactly, whatever was kept before and whatever the
budget, and the supernet must come out untouched."""

import pytest
import torch

from osnas.derive.prefix import PrefixForward, recalibrated_bn
from osnas.models.osnet import STEPS
from osnas.models.supernet import Supernet


def _batches(n, seed):
    g = torch.Generator().manual_seed(seed)
    return [[torch.randn(6, 3, 32, 16, generator=g)] for _ in range(n)]


def _whole(model, path, calib, val):
    """The embeddings as derive computed them before prefixes were shared: every step, every path."""
    fwd = lambda x: model(x, path=list(path))  # noqa: E731
    with recalibrated_bn(model, fwd, calib), torch.no_grad():
        return [fwd(b[0]) for b in val]


# paths of osnet_stem_blocks (stem, conv2.0 ... conv4.1): a coordinate-ascent-like walk, prefixes shared
WALK = [[0] * 7, [1, 0, 0, 0, 0, 0, 0], [0, 1, 0, 0, 0, 0, 0], [0, 2, 0, 0, 0, 0, 0], [0, 0, 0, 0, 0, 2, 0],
        [0, 0, 0, 0, 0, 2, 1], [1, 0, 0, 0, 0, 2, 1], [0] * 7]


@pytest.mark.parametrize("last_stride", [2, 1])
def test_shared_prefixes_give_the_whole_forward_exactly(last_stride):
    torch.manual_seed(0)
    model = Supernet("osnet_stem_blocks", arch="osnet_x0_25", num_classes=5, head="bnneck",
                     last_stride=last_stride).eval()
    calib, val = _batches(2, 1), _batches(3, 2)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    fwd = PrefixForward(model, calib, val)
    for path in WALK:
        got = fwd.embeddings(path)
        want = _whole(model, path, calib, val)
        assert len(got) == len(val) and all(torch.equal(a, b) for a, b in zip(got, want)), path
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())  # weights and statistics
    assert model.training is False
    whole = len(WALK) * len(STEPS) * (len(calib) + len(val))
    assert fwd.steps_run < whole  # the shared steps ran once
    assert fwd.kept  # and their activations were kept


def test_a_budget_too_small_to_keep_anything_recomputes_and_still_agrees():
    torch.manual_seed(1)
    model = Supernet("osnet_stem_blocks", arch="osnet_x0_25", num_classes=5, head="bnneck").eval()
    calib, val = _batches(2, 3), _batches(2, 4)
    none = PrefixForward(model, calib, val, budget=0)
    some = PrefixForward(model, calib, val, budget=200_000)  # a few of the later boundaries only
    for path in WALK:
        want = _whole(model, path, calib, val)
        assert all(torch.equal(a, b) for a, b in zip(none.embeddings(path), want))
        assert all(torch.equal(a, b) for a, b in zip(some.embeddings(path), want))
    assert not none.kept and none.steps_run == len(WALK) * len(STEPS) * 4
    assert some.kept and sum(e[2] for e in some.kept.values()) <= 200_000
    assert some.steps_run < none.steps_run
