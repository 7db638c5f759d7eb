"""Loading torchreid OSNet checkpoints: layouts, equality with the reference forward, errors.

The reference networks are re-implemented in tests/_torchreid_ref.py (no torchreid package);
their state-dict keys and shapes are checked against the shared key list of the published
checkpoints, then random weights and BN statistics go through the importer and the eval
embeddings must match.
"""

import os
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch

from _torchreid_ref import build_reference, randomise_, read_keys_file
from osnas.errors import OsnasError
from osnas.models import build_model, load_torchreid_weights
from osnas.models.osnet import OSNet, WIDTHS
from osnas.models.torchreid_import import convert_state_dict, detect_layout
from osnas.models.torchreid_import import load_torchreid_weights as load_strict

torch.set_num_threads(1)

KEYS_FILE = Path(os.environ.get("OSNAS_TORCHREID_KEYS", "/work/shared/reference/torchreid_state_dict_keys.txt"))
PUBLISHED = ["osnet_x1_0", "osnet_x0_25", "osnet_ibn_x1_0", "osnet_ain_x1_0"]


class NotAllowed:  # a pickled arbitrary object: weights_only loading must refuse it
    def __reduce__(self):
        return (os.getcwd, ())


def _ref(name, num_classes=1000, seed=0):
    return randomise_(build_reference(name, num_classes), seed).eval()


def _one_line(e):
    s = str(e.value)
    assert "\n" not in s and s
    return s


@pytest.mark.skipif(not KEYS_FILE.is_file(), reason=f"{KEYS_FILE} not available")
@pytest.mark.parametrize("name", PUBLISHED)
def test_reference_layout_matches_published_keys(name):
    expected = read_keys_file(KEYS_FILE, name)
    got = [(k, tuple(v.shape)) for k, v in build_reference(name, 1000).state_dict().items()]
    assert got == expected


@pytest.mark.parametrize("name", PUBLISHED + ["osnet_ain_x0_25", "osnet_x0_5"])
def test_import_gives_reference_embedding(name):
    ref = _ref(name)
    m = build_model(name, num_classes=1000).eval()
    rep = load_torchreid_weights(m, ref.state_dict(), verbose=False)
    assert rep["skipped"] == [] and rep["layout"] == ("ain" if "_ain_" in name else "plain")
    x = torch.randn(2, 3, 64, 32)
    with torch.no_grad():
        a, b = ref(x), m(x)
    assert a.shape == b.shape == (2, 512)
    assert torch.allclose(a, b, rtol=1e-5, atol=1e-5 * float(a.abs().max()))
    # the classifier comes along too
    assert torch.equal(m.head.classifier.weight, ref.classifier.weight)


def test_implied_plan_per_layout():
    for name, ins in [("osnet_ibn_x1_0", {"stem", "conv2.0.post", "conv2.1.post"}),
                      ("osnet_ain_x0_25", {"stem", "conv2.0.end", "conv2.1.end", "conv3.1.end", "conv4.0.end"}),
                      ("osnet_x0_25", set())]:
        sd = build_reference(name, 10).state_dict()
        _, plan, layout = convert_state_dict(sd)
        assert {s for s, op in plan.items() if op == "in"} == ins
        assert detect_layout(sd) == layout


def test_wrappers_prefixes_and_numpy_metadata(tmp_path):
    ref = _ref("osnet_ain_x0_25", num_classes=751)
    sd = {f"module.{k}": v for k, v in ref.state_dict().items()}
    # a torchreid training checkpoint: state_dict + metadata holding numpy scalars
    ck = {"state_dict": sd, "epoch": 50, "rank1": np.float64(0.7), "mAP": np.float32(0.5),
          "optimizer": {"state": {}, "param_groups": [{"lr": 0.0015}]}}
    p = tmp_path / "model.pth.tar-50"
    torch.save(ck, p)
    m = build_model("osnet_ain_x0_25", num_classes=751).eval()
    rep = load_torchreid_weights(m, str(p), verbose=False)
    assert rep["skipped"] == [] and len(rep["loaded"]) == len(sd)
    x = torch.randn(1, 3, 64, 32)
    with torch.no_grad():
        assert torch.allclose(ref(x), m(x), rtol=1e-5, atol=1e-5)
    # a raw state dict on disk, Path argument
    p2 = tmp_path / "raw.pth"
    torch.save(ref.state_dict(), p2)
    load_torchreid_weights(build_model("osnet_ain_x0_25", num_classes=751), p2, verbose=False)


def test_classifier_size_mismatch_is_skipped_and_reported(capsys):
    ref = _ref("osnet_x0_25", num_classes=1000)
    m = build_model("osnet_x0_25", num_classes=751).eval()
    before = m.head.classifier.weight.clone()
    rep = load_torchreid_weights(m, ref.state_dict())
    assert sorted(rep["skipped"]) == ["classifier.bias", "classifier.weight"]
    assert torch.equal(m.head.classifier.weight, before)  # left at its initial value
    err = capsys.readouterr().err
    assert "skipped classifier (1000 classes in the checkpoint, 751 in the model)" in err
    assert len(err.strip().splitlines()) == 1
    # the embedding is the reference one all the same
    x = torch.randn(1, 3, 64, 32)
    with torch.no_grad():
        assert torch.allclose(ref(x), m(x), rtol=1e-5, atol=1e-5 * float(ref(x).abs().max()))
    # a model without classifier: skipped as well, silently when verbose=False
    rep = load_torchreid_weights(build_model("osnet_x0_25", num_classes=0), ref.state_dict(), verbose=False)
    assert len(rep["skipped"]) == 2 and capsys.readouterr().err == ""


def test_bnneck_head_skips_reference_head():
    ref = _ref("osnet_x0_25", num_classes=10)
    m = build_model("osnet_x0_25", num_classes=10, head="bnneck")
    rep = load_torchreid_weights(m, ref.state_dict(), verbose=False)
    assert set(rep["skipped"]) == {"fc.0.weight", "fc.0.bias", "fc.1.weight", "fc.1.bias", "fc.1.running_mean",
                                   "fc.1.running_var", "fc.1.num_batches_tracked", "classifier.weight",
                                   "classifier.bias"}
    assert torch.equal(m.conv5.conv.weight, ref.conv5.conv.weight)


@pytest.mark.parametrize("src,dst", [("osnet_ain_x0_25", "osnet_x0_25"), ("osnet_x0_25", "osnet_ain_x0_25"),
                                     ("osnet_ibn_x1_0", "osnet_ain_x1_0"), ("osnet_x0_25", "osnet_x0_5")])
def test_wrong_architecture_is_one_line_error(src, dst):
    ref = build_reference(src, 10)
    m = build_model(dst, num_classes=10)
    before = {k: v.clone() for k, v in m.state_dict().items()}
    with pytest.raises(OsnasError) as e:
        load_torchreid_weights(m, ref.state_dict())
    msg = _one_line(e)
    assert "does not fit" in msg
    if src.split("_")[-1] == dst.split("_")[-1]:  # same width: the normalisation differs
        assert "normalisation differs" in msg and ("missing keys" in msg or "unexpected keys" in msg)
        assert "in all)" in msg  # first few keys + the count
    else:
        assert "shape mismatches" in msg
    assert all(torch.equal(before[k], v) for k, v in m.state_dict().items())  # model untouched


def test_supernet_non_strict_keeps_other_candidates():
    ref = _ref("osnet_ain_x0_25", num_classes=10)
    plan = {"stem": ["bn", "in"], "conv2.0.end": ["bn", "in", "none"], "conv2.0.post": ["none", "in"]}
    plan.update({s: ["in"] for s in ("conv2.1.end", "conv3.1.end", "conv4.0.end")})
    sn = OSNet(WIDTHS["osnet_x0_25"], plan=plan, num_classes=10)
    with pytest.raises(OsnasError):
        load_torchreid_weights(sn, ref.state_dict())
    rep = load_strict(sn, ref.state_dict(), strict=False)
    assert "conv1.norm.ops.bn.running_mean" in rep["missing"]
    assert torch.equal(sn.conv1.norm.ops["in"].weight, ref.conv1.bn.weight)


def test_broken_files(tmp_path):
    m = build_model("osnet_x0_25")
    good = tmp_path / "good.pth"
    torch.save(build_reference("osnet_x0_25", 10).state_dict(), good)
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
    sd = dict(build_reference("osnet_x0_25", 10).state_dict())
    sd["conv2.0.mystery.weight"] = torch.zeros(1)
    with pytest.raises(OsnasError) as e:
        load_torchreid_weights(m, sd)
    assert "conv2.0.mystery.weight" in _one_line(e)
