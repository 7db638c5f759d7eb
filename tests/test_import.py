"""Loading torchreid OSNet checkpoints into osnas models: layouts, roles, round trips, errors.

No torchreid code is used or reproduced here. The published checkpoints are described by the
vendored list tests/data/torchreid_state_dict_keys.txt (key names and shapes as printed from
their state dicts). Synthetic checkpoints with exactly those keys and shapes, every tensor
filled from its own seed, go through the importer; each tensor must arrive, unchanged, at the
osnas parameter that plays the same role in the network. The roles are read off the published
key names by the rules below (`published_role`) and placed in osnas by `osnas_key`, written
from osnas/models/osnet.py; neither uses the importer's own renaming.
"""

import functools
import math
import os
import pickle
import re
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from osnas.errors import OsnasError
from osnas.models import build_model, load_torchreid_weights
from osnas.models.osnet import OSNet, WIDTHS, NormSite, block_names, norm_sites
from osnas.models.torchreid_import import convert_state_dict, detect_layout, export_torchreid_state_dict
from osnas.models.torchreid_import import load_torchreid_weights as load_strict

torch.set_num_threads(1)

KEYS_FILE = Path(__file__).parent / "data" / "torchreid_state_dict_keys.txt"
PUBLISHED = ["osnet_x1_0", "osnet_x0_25", "osnet_ibn_x1_0", "osnet_ain_x1_0"]
DERIVED = ["osnet_ain_x0_25", "osnet_x0_5", "osnet_x0_75", "osnet_ain_x0_5"]  # layouts derived from the list
# where the published models hold instance normalisation (osnas site names)
EXPECTED_IN = {
    "plain": set(),
    "ibn": {"stem", "conv2.0.post", "conv2.1.post"},
    "ain": {"stem", "conv2.0.end", "conv2.1.end", "conv3.1.end", "conv4.0.end"},
}


class NotAllowed:  # a pickled arbitrary object: weights_only loading must refuse it
    def __reduce__(self):
        return (os.getcwd, ())


def _one_line(e):
    s = str(e.value)
    assert "\n" not in s and s
    return s


def family(name):
    return "ain" if name.startswith("osnet_ain_") else "ibn" if name.startswith("osnet_ibn_") else "plain"


def width_of(name):  # 'osnet_ain_x0_25' -> 'osnet_x0_25'
    return "osnet_" + re.search(r"x\d_\d+$", name).group(0)


# ----------------------------------------------------------------------------- the published list
@functools.lru_cache(maxsize=None)
def published():
    """{model: [(key, shape)]} from the vendored list (a missing file is an error, never a skip)."""
    out = {}
    for line in KEYS_FILE.read_text().splitlines():
        if line.startswith("#") or not line.strip():
            continue
        model, key, shape = line.split()
        dims = () if shape == "scalar" else tuple(int(d) for d in shape.split("x"))
        out.setdefault(model, []).append((key, dims))
    return out


_BLK = r"(?P<blk>conv[234]\.[01])"
_P = r"(?P<p>weight|bias|running_mean|running_var|num_batches_tracked)"
_LEAF = r"(?P<leaf>conv1|conv2|bn)"
_ROLE_RULES = [
    (r"conv1\.conv\.weight", lambda m, f: ("stem", "conv", "weight")),
    (rf"conv1\.bn\.{_P}", lambda m, f: ("stem", "norm", "bn" if f == "plain" else "in", m["p"])),
    (rf"{_BLK}\.conv1\.(?P<sub>conv|bn)\.{_P}", lambda m, f: (m["blk"], "reduce", m["sub"], m["p"])),
    # the four streams: plain conv2a | conv2{b,c,d}.{i};  AIN conv2.{t-1}.layers.{i}
    (rf"{_BLK}\.conv2a\.{_LEAF}\.{_P}", lambda m, f: (m["blk"], "stream", 1, 0, m["leaf"], m["p"])),
    (rf"{_BLK}\.conv2(?P<s>[bcd])\.(?P<i>\d)\.{_LEAF}\.{_P}",
     lambda m, f: (m["blk"], "stream", "abcd".index(m["s"]) + 1, int(m["i"]), m["leaf"], m["p"])),
    (rf"{_BLK}\.conv2\.(?P<t>\d)\.layers\.(?P<i>\d)\.{_LEAF}\.{_P}",
     lambda m, f: (m["blk"], "stream", int(m["t"]) + 1, int(m["i"]), m["leaf"], m["p"])),
    (rf"{_BLK}\.gate\.(?P<fc>fc1|fc2)\.(?P<p>weight|bias)", lambda m, f: (m["blk"], "gate", m["fc"], m["p"])),
    (rf"{_BLK}\.conv3\.conv\.weight", lambda m, f: (m["blk"], "end_conv", "weight")),
    (rf"{_BLK}\.conv3\.bn\.{_P}", lambda m, f: (m["blk"], "end_norm", "bn", m["p"])),
    (rf"{_BLK}\.downsample\.(?P<sub>conv|bn)\.{_P}", lambda m, f: (m["blk"], "shortcut", m["sub"], m["p"])),
    # IN of a block: AIN -> the branch's last norm; IBN -> after the residual addition
    (rf"{_BLK}\.IN\.(?P<p>weight|bias)",
     lambda m, f: (m["blk"], "end_norm" if f == "ain" else "post_norm", "in", m["p"])),
    (rf"(?:conv(?P<a>[23])\.2\.0|pool(?P<b>[23])\.0)\.(?P<sub>conv|bn)\.{_P}",
     lambda m, f: (f"pool{m['a'] or m['b']}", "transition", m["sub"], m["p"])),
    (rf"conv5\.(?P<sub>conv|bn)\.{_P}", lambda m, f: ("conv5", "final", m["sub"], m["p"])),
    (rf"fc\.(?P<i>[01])\.{_P}", lambda m, f: ("fc", "linear" if m["i"] == "0" else "bn1d", m["p"])),
    (r"classifier\.(?P<p>weight|bias)", lambda m, f: ("classifier", "linear", m["p"])),
]


def published_role(key, fam):
    """The role a published tensor plays, e.g. ('conv2.0', 'stream', 2, 1, 'conv1', 'weight')."""
    hits = [rule(m, fam) for pat, rule in _ROLE_RULES for m in [re.fullmatch(pat, key)] if m]
    assert len(hits) == 1, f"{key}: {len(hits)} role rules match"
    return hits[0]


def osnas_key(role):
    """Where osnas keeps the tensor of that role (module names of osnas/models/osnet.py)."""
    unit, part = role[0], role[1]
    if unit == "stem":
        return "conv1.conv.weight" if part == "conv" else f"conv1.norm.ops.{role[2]}.{role[3]}"
    if part in ("transition", "final"):
        _, _, sub, p = role
        return f"{unit}.conv.{p}" if sub == "conv" else f"{unit}.norm.ops.bn.{p}"
    if unit == "fc":
        return f"head.fc.{0 if part == 'linear' else 1}.{role[2]}"
    if unit == "classifier":
        return f"head.classifier.{role[2]}"
    if part == "reduce":
        return f"{unit}.conv1.{role[2]}.{role[3]}"
    if part == "stream":
        _, _, t, i, leaf, p = role
        return f"{unit}.conv2.{t - 1}.layers.{i}.{leaf}.{p}"
    if part == "gate":
        return f"{unit}.gate.{role[2]}.{role[3]}"
    if part == "end_conv":
        return f"{unit}.conv3.weight"
    if part in ("end_norm", "post_norm"):
        return f"{unit}.{part[:-5]}.ops.{role[2]}.{role[3]}"
    if part == "shortcut":
        return f"{unit}.downsample.{role[2]}.{role[3]}"
    raise AssertionError(role)


def role_site(role):
    """The osnas normalisation site a norm role belongs to (None for other tensors)."""
    unit, part = role[0], role[1]
    if part == "norm":
        return "stem"
    if part in ("end_norm", "post_norm"):
        return f"{unit}.{part[:-5]}"
    if part in ("transition", "final") and role[2] == "bn":
        return unit
    return None


def _shape_role(role):
    """Role without the norm kind: a block's IN (either place) has the shape of its conv3.bn."""
    if role[1] in ("end_norm", "post_norm"):
        return (role[0], "end_norm", role[-1])
    if role[1] == "norm":
        return ("stem", "norm", role[-1])
    return role


def _scaled_plain_shapes(width):
    """{shape role: shape} of the plain model at `width`. x1.0 and x0.25 are published; other widths
    follow the rule those two obey (checked in test_vendored_key_list): a dimension that differs
    between them is floor(multiplier * its x1.0 size), one that does not is fixed."""
    big = published()["osnet_x1_0"]
    if width in published():
        return {_shape_role(published_role(k, "plain")): s for k, s in published()[width]}
    small = dict(published()["osnet_x0_25"])
    mult = {"osnet_x0_75": 0.75, "osnet_x0_5": 0.5}[width]
    return {_shape_role(published_role(k, "plain")):
            tuple(d if d == e else math.floor(mult * d) for d, e in zip(s, small[k])) for k, s in big}


def layout_of(name, num_classes=1000):
    """[(key, shape)] of a torchreid checkpoint of `name`: the published list, or for another width the
    published x1.0 key names of the family with the shapes of the same roles at that width."""
    if name in published():
        rows = published()[name]
    else:
        fam = family(name)
        names = published()[{"plain": "osnet_x1_0", "ibn": "osnet_ibn_x1_0", "ain": "osnet_ain_x1_0"}[fam]]
        shapes = _scaled_plain_shapes(width_of(name))
        rows = [(k, shapes[_shape_role(published_role(k, fam))]) for k, _ in names]
    if num_classes != 1000:
        rows = [(k, (num_classes, *s[1:]) if k.startswith("classifier.") else s) for k, s in rows]
    return rows


def synthetic_checkpoint(name, num_classes=1000, seed=0):
    """Random tensors of the listed shapes; tensor j drawn from its own seed, so each is recognisable.

    Scales keep an eval forward finite and meaningful (He-scaled weights, positive variances)."""
    sd = {}
    for j, (k, shape) in enumerate(layout_of(name, num_classes)):
        g = torch.Generator().manual_seed(100_000 * seed + j + 1)
        if k.endswith("num_batches_tracked"):
            t = torch.tensor(1000 * (seed + 1) + j, dtype=torch.long)
        elif k.endswith("running_var"):
            t = torch.rand(shape, generator=g) + 0.5
        elif k.endswith("running_mean"):
            t = torch.randn(shape, generator=g) * 0.1
        elif len(shape) == 1:  # norm affine parameters, biases
            t = torch.randn(shape, generator=g) * 0.1 + (1.0 if k.endswith("weight") else 0.0)
        else:
            t = torch.randn(shape, generator=g) * math.sqrt(2.0 / math.prod(shape[1:]))
        sd[k] = t
    return sd


def expected_placement(name, sd):
    """{osnas key: published key} for the tensors of `sd`."""
    fam = family(name)
    out = {osnas_key(published_role(k, fam)): k for k in sd}
    assert len(out) == len(sd), "two published tensors share a role"
    return out


def assert_placed(model, name, sd, skipped=()):
    """Every tensor of `sd` (except `skipped`) sits, bit for bit and with its dtype, at the osnas
    parameter of its role; every model tensor was filled by exactly one published tensor."""
    place = {ok: k for ok, k in expected_placement(name, sd).items() if k not in skipped}
    msd = model.state_dict()
    assert set(place) <= set(msd), sorted(set(place) - set(msd))[:5]
    for ok, k in place.items():
        assert msd[ok].dtype == sd[k].dtype and torch.equal(msd[ok], sd[k]), (k, ok)
    return set(msd) - set(place)  # model tensors not filled from the checkpoint


def assert_in_sites(model, expected):
    """Each normalisation site holds the module its plan names; IN exactly at `expected`."""
    assert set(model.in_sites()) == expected
    kinds = {"bn": nn.BatchNorm2d, "in": nn.InstanceNorm2d, "none": nn.Identity}
    seen = set()
    for mod_name, mod in model.named_modules():
        if isinstance(mod, NormSite):
            ((op, norm),) = mod.ops.items()
            assert type(norm) is kinds[op], (mod_name, op, type(norm))
            if op == "in":
                seen.add(mod_name)
    want = {"conv1.norm" if s == "stem" else s for s in expected}
    assert seen == want


def embedding_from_published_layout(sd, fam, x):
    """Eval embedding computed directly from a torchreid-layout state dict, without any module.

    Follows the network of the OSNet papers: 7x7/2 conv + norm + ReLU, 3x3/2 max pool; stages of
    two omni-scale blocks (1x1 reduction; stream t = t Lite 3x3 layers, i.e. 1x1 conv, depthwise
    3x3 conv, BN, ReLU; one channel gate shared by the streams, outputs summed; 1x1 expansion,
    its norm; shortcut, addition, ReLU), 1x1 conv + BN + ReLU + 2x2 average pool between stages,
    1x1 conv5, global average pool, FC + BN1d + ReLU. IN replaces the block's last norm in AIN and
    follows the addition in IBN; the stem IN is affine without running statistics.
    """

    def norm(pre, y):
        if f"{pre}.running_mean" in sd:
            return F.batch_norm(y, sd[f"{pre}.running_mean"], sd[f"{pre}.running_var"], sd[f"{pre}.weight"],
                                sd[f"{pre}.bias"], training=False, eps=1e-5)
        return F.instance_norm(y, weight=sd[f"{pre}.weight"], bias=sd[f"{pre}.bias"], eps=1e-5)

    def cnr(pre, y, stride=1, padding=0, relu=True):
        y = norm(f"{pre}.bn", F.conv2d(y, sd[f"{pre}.conv.weight"], stride=stride, padding=padding))
        return F.relu(y) if relu else y

    def lite(pre, y):
        dw = sd[f"{pre}.conv2.weight"]
        y = F.conv2d(F.conv2d(y, sd[f"{pre}.conv1.weight"]), dw, padding=1, groups=dw.shape[0])
        return F.relu(norm(f"{pre}.bn", y))

    def stream_layers(b, t):  # prefixes of stream t's layers (t = 1..4)
        if fam == "ain":
            return [f"{b}.conv2.{t - 1}.layers.{i}" for i in range(t)]
        return [f"{b}.conv2a"] if t == 1 else [f"{b}.conv2{'abcd'[t - 1]}.{i}" for i in range(t)]

    def gate(b, y):
        g = F.relu(F.conv2d(y.mean((2, 3), keepdim=True), sd[f"{b}.gate.fc1.weight"], sd[f"{b}.gate.fc1.bias"]))
        return y * torch.sigmoid(F.conv2d(g, sd[f"{b}.gate.fc2.weight"], sd[f"{b}.gate.fc2.bias"]))

    def block(b, y):
        h = cnr(f"{b}.conv1", y)
        agg = 0
        for t in range(1, 5):
            s = h
            for pre in stream_layers(b, t):
                s = lite(pre, s)
            agg = agg + gate(b, s)
        z = F.conv2d(agg, sd[f"{b}.conv3.conv.weight"])
        if f"{b}.conv3.bn.weight" in sd:
            z = norm(f"{b}.conv3.bn", z)
        has_in = f"{b}.IN.weight" in sd
        if has_in and fam == "ain":
            z = norm(f"{b}.IN", z)
        short = cnr(f"{b}.downsample", y, relu=False) if f"{b}.downsample.conv.weight" in sd else y
        out = z + short
        if has_in and fam == "ibn":
            out = norm(f"{b}.IN", out)
        return F.relu(out)

    y = F.max_pool2d(cnr("conv1", x, stride=2, padding=3), 3, stride=2, padding=1)
    for s, stage in enumerate(("conv2", "conv3", "conv4")):
        y = block(f"{stage}.1", block(f"{stage}.0", y))
        if s < 2:
            y = F.avg_pool2d(cnr(f"pool{s + 2}.0" if fam == "ain" else f"{stage}.2.0", y), 2, stride=2)
    v = F.linear(cnr("conv5", y).mean((2, 3)), sd["fc.0.weight"], sd["fc.0.bias"])
    return F.relu(norm("fc.1", v))


def assert_reference_embedding(model, name, sd, batch=2):
    x = torch.randn(batch, 3, 64, 32, generator=torch.Generator().manual_seed(7))
    model.eval()
    with torch.no_grad():
        a, b = embedding_from_published_layout(sd, family(name), x), model(x)
    assert b.shape == (batch, 512) and bool(torch.isfinite(b).all()) and float(b.abs().max()) > 0
    assert torch.allclose(b, a, rtol=1e-5, atol=1e-5 * float(a.abs().max()))


# ----------------------------------------------------------------------------- tests: the list itself
def test_vendored_key_list():
    head = [l for l in KEYS_FILE.read_text().splitlines() if l.startswith("#")]
    assert head and "published torchreid" in head[0] and "shapes" in head[0] and "state dicts" in " ".join(head)
    pub = published()
    assert set(pub) == set(PUBLISHED)
    assert {m: len(r) for m, r in pub.items()} == {"osnet_x1_0": 567, "osnet_x0_25": 567,
                                                   "osnet_ibn_x1_0": 568, "osnet_ain_x1_0": 552}
    for m, rows in pub.items():
        assert len({k for k, _ in rows}) == len(rows), m
        expected_placement(m, dict(rows))  # every key has exactly one role, no role twice
    # the width rule used for the unpublished widths, on the published pair
    big, small = pub["osnet_x1_0"], dict(pub["osnet_x0_25"])
    assert [k for k, _ in big] == list(small)
    changed = 0
    for k, s in big:
        assert len(s) == len(small[k]) and all(e in (d, math.floor(d / 4)) for d, e in zip(s, small[k])), k
        changed += s != small[k]
    assert changed > 400
    # the three families agree on the shape of each role at x1.0
    plain = _scaled_plain_shapes("osnet_x1_0")
    for m in ("osnet_ibn_x1_0", "osnet_ain_x1_0"):
        for k, s in pub[m]:
            assert plain[_shape_role(published_role(k, family(m)))] == s, (m, k)


@pytest.mark.parametrize("name", PUBLISHED)
def test_published_in_sites(name):
    """Where the published layouts hold IN, read from the key names alone."""
    fam = family(name)
    keys = [k for k, _ in published()[name]]
    in_sites = {role_site(published_role(k, fam)) for k in keys if k.endswith(".IN.weight")}
    if "conv1.bn.running_mean" not in keys:  # an affine IN keeps no running statistics
        in_sites.add("stem")
    assert in_sites == EXPECTED_IN[fam]
    for b in block_names():
        has_in, has_bn = f"{b}.IN.weight" in keys, f"{b}.conv3.bn.weight" in keys
        assert not (has_in and f"{b}.IN.running_mean" in keys)
        assert has_bn == (f"{b}.end" not in EXPECTED_IN[fam])  # AIN: the IN takes the place of conv3.bn


# ----------------------------------------------------------------------------- tests: import
@pytest.mark.parametrize("name", PUBLISHED + DERIVED)
def test_import_places_every_tensor_by_role(name):
    sd = synthetic_checkpoint(name)
    fps = {(tuple(v.shape), v.numpy().tobytes()) for v in sd.values()}
    assert len(fps) == len(sd)  # all tensors distinct: a swap would show
    m = build_model(name, num_classes=1000).eval()
    rep = load_torchreid_weights(m, sd, verbose=False)
    assert rep["skipped"] == [] and rep["missing"] == []
    assert rep["layout"] == ("ain" if family(name) == "ain" else "plain")
    place = expected_placement(name, sd)
    assert rep["loaded"] == sorted(place)  # every published key consumed, exactly once
    assert assert_placed(m, name, sd) == set()  # nothing of the model left unfilled
    assert {s for s, op in rep["plan"].items() if op == "in"} == EXPECTED_IN[family(name)]
    assert_in_sites(m, EXPECTED_IN[family(name)])
    assert torch.equal(m.head.classifier.weight, sd["classifier.weight"])  # the classifier comes along too
    assert_reference_embedding(m, name, sd)


def test_implied_plan_per_layout():
    for name in ("osnet_ibn_x1_0", "osnet_ain_x0_25", "osnet_x0_25"):
        sd = synthetic_checkpoint(name, num_classes=10)
        conv, plan, layout = convert_state_dict(sd)
        assert {s for s, op in plan.items() if op == "in"} == EXPECTED_IN[family(name)]
        assert detect_layout(sd) == layout == ("ain" if family(name) == "ain" else "plain")
        place = expected_placement(name, sd)
        assert set(conv) == set(place) and all(torch.equal(conv[ok], sd[k]) for ok, k in place.items())
        assert set(plan) <= set(norm_sites())


def test_wrappers_prefixes_and_numpy_metadata(tmp_path):
    name = "osnet_ain_x0_25"
    raw = synthetic_checkpoint(name, num_classes=751, seed=1)
    sd = {f"module.{k}": v for k, v in raw.items()}
    # a torchreid training checkpoint: state_dict + metadata holding numpy scalars
    ck = {"state_dict": sd, "epoch": 50, "rank1": np.float64(0.7), "mAP": np.float32(0.5),
          "optimizer": {"state": {}, "param_groups": [{"lr": 0.0015}]}}
    p = tmp_path / "model.pth.tar-50"
    torch.save(ck, p)
    m = build_model(name, num_classes=751).eval()
    rep = load_torchreid_weights(m, str(p), verbose=False)
    assert rep["skipped"] == [] and len(rep["loaded"]) == len(sd)
    assert assert_placed(m, name, raw) == set()
    assert_reference_embedding(m, name, raw, batch=1)
    # a raw state dict on disk, Path argument
    p2 = tmp_path / "raw.pth"
    torch.save(raw, p2)
    m2 = build_model(name, num_classes=751)
    load_torchreid_weights(m2, p2, verbose=False)
    assert assert_placed(m2, name, raw) == set()


def test_classifier_size_mismatch_is_skipped_and_reported(capsys):
    name = "osnet_x0_25"
    sd = synthetic_checkpoint(name, num_classes=1000)
    m = build_model(name, num_classes=751).eval()
    before = m.head.classifier.weight.clone()
    rep = load_torchreid_weights(m, sd)
    assert sorted(rep["skipped"]) == ["classifier.bias", "classifier.weight"]
    assert torch.equal(m.head.classifier.weight, before)  # left at its initial value
    err = capsys.readouterr().err
    assert "skipped classifier (1000 classes in the checkpoint, 751 in the model)" in err
    assert len(err.strip().splitlines()) == 1
    # everything else arrived, and the only model tensors not filled are the classifier's
    unfilled = assert_placed(m, name, sd, skipped=rep["skipped"])
    assert unfilled == {"head.classifier.weight", "head.classifier.bias"}
    # the embedding is the reference one all the same
    assert_reference_embedding(m, name, sd, batch=1)
    # a model without classifier: skipped as well, silently when verbose=False
    m0 = build_model(name, num_classes=0)
    rep = load_torchreid_weights(m0, sd, verbose=False)
    assert len(rep["skipped"]) == 2 and capsys.readouterr().err == ""
    assert assert_placed(m0, name, sd, skipped=rep["skipped"]) == set()


def test_bnneck_head_skips_reference_head():
    name = "osnet_x0_25"
    sd = synthetic_checkpoint(name, num_classes=10)
    m = build_model(name, num_classes=10, head="bnneck")
    rep = load_torchreid_weights(m, sd, verbose=False)
    assert set(rep["skipped"]) == {"fc.0.weight", "fc.0.bias", "fc.1.weight", "fc.1.bias", "fc.1.running_mean",
                                   "fc.1.running_var", "fc.1.num_batches_tracked", "classifier.weight",
                                   "classifier.bias"}
    assert torch.equal(m.conv5.conv.weight, sd["conv5.conv.weight"])
    # the whole backbone arrived; only the BNNeck head keeps its own values
    unfilled = assert_placed(m, name, sd, skipped=rep["skipped"])
    assert unfilled and all(k.startswith("head.") for k in unfilled)


@pytest.mark.parametrize("src,dst", [("osnet_ain_x0_25", "osnet_x0_25"), ("osnet_x0_25", "osnet_ain_x0_25"),
                                     ("osnet_ibn_x1_0", "osnet_ain_x1_0"), ("osnet_x0_25", "osnet_x0_5")])
def test_wrong_architecture_is_one_line_error(src, dst):
    sd = synthetic_checkpoint(src, num_classes=10)
    m = build_model(dst, num_classes=10)
    before = {k: v.clone() for k, v in m.state_dict().items()}
    with pytest.raises(OsnasError) as e:
        load_torchreid_weights(m, sd)
    msg = _one_line(e)
    assert "does not fit" in msg
    if src.split("_")[-1] == dst.split("_")[-1]:  # same width: the normalisation differs
        assert "normalisation differs" in msg and ("missing keys" in msg or "unexpected keys" in msg)
        assert "in all)" in msg  # first few keys + the count
    else:
        assert "shape mismatches" in msg
    assert all(torch.equal(before[k], v) for k, v in m.state_dict().items())  # model untouched


def test_supernet_non_strict_keeps_other_candidates():
    name = "osnet_ain_x0_25"
    sd = synthetic_checkpoint(name, num_classes=10)
    plan = {"stem": ["bn", "in"], "conv2.0.end": ["bn", "in", "none"], "conv2.0.post": ["none", "in"]}
    plan.update({s: ["in"] for s in ("conv2.1.end", "conv3.1.end", "conv4.0.end")})
    sn = OSNet(WIDTHS["osnet_x0_25"], plan=plan, num_classes=10)
    with pytest.raises(OsnasError):
        load_torchreid_weights(sn, sd)
    rep = load_strict(sn, sd, strict=False)
    assert "conv1.norm.ops.bn.running_mean" in rep["missing"]
    assert torch.equal(sn.conv1.norm.ops["in"].weight, sd["conv1.bn.weight"])
    # every published tensor at its role; only the other candidates' ops stay unfilled
    unfilled = assert_placed(sn, name, sd)
    assert unfilled == set(rep["missing"]) and all(".ops." in k for k in unfilled)


def test_broken_files(tmp_path):
    m = build_model("osnet_x0_25")
    good = tmp_path / "good.pth"
    torch.save(synthetic_checkpoint("osnet_x0_25", num_classes=10), good)
    data = good.read_bytes()
    cases = {}
    (tmp_path / "trunc.pth").write_bytes(data[: len(data) // 2])
    cases["trunc.pth"] = "truncated or corrupt"
    (tmp_path / "garbage.pth").write_bytes(b"this is not a checkpoint\n" * 100)
    cases["garbage.pth"] = "not a PyTorch checkpoint"
    torch.save({"state_dict": {"conv1.conv.weight": torch.zeros(1)}, "x": NotAllowed()}, tmp_path / "obj.pth")
    cases["obj.pth"] = "refused"
    with open(tmp_path / "pickle.pkl", "wb") as f:
        pickle.dump({"a": NotAllowed()}, f)
    cases["pickle.pkl"] = "refused"
    torch.save(torch.zeros(3), tmp_path / "tensor.pth")
    cases["tensor.pth"] = "holding a dict"
    torch.save({"fc.weight": torch.zeros(2, 2)}, tmp_path / "other.pth")
    cases["other.pth"] = "not an OSNet checkpoint"
    torch.save({"epoch": 3}, tmp_path / "noweights.pth")
    cases["noweights.pth"] = "not a state dict"
    cases["missing.pth"] = "not found"
    for fname, expect in cases.items():
        with pytest.raises(OsnasError) as e:
            load_torchreid_weights(m, tmp_path / fname)
        msg = _one_line(e)
        assert fname in msg and expect in msg, (fname, msg)
    with pytest.raises(OsnasError) as e:
        load_torchreid_weights(m, tmp_path)
    assert "folder" in _one_line(e)
    # an unknown key in an otherwise fine state dict
    sd = synthetic_checkpoint("osnet_x0_25", num_classes=10)
    sd["conv2.0.mystery.weight"] = torch.zeros(1)
    with pytest.raises(OsnasError) as e:
        load_torchreid_weights(m, sd)
    assert "conv2.0.mystery.weight" in _one_line(e)
    # the good file itself loads (weights_only) and places every tensor
    m10 = build_model("osnet_x0_25", num_classes=10)
    load_torchreid_weights(m10, good, verbose=False)
    assert assert_placed(m10, "osnet_x0_25", torch.load(good, weights_only=True)) == set()


# ----------------------------------------------------------------------------- tests: export
@pytest.mark.parametrize("name", PUBLISHED)
def test_export_has_the_published_layout(name):
    got = [(k, tuple(v.shape)) for k, v in export_torchreid_state_dict(build_model(name, num_classes=1000)).items()]
    assert got == published()[name]  # same keys, same order, same shapes


@pytest.mark.parametrize("name", PUBLISHED + ["osnet_ain_x0_25", "osnet_x0_5"])
def test_export_of_import_is_identity(name):
    sd = synthetic_checkpoint(name, seed=2)
    m = build_model(name, num_classes=1000)
    load_torchreid_weights(m, sd, verbose=False)
    out = export_torchreid_state_dict(m)
    assert list(out) == list(sd)
    for k, v in sd.items():
        assert out[k].dtype == v.dtype and torch.equal(out[k], v), k
    out[next(iter(out))].add_(1.0)  # copies: the model is not aliased
    assert torch.equal(m.conv1.conv.weight, sd["conv1.conv.weight"])


@pytest.mark.parametrize("name", ["osnet_x0_25", "osnet_ain_x0_25", "osnet_ibn_x1_0"])
def test_import_of_export_gives_identical_outputs(name):
    src = build_model(name, num_classes=7)
    g = torch.Generator().manual_seed(3)
    with torch.no_grad():  # non-trivial statistics and affine parameters everywhere
        for k, t in src.state_dict().items():
            if k.endswith("running_var"):
                t.copy_(torch.rand(t.shape, generator=g) + 0.5)
            elif t.is_floating_point():
                t.add_(torch.randn(t.shape, generator=g) * 0.05)
            else:
                t.fill_(11)
    dst = build_model(name, num_classes=7)
    rep = load_torchreid_weights(dst, export_torchreid_state_dict(src), verbose=False)
    assert rep["skipped"] == []
    a, b = src.state_dict(), dst.state_dict()
    assert list(a) == list(b) and all(torch.equal(a[k], b[k]) for k in a)
    x = torch.randn(2, 3, 64, 32, generator=g)
    src.eval()
    dst.eval()
    with torch.no_grad():
        ya, yb = src(x), dst(x)
    assert ya.shape == (2, 512) and torch.equal(ya, yb)
    src.train()
    dst.train()
    with torch.no_grad():
        (la, fa), (lb, fb) = src(x), dst(x)
    assert la.shape == (2, 7) and torch.equal(la, lb) and torch.equal(fa, fb)


def test_export_refuses_what_torchreid_cannot_hold():
    sn = OSNet(WIDTHS["osnet_x0_25"], plan={"stem": ["bn", "in"]}, num_classes=10)
    cases = [(sn, "several ops"),
             (OSNet(WIDTHS["osnet_x0_25"], plan={"pool2": ["in"]}), "pool2=in"),
             (OSNet(WIDTHS["osnet_x0_25"], plan={"conv3.0.post": ["bn"]}), "conv3.0.post=bn"),
             (OSNet(WIDTHS["osnet_x0_25"], plan={"conv2.1.end": ["in"], "conv2.1.post": ["in"]}), "conv2.1.end=in"),
             (OSNet(WIDTHS["osnet_x0_25"], plan={"conv4.1.end": ["none"]}), "conv4.1.end=none"),
             (build_model("osnet_x0_25", num_classes=10, head="bnneck"), "bnneck head")]
    for model, expect in cases:
        with pytest.raises(OsnasError) as e:
            export_torchreid_state_dict(model)
        assert expect in _one_line(e), (expect, str(e.value))
    with pytest.raises(OsnasError) as e:
        export_torchreid_state_dict(build_model("osnet_x0_25"), layout="fastreid")
    assert "unknown layout" in _one_line(e)
    # an IBN-style block (IN after the addition) exported in the AIN key layout comes back the same
    m = build_model("osnet_ibn_x1_0", num_classes=0)
    sd = export_torchreid_state_dict(m, layout="ain")
    assert "pool2.0.conv.weight" in sd and "conv2.0.conv3.bn.weight" in sd and "conv2.0.IN.weight" in sd
    m2 = build_model("osnet_ibn_x1_0", num_classes=0)
    rep = load_torchreid_weights(m2, sd, verbose=False)
    assert rep["layout"] == "ain" and {s for s, op in rep["plan"].items() if op == "in"} == EXPECTED_IN["ibn"]
    assert all(torch.equal(v, m2.state_dict()[k]) for k, v in m.state_dict().items())
