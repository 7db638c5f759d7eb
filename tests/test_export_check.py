"""`osnas export --check`: ONNX Runtime vs PyTorch at several batch sizes through one dynamic-batch
graph, per-IN-site bf16/fp16 drift, rank-1 on a dataset, exit codes (1: check failed, 2: bad input)."""

import json
import math

import numpy as np
import pytest
import torch

from osnas.cli import main
from osnas.errors import OsnasError
from osnas.models.deploy import export_onnx
from osnas.models.export_check import (ExportCheckFailed, check_onnx, check_report, embedding_drift,
                                       _site_in_low_precision, format_report, parse_batches, rank1_cosine,
                                       run_export_check, site_drift)
from test_deploy import _model, _retrain_checkpoint

pytest.importorskip("onnxruntime")
torch.set_num_threads(1)
pytestmark = pytest.mark.filterwarnings("ignore::FutureWarning")
H, W = 64, 32


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """name -> (model with non-trivial BN statistics, its ONNX file at 64x32)."""
    d = tmp_path_factory.mktemp("onnx")
    return {n: (m, export_onnx(m, d / f"{n}.onnx", H, W)) for n in ("osnet_x0_25", "osnet_ain_x0_25")
            for m in [_model(n)]}


@pytest.mark.parametrize("name", ["osnet_x0_25", "osnet_ain_x0_25"])
def test_onnx_matches_pytorch_at_batches_1_and_3(exported, name):
    m, path = exported[name]
    r = check_report(m, path, H, W, batches=[1, 3])
    eq = r["equality"]
    assert r["pass"] and eq["pass"] and eq["error"] is None
    assert eq["dynamic_batch"] is True  # exported at batch 2: 1 and 3 go through the dynamic axis
    assert [b["batch"] for b in eq["batches"]] == [1, 3]
    assert all(0 <= b["rel_err"] <= 1e-4 and b["pass"] for b in eq["batches"])
    assert r["versions"]["onnxruntime"] and r["versions"]["torch"] == torch.__version__
    # one drift row per IN site, in network order; none for plain OSNet
    rows = r["drift"]["sites"]
    assert [s["site"] for s in rows] == m.in_sites() and all(s["op"] == "in" for s in rows)
    assert len(rows) == (5 if "ain" in name else 0)
    for s in rows:
        for dt in ("bf16", "fp16"):
            assert s[dt]["rel_l2"] > 0 and s[dt]["one_minus_cos"] >= 0
        assert s["fp16"]["rel_l2"] < s["bf16"]["rel_l2"]  # 10 vs 7 mantissa bits, no overflow at these sizes
    c = r["drift"]["bn_contrast"]
    assert c["op"] == "bn" and c["site"] == ("stem" if name == "osnet_x0_25" else "pool2")
    assert r["drift"]["whole_bf16"]["rel_l2"] > 0
    text = format_report(r)
    assert "PASS" in text and ("(no IN site)" in text) == (name == "osnet_x0_25")


def test_site_drift_restores_the_model_and_measures_rounding_only():
    m = _model("osnet_ain_x0_25")
    x = torch.randn(4, 3, H, W)
    with torch.no_grad():
        before = m(x)
    mods = [id(mod) for mod in m.modules()]
    d = site_drift(m, x)
    with torch.no_grad():
        assert torch.equal(m(x), before)  # every site back in fp32
    assert [id(mod) for mod in m.modules()] == mods
    assert d["sites"][0]["shape"] == [16, H // 2, W // 2]  # stem output of x0.25 at stride 2
    # the substitute computed in fp32 is bit-identical: the drift measured is the rounding alone
    for site in ("stem", "conv3.1.end", "pool2"):
        with _site_in_low_precision(m, site, torch.float32), torch.no_grad():
            y = m(x)
        assert torch.equal(y, before), site
    assert embedding_drift(before, before) == {"rel_l2": 0.0, "one_minus_cos": 0.0}
    assert embedding_drift(before * 1.01, before)["rel_l2"] == pytest.approx(0.01)


def _corrupt(path, scale=1.05):
    """Scale the largest initializer (a conv weight) of the ONNX file in place."""
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(path))
    init = max(model.graph.initializer, key=lambda t: int(np.prod(t.dims)))
    a = numpy_helper.to_array(init) * scale
    init.CopyFrom(numpy_helper.from_array(a.astype(np.float32), init.name))
    onnx.save(model, str(path))


def test_corrupted_onnx_fails(exported, tmp_path):
    m, path = exported["osnet_ain_x0_25"]
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(path.read_bytes())
    _corrupt(bad)
    r = check_onnx(m, bad, H, W, batches=[1, 3])
    assert not r["pass"] and r["error"] is None and all(b["rel_err"] > 1e-4 for b in r["batches"])
    # a file ONNX Runtime cannot load is a failed check too, not a crash
    (tmp_path / "cut.onnx").write_bytes(path.read_bytes()[:5000])
    r = check_onnx(m, tmp_path / "cut.onnx", H, W, batches=[1])
    assert not r["pass"] and "ONNX Runtime could not run" in r["error"]


def test_cli_check_exit_codes(tmp_path, capsys, monkeypatch):
    import osnas.models.deploy as deploy

    out = tmp_path / "ain.onnx"
    args = ["export", "--model", "osnet_ain_x0_25", "--format", "onnx", "--out", str(out), "--check",
            "--height", str(H), "--width", str(W), "--check-batches", "1,3"]
    assert main(args) == 0
    printed = capsys.readouterr().out
    rep = json.loads((tmp_path / "ain.onnx.check.json").read_text())
    assert rep["pass"] and [s["site"] for s in rep["drift"]["sites"]] == rep["in_sites"] and len(rep["in_sites"]) == 5
    assert "conv4.0.end" in printed and "PASS" in printed
    # the same export, altered after writing: the check fails with exit code 1 and one error line
    real = deploy.export_onnx

    def corrupting(*a, **kw):
        p = real(*a, **kw)
        _corrupt(p)
        return p

    monkeypatch.setattr(deploy, "export_onnx", corrupting)
    assert main(args) == 1
    err = capsys.readouterr().err.strip().splitlines()
    errors = [ln for ln in err if ln.startswith("osnas: error:")]
    assert len(errors) == 1 and "differs from PyTorch" in errors[0], err
    assert json.loads((tmp_path / "ain.onnx.check.json").read_text())["pass"] is False
    with pytest.raises(ExportCheckFailed) as e:
        run_export_check(model="osnet_x0_25", out=str(tmp_path / "p.onnx"), height=H, width=W, batches=[1])
    assert e.value.exit_code == 1 and e.value.report["pass"] is False
    assert run_export_check(model="osnet_x0_25", out=str(tmp_path / "p.onnx"), height=H, width=W, batches=[1],
                            strict=False)["pass"] is False


def test_run_export_check_from_a_checkpoint(tmp_path, capsys):
    _, ck, _ = _retrain_checkpoint(tmp_path)
    r = run_export_check(checkpoint=str(ck), out=str(tmp_path / "m.onnx"), height=H, width=W, batches="1,3")
    assert r["pass"] and r["weights"] == str(ck) and len(r["drift"]["sites"]) == 5
    on_disk = json.loads((tmp_path / "m.onnx.check.json").read_text())
    assert on_disk["equality"]["batches"] == json.loads(json.dumps(r["equality"]["batches"]))
    assert "weights: " + str(ck) in capsys.readouterr().out


@pytest.mark.parametrize("extra, expect", [
    (["--format", "torchscript", "--check"], "--format onnx"),
    (["--check-target", "synth0"], "go with --check"),
    (["--check", "--check-batches", "1,x"], "not a batch size"),
    (["--check", "--check-batches", "0"], "out of range"),
    (["--check", "--data-root", "somewhere"], "--check-target"),
])
def test_cli_check_bad_input_exits_2(tmp_path, capsys, extra, expect):
    out = tmp_path / "m.out"
    assert main(["export", "--model", "osnet_x0_25", "--out", str(out), "--height", str(H), "--width", str(W)]
                + extra) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and expect in err[0], err
    assert not out.exists()


def test_parse_batches():
    assert parse_batches("1, 3,8,3") == [1, 3, 8]
    assert parse_batches(None) == [1, 3, 8]
    for bad in ("", "2.5", "-1"):
        with pytest.raises(OsnasError):
            parse_batches(bad)


def test_rank1_cosine_matches_osnas_metrics():
    from osnas.metrics import compute_distance_matrix, evaluate_rank

    g = torch.Generator().manual_seed(0)
    qf, gf = torch.randn(40, 16, generator=g), torch.randn(90, 16, generator=g)
    qf[:5] = gf[:5]  # exact matches, some with the same camera (removed)
    q_pids, g_pids = np.arange(40) % 12, np.arange(90) % 15
    q_cams, g_cams = np.arange(40) % 2, np.arange(90) % 3
    r = evaluate_rank(compute_distance_matrix(qf, gf, "cosine"), q_pids, g_pids, q_cams, g_cams, max_rank=1)
    assert rank1_cosine(qf, gf, q_pids, g_pids, q_cams, g_cams) == pytest.approx(float(r["cmc"][0]))


def test_retrieval_on_a_target_dataset(exported, synth_root):
    from osnas.data import build_dataset

    m, path = exported["osnet_ain_x0_25"]
    ds = build_dataset("synth0", root=synth_root)
    r = check_report(m, path, H, W, batches=[1, 3], dataset=ds)
    rk, im = r["retrieval"], r["equality"]["images"]
    assert r["pass"] and im["n"] == len(ds.query) + len(ds.gallery) and im["rel_err"] <= 1e-4
    assert rk["num_query"] == len(ds.query) and 0 <= rk["fp32"] <= 1 and 0 <= rk["bf16"] <= 1
    assert rk["bf16_change"] == pytest.approx(rk["bf16"] - rk["fp32"])
    assert rk["onnx"] == rk["fp32"]  # equal within 1e-4: the same ranking
    assert f"rank-1 on {ds.name}" in format_report(r)


def test_embedding_drift_resolves_angles_below_float_rounding():
    """1 - cos is taken as half the squared distance of the unit vectors: exactly 0 for identical
    rows on any CPU, and a rotation of 1e-9 rad reads as 5e-19 (1 - cos itself rounds to 0 there);
    a zero row against a non-zero one is a drift of 1, a non-finite row of inf."""
    g = torch.Generator().manual_seed(0)
    ref = torch.randn(5, 512, generator=g, dtype=torch.float64)
    assert embedding_drift(ref, ref) == {"rel_l2": 0.0, "one_minus_cos": 0.0}
    a, b = torch.zeros(1, 2, dtype=torch.float64), torch.zeros(1, 2, dtype=torch.float64)
    a[0, 0], b[0, 0], b[0, 1] = 1.0, math.cos(1e-9), math.sin(1e-9)
    assert embedding_drift(b, a)["one_minus_cos"] == pytest.approx(5e-19, rel=1e-6)
    assert embedding_drift(torch.zeros(1, 2), a.float())["one_minus_cos"] == 1.0
    assert embedding_drift(torch.tensor([[float("nan"), 1.0]]), a.float())["one_minus_cos"] == math.inf
