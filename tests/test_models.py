"""The named OSNet builds: shapes, sizes (Zhou et al., ICCV 2019 / TPAMI 2021), gradients, IN placement, heads, MACs."""

import os
import subprocess
import sys

import pytest
import torch
import torch.nn as nn

from osnas.errors import OsnasError
from osnas.models import MODEL_NAMES, build_model
from osnas.models.info import count_macs, count_params, describe_in, in_table, run_info
from osnas.models.osnet import OSNet, WIDTHS

torch.set_num_threads(1)

NAMES = list(MODEL_NAMES)
C3 = {w: c[3] for w, c in WIDTHS.items()}
# published OSNet sizes (Zhou et al., ICCV 2019): parameters without classifier (M, 2 decimals) and MACs at 256x128 (M)
REF_PARAMS_M = {"osnet_x1_0": 2.17, "osnet_x0_75": 1.29, "osnet_x0_5": 0.63, "osnet_x0_25": 0.20}
REF_MACS_M = {"osnet_x1_0": 978.9, "osnet_x0_75": 571.8, "osnet_x0_5": 272.9, "osnet_x0_25": 82.3}
IBN_IN = {"conv1.norm.ops.in", "conv2.0.post.ops.in", "conv2.1.post.ops.in"}
AIN_IN = {"conv1.norm.ops.in", "conv2.0.end.ops.in", "conv2.1.end.ops.in", "conv3.1.end.ops.in", "conv4.0.end.ops.in"}


def _width(name):
    return MODEL_NAMES[name][0]


@pytest.mark.parametrize("name", NAMES)
def test_shapes_train_and_eval(name):
    torch.manual_seed(0)
    m = build_model(name, num_classes=7)
    x = torch.randn(2, 3, 64, 32)
    m.train()
    logits, feat = m(x)
    assert logits.shape == (2, 7) and feat.shape == (2, 512)
    m.eval()
    with torch.no_grad():
        emb = m(x)
    assert emb.shape == (2, 512) and torch.isfinite(emb).all()


@pytest.mark.parametrize("name", NAMES)
def test_parameter_counts(name):
    m = build_model(name, num_classes=1000)
    width = _width(name)
    n = count_params(m)  # classifier excluded
    extra = 2 * 2 * 256 if name.startswith("osnet_ibn") else 0  # IBN: IN after the addition, 2 conv2 blocks
    assert round((n - extra) / 1e6, 2) == REF_PARAMS_M[width]
    assert count_params(m, exclude_classifier=False) == n + 512 * 1000 + 1000
    if width == "osnet_x1_0" and not name.startswith("osnet_ibn"):
        assert count_params(m, exclude_classifier=False) == 2_682_508  # the reference count (plain and AIN)


def test_ain_same_size_as_plain_per_width():
    for w in WIDTHS:
        assert count_params(build_model(w)) == count_params(build_model(w.replace("osnet_", "osnet_ain_")))


@pytest.mark.parametrize("genotype", ["osnet", "osnet_ibn", "osnet_ain"])
def test_gradients_reach_every_parameter(genotype):
    torch.manual_seed(0)
    m = build_model(genotype, num_classes=5, arch="osnet_x0_25").train()
    with torch.no_grad():  # x0.25 gates have 1-2 hidden units: keep their ReLU alive for the check
        for blk in [b for s in ("conv2", "conv3", "conv4") for b in getattr(m, s)]:
            blk.gate.fc1.weight.abs_()  # its input (pooled ReLU maps) is >= 0
            blk.gate.fc1.bias.fill_(0.1)
    logits, feat = m(torch.randn(3, 3, 64, 32))
    (nn.functional.cross_entropy(logits, torch.tensor([0, 1, 2])) + feat.pow(2).mean()).backward()
    for n, p in m.named_parameters():
        assert p.grad is not None, n
        assert torch.isfinite(p.grad).all(), n
        assert p.grad.abs().sum() > 0, n


def _in_modules(m):
    return {n for n, mod in m.named_modules() if isinstance(mod, nn.InstanceNorm2d)}


@pytest.mark.parametrize("name", NAMES)
def test_in_placement_matches_reference(name):
    m = build_model(name)
    ins = _in_modules(m)
    if name.startswith("osnet_ibn"):
        assert ins == IBN_IN
        assert set(m.in_sites()) == {"stem", "conv2.0.post", "conv2.1.post"}
        # IBN keeps the branch-end BN in every block
        assert all(list(b.end.ops) == ["bn"] for s in ("conv2", "conv3", "conv4") for b in getattr(m, s))
    elif name.startswith("osnet_ain"):
        assert ins == AIN_IN
        assert set(m.in_sites()) == {"stem", "conv2.0.end", "conv2.1.end", "conv3.1.end", "conv4.0.end"}
        # IN replaces the branch-end BN (no BN there), nothing after the addition
        for blk in ("conv2.0", "conv2.1", "conv3.1", "conv4.0"):
            s, i = blk.split(".")
            assert list(getattr(m, s)[int(i)].end.ops) == ["in"]
        assert all(list(b.post.ops) == ["none"] for s in ("conv2", "conv3", "conv4") for b in getattr(m, s))
        # the stem has no BN running statistics (an IN)
        assert not any(k.startswith("conv1.") and "running" in k for k in m.state_dict())
    else:
        assert ins == set() and m.in_sites() == []
    for mod in m.modules():
        if isinstance(mod, nn.InstanceNorm2d):
            assert mod.affine and not mod.track_running_stats


def test_describe_in_and_table():
    d = describe_in(build_model("osnet_ain_x0_25"))
    assert list(d) == ["stem", "conv2.0.end", "conv2.1.end", "conv3.1.end", "conv4.0.end"]
    assert "AIN" in d["conv2.0.end"]
    d = describe_in(build_model("osnet_ibn_x1_0"))
    assert list(d) == ["stem", "conv2.0.post", "conv2.1.post"] and "addition" in d["conv2.0.post"]
    assert describe_in(build_model("osnet_x0_25")) == {}
    rows = in_table(build_model("osnet_x0_25"))
    assert len(rows) == 16 and rows[0][:2] == ("stem", "bn")
    sn = OSNet(WIDTHS["osnet_x0_25"], plan={"stem": ["bn", "in"], "conv2.0.post": ["none", "in"]})
    d = describe_in(sn)
    assert set(d) == {"stem", "conv2.0.post"} and "candidate" in d["stem"]


def test_bnneck_head():
    torch.manual_seed(0)
    m = build_model("osnet_ain_x0_25", num_classes=6, head="bnneck")
    logits, feat = m.train()(torch.randn(4, 3, 64, 32))
    assert logits.shape == (4, 6) and feat.shape == (4, C3["osnet_x0_25"])
    with torch.no_grad():
        emb = m.eval()(torch.randn(2, 3, 64, 32))
    assert emb.shape == (2, C3["osnet_x0_25"]) and m.feature_dim == C3["osnet_x0_25"]
    assert m.head.classifier.bias is None and not m.head.bottleneck.bias.requires_grad


def test_feature_dim_option():
    m = build_model("osnet_x0_25", num_classes=3, feature_dim=256).eval()
    with torch.no_grad():
        assert m(torch.randn(2, 3, 64, 32)).shape == (2, 256)


def test_last_stride_one_doubles_final_map():
    x = torch.randn(1, 3, 128, 64)
    with torch.no_grad():
        f2 = build_model("osnet_x0_25", last_stride=2).eval().featuremaps(x)
        f1 = build_model("osnet_x0_25", last_stride=1).eval().featuremaps(x)
    assert f2.shape == (1, 128, 8, 4) and f1.shape == (1, 128, 16, 8)
    with torch.no_grad():
        assert build_model("osnet_x0_25", last_stride=1).eval()(x).shape == (1, 512)


def test_macs_match_reference():
    for w, ref in REF_MACS_M.items():
        macs = count_macs(build_model(w, num_classes=1000), 256, 128)
        assert abs(macs / 1e6 - ref) / ref < 1e-3, (w, macs)
    # IN placement does not change the MACs; the input size scales them
    assert count_macs(build_model("osnet_ain_x0_25"), 256, 128) == count_macs(build_model("osnet_x0_25"), 256, 128)
    assert count_macs(build_model("osnet_x0_25"), 128, 64) < count_macs(build_model("osnet_x0_25"), 256, 128) / 3.5


def test_count_macs_restores_mode_and_rejects_tiny():
    m = build_model("osnet_x0_25").train()
    count_macs(m, 64, 32)
    assert m.training
    with pytest.raises(OsnasError):
        count_macs(m, 16, 8)


def test_run_info_in_process(capsys):
    r = run_info("osnet_ain_x0_25", 256, 128)
    out = capsys.readouterr().out
    assert r["in_sites"] == ["stem", "conv2.0.end", "conv2.1.end", "conv3.1.end", "conv4.0.end"]
    assert abs(r["macs"] / 1e6 - 82.3) < 0.1 and "82.3M" in out and "conv4.0.end" in out
    with pytest.raises(OsnasError):
        run_info("osnet_x9", 256, 128)


def test_osnas_info_cli(tmp_path):
    g = tmp_path / "g.yaml"
    g.write_text("plan:\n  stem: in\n  conv3.0.post: in\narch: osnet_x0_25\nname: mine\n")
    r = subprocess.run([sys.executable, "-m", "osnas", "info", str(g), "--height", "128", "--width", "64"],
                       capture_output=True, text=True, timeout=120, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert r.returncode == 0, r.stderr
    assert "conv3.0.post" in r.stdout and "IN sites     2" in r.stdout and "MACs" in r.stdout


def test_osnas_info_bad_model_in_process(capsys):
    from osnas.cli import main

    assert main(["info", "osnet_x9"]) == 2  # (the subprocess path is exercised by test_osnas_extract_cli)
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "osnet_x9" in err and "Traceback" not in err
