"""Search mechanics: spaces, supernet equivalence, gradient routing, the architect."""

import copy

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from osnas.errors import OsnasError
from osnas.models.genotype import load_genotype
from osnas.models import build_model, build_supernet
from osnas.models import relax
from osnas.search.architect import Architect
from osnas.models.space import list_spaces, load_space

ARCH = "osnet_x0_25"


def _randomise_bn(m):
    g = torch.Generator().manual_seed(3)
    for mod in m.modules():
        if isinstance(mod, nn.BatchNorm2d):
            mod.running_mean.copy_(torch.rand(mod.running_mean.shape, generator=g) - 0.5)
            mod.running_var.copy_(torch.rand(mod.running_var.shape, generator=g) + 0.5)


@pytest.mark.parametrize("name", list_spaces())
def test_every_space_loads(name):
    s = load_space(name)
    assert s.positions and len(s.sha256) == 64
    assert s.size() >= 2 ** len(s.positions)


def test_reference_space_contains_osnet_ain():
    s = load_space("osnet_ain_blocks")
    assert s.size() == 4096
    ain = {"conv2.0": "in_res", "conv2.1": "in_res", "conv3.0": "plain", "conv3.1": "in_res",
           "conv4.0": "in_res", "conv4.1": "plain"}
    assert s.plan_for(ain) == load_genotype("osnet_ain").plan


@pytest.mark.parametrize("text,needle", [
    ("name: x\npositions: [{site: stem, candidates: [bn, xx]}]\n", "unknown candidate op 'xx'"),
    ("name: x\npositions: [{site: nope, candidates: [bn, in]}]\n", "unknown site 'nope'"),
    ("name: x\npositions: [{block: conv9.0, candidates: {a: {end: bn}, b: {end: in}}}]\n", "unknown block"),
    ("name: x\npositions: [{site: stem, candidates: [bn]}]\n", "at least 2 candidates"),
    ("name: x\nfixed: {stem: in}\npositions: [{site: stem, candidates: [bn, in]}]\n", "both fixed and searched"),
    ("name: x\nbogus: 1\npositions: [{site: stem, candidates: [bn, in]}]\n", "unknown keys"),
    ("name: x\npositions: [{name: p, candidates: {a: {stem: bn, conv5: bn}, b: {stem: in, conv5: in}}}]\n",
     "belong to one unit"),
    ("name: x\npositions: [{site: stem, candidates: [bn, in]}\n", "invalid YAML"),
    ("name: x\nrelaxation: sigmoid\npositions: [{block: conv2.0, candidates: {a: {end: bn, post: none}, "
     "b: {end: in, post: none}, c: {end: bn, post: in}}}]\n", "sigmoid relaxation"),
])
def test_malformed_spaces(tmp_path, text, needle):
    p = tmp_path / "space.yaml"
    p.write_text(text)
    with pytest.raises(OsnasError) as e:
        load_space(p)
    assert needle in str(e.value) and str(p) in str(e.value) and "\n" not in str(e.value)


def test_unknown_space_name_lists_valid():
    with pytest.raises(OsnasError, match="osnet_ain_blocks"):
        load_space("no_such_space")


@pytest.mark.parametrize("space,shared", [("osnet_ain_blocks", True), ("osnet_ain_blocks", False),
                                          ("norm_sites", True)])
def test_onehot_supernet_equals_derived(space, shared):
    torch.manual_seed(0)
    sn = build_supernet(space, arch=ARCH, num_classes=7, shared=shared)
    _randomise_bn(sn)
    for a in sn.alphas:
        a.data.normal_()
    g = sn.genotype()
    net = build_model(g, num_classes=7)
    net.load_state_dict(sn.derived_state_dict(g), strict=True)
    x = torch.randn(4, 3, 64, 32)
    sn.eval(), net.eval()
    with torch.no_grad():
        assert torch.equal(sn(x, sn.onehot(sn.choices())), net(x))
    # in training mode too (batch statistics), logits and features alike
    sn.train(), net.train()
    torch.manual_seed(1)
    la, fa = sn(x, sn.onehot(sn.choices()))
    lb, fb = net(x)
    assert torch.equal(la, lb) and torch.equal(fa, fb)


def test_relaxations():
    a = torch.tensor([0.0, 1.0, -1.0], requires_grad=True)
    assert torch.allclose(relax.weights(a, "softmax"), F.softmax(a, 0))
    w_eval = relax.weights(a, "gumbel", tau=2.0, training=False)
    assert torch.allclose(w_eval, F.softmax(a / 2.0, 0))  # no noise in eval
    torch.manual_seed(0)
    w1 = relax.weights(a, "gumbel", tau=2.0, training=True)
    assert not torch.allclose(w1, w_eval) and abs(float(w1.detach().sum()) - 1) < 1e-6
    s = torch.tensor([0.3], requires_grad=True)
    assert torch.allclose(relax.weights(s, "sigmoid"), torch.cat([1 - torch.sigmoid(s), torch.sigmoid(s)]))
    # the reference schedule: 10, halved every 20 epochs, floor 1
    assert [relax.gumbel_tau(e, 10, 20, 0.5, 1) for e in (0, 19, 20, 40, 60, 80, 200)] == [10, 10, 5, 2.5, 1.25, 1, 1]


def _batch(n=8, classes=4, hw=(64, 32)):
    return torch.randn(n, 3, *hw), torch.arange(n) % classes


def test_gradients_reach_alphas_and_alpha_step_touches_only_alphas():
    torch.manual_seed(0)
    sn = build_supernet("osnet_ain_blocks", arch=ARCH, num_classes=4)
    sn.train()

    def loss_fn(m, b):
        logits, _ = m(b[0])
        return F.cross_entropy(logits, b[1])

    w_opt = torch.optim.SGD(sn.weight_parameters(), lr=0.1, momentum=0.9, weight_decay=5e-4)
    a_opt = torch.optim.Adam(sn.arch_parameters(), lr=0.01)
    for order in ("first", "second"):
        arch = Architect(sn, loss_fn, a_opt, order=order, w_optimizer=w_opt)
        w0 = copy.deepcopy(sn.net.state_dict())
        a0 = [a.detach().clone() for a in sn.alphas]
        arch.step(_batch(), _batch())
        assert all(a.grad is not None and a.grad.abs().sum() > 0 for a in sn.alphas)
        assert any(not torch.equal(a, b) for a, b in zip(sn.alphas, a0))
        for k, v in sn.net.state_dict().items():  # weights and BN buffers exactly restored
            assert torch.equal(v, w0[k]), k
    # a weight step leaves alphas alone
    a0 = [a.detach().clone() for a in sn.alphas]
    w_opt.zero_grad()
    loss_fn(sn, _batch()).backward()
    w_opt.step()
    assert all(torch.equal(a, b) for a, b in zip(sn.alphas, a0))


class _Tiny(nn.Module):
    """A two-candidate mixed op in float64, small enough for exact finite differences."""

    def __init__(self):
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.w = nn.Parameter(torch.randn(5, 6, generator=g, dtype=torch.float64) * 0.5)
        self.v = nn.Parameter(torch.randn(6, 3, generator=g, dtype=torch.float64) * 0.5)
        self.alpha = nn.Parameter(torch.tensor([0.2, -0.1], dtype=torch.float64))

    def arch_parameters(self):
        return [self.alpha]

    def weight_parameters(self):
        return [self.w, self.v]

    def forward(self, x, alpha=None):
        p = F.softmax(self.alpha if alpha is None else alpha, 0)
        h = x @ self.w
        return (p[0] * torch.tanh(h) + p[1] * torch.sigmoid(h)) @ self.v


def test_second_order_hypergradient_matches_finite_difference():
    m = _Tiny()
    g = torch.Generator().manual_seed(1)
    tr = (torch.randn(10, 5, generator=g, dtype=torch.float64), torch.randn(10, 3, generator=g, dtype=torch.float64))
    va = (torch.randn(10, 5, generator=g, dtype=torch.float64), torch.randn(10, 3, generator=g, dtype=torch.float64))

    def loss_fn(model, b, alpha=None):
        return ((model(b[0], alpha) - b[1]) ** 2).mean()

    xi, wd = 0.5, 1e-2
    w_opt = torch.optim.SGD(m.weight_parameters(), lr=xi, weight_decay=wd)
    arch = Architect(m, loss_fn, torch.optim.SGD(m.arch_parameters(), lr=0.0), order="second", w_optimizer=w_opt)
    hyper = arch.hypergradient(tr, va)[0]

    def unrolled_val_loss(alpha):
        W = [m.w, m.v]
        gw = torch.autograd.grad(loss_fn(m, tr, alpha), W)
        w2 = [w - xi * (gg + wd * w) for w, gg in zip(W, gw)]
        p = F.softmax(alpha, 0)
        h = va[0] @ w2[0]
        return (((p[0] * torch.tanh(h) + p[1] * torch.sigmoid(h)) @ w2[1] - va[1]) ** 2).mean()

    h = 1e-5
    fd = torch.zeros(2, dtype=torch.float64)
    for i in range(2):
        e = torch.zeros(2, dtype=torch.float64)
        e[i] = h
        fd[i] = (unrolled_val_loss(m.alpha.detach() + e) - unrolled_val_loss(m.alpha.detach() - e)) / (2 * h)
    # the first-order gradient alone differs: the test can tell the two apart
    first = torch.autograd.grad(loss_fn(m, va), m.alpha)[0]
    assert not torch.allclose(first, fd, rtol=1e-3, atol=1e-6)
    assert torch.allclose(hyper, fd, rtol=1e-4, atol=1e-8), (hyper, fd)
