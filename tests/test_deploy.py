"""Deployment: BN folding, the optimised inference module, TorchScript/ONNX export, extract/export."""

import os
import subprocess
import sys

import numpy as np
import pytest
import torch
import torch.nn as nn
from PIL import Image

from osnas.errors import OsnasError
from osnas.models import build_model
from osnas.models.torchreid_import import export_torchreid_state_dict
from osnas.models.deploy import (DeployedModel, export_onnx, export_torchscript, fold_bn,
                                 load_image, load_model_from_checkpoint, optimize_for_inference, run_export,
                                 run_extract)
from osnas.models.osnet import OSNet, WIDTHS

torch.set_num_threads(1)
pytestmark = pytest.mark.filterwarnings("ignore::FutureWarning")
SUB_ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


def _randomise_stats(m, seed=0):
    """Non-trivial BN statistics and affine parameters (so that folding is really tested)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for n, t in m.state_dict().items():
            if n.endswith("running_var"):
                t.copy_(torch.rand(t.shape, generator=g) * 1.5 + 0.5)
            elif n.endswith("running_mean"):
                t.copy_(torch.randn(t.shape, generator=g) * 0.2)
            elif t.is_floating_point() and t.dim() == 1:
                t.add_(torch.randn(t.shape, generator=g) * 0.1)
    return m.eval()


def _rel(a, b):
    return float((a - b).norm() / b.norm())


def _model(name="osnet_ain_x0_25", **kw):
    torch.manual_seed(0)
    return _randomise_stats(build_model(name, **kw))


PLANS = {
    "plain": ("osnet", {}),
    "ibn": ("osnet_ibn", {}),
    "ain": ("osnet_ain", {}),
    "bnneck_ls1": ("osnet_ain", {"head": "bnneck", "last_stride": 1, "num_classes": 5}),
}


@pytest.mark.parametrize("variant", list(PLANS))
def test_fold_bn_equals_eval_forward(variant):
    g, kw = PLANS[variant]
    m = _model(g, arch="osnet_x0_25", **kw)
    x = torch.randn(3, 3, 128, 64)
    with torch.no_grad():
        ref = m(x)
        f = fold_bn(m)
        y = f(x)
    assert y.shape == ref.shape and y.dtype == torch.float32
    assert _rel(y, ref) < 1e-4
    assert not any(isinstance(mod, nn.modules.batchnorm._BatchNorm) for mod in f.modules())
    n_in = sum(isinstance(mod, nn.InstanceNorm2d) for mod in m.modules())
    assert sum(type(mod).__name__ == "InstanceNormCL" for mod in f.modules()) == n_in


def test_fold_bn_unusual_plan():
    # IN in transitions and conv5, a BN after the addition (kept as an affine), no end norm
    plan = {"stem": ["in"], "conv2.0.post": ["bn"], "conv3.0.end": ["none"], "pool2": ["in"], "conv5": ["in"],
            "conv4.1.post": ["in"]}
    torch.manual_seed(1)
    m = _randomise_stats(OSNet(WIDTHS["osnet_x0_25"], plan=plan))
    x = torch.randn(2, 3, 64, 32)
    with torch.no_grad():
        assert _rel(fold_bn(m)(x), m(x)) < 1e-4
        assert _rel(optimize_for_inference(m, backend="eager")(x), m(x)) < 1e-4


def test_optimize_eager_fp32_and_bf16():
    m = _model()
    m.train()
    state = {k: v.clone() for k, v in m.state_dict().items()}
    x = torch.randn(4, 3, 128, 64)
    f = optimize_for_inference(m, backend="eager")
    assert m.training and all(torch.equal(state[k], v) for k, v in m.state_dict().items())  # untouched
    m.eval()
    with torch.no_grad():
        ref = m(x)
    y = f(x)
    assert isinstance(f, DeployedModel) and not f.training and f.feature_dim == 512
    assert y.dtype == torch.float32 and not y.requires_grad and _rel(y, ref) < 1e-4
    y /= 2  # an ordinary tensor, not an inference tensor
    assert all(p.is_contiguous(memory_format=torch.channels_last) for p in f.net.parameters() if p.dim() == 4)
    fb = optimize_for_inference(m, bf16=True, backend="eager")
    yb = fb(x)
    assert yb.dtype == torch.float32 and _rel(yb, ref) < 2e-2
    assert any(p.dtype == torch.bfloat16 for p in fb.net.parameters())
    assert fb.net.head.fc.weight.dtype == torch.float32
    with pytest.raises(OsnasError):
        fb.train()
    f2 = optimize_for_inference(m, channels_last=False, backend="eager")
    assert _rel(f2(x), ref) < 1e-4


def test_optimize_jit_backend_any_batch_and_size():
    m = _model()
    f = optimize_for_inference(m, backend="jit", example_size=(64, 32))
    fb = optimize_for_inference(m, backend="jit", bf16=True, example_size=(64, 32))
    for shape in [(1, 3, 64, 32), (5, 3, 128, 64)]:
        x = torch.randn(*shape)
        with torch.no_grad():
            ref = m(x)
        assert _rel(f(x), ref) < 1e-4
        assert _rel(fb(x), ref) < 2e-2


def test_optimize_rejects_bad_input():
    sn = OSNet(WIDTHS["osnet_x0_25"], plan={"stem": ["bn", "in"]})
    for bad, kw in [(sn, {}), (nn.Linear(2, 2), {}), (_model(), {"backend": "tensorrt"})]:
        with pytest.raises(OsnasError) as e:
            optimize_for_inference(bad, **kw)
        assert "\n" not in str(e.value)
    f = optimize_for_inference(_model(), backend="eager")
    with pytest.raises(OsnasError):
        optimize_for_inference(f)


def test_torchscript_round_trip(tmp_path):
    m = _model()
    p = export_torchscript(m, tmp_path / "m.pt", 128, 64)
    loaded = torch.jit.load(str(p))
    x = torch.randn(3, 3, 128, 64)
    with torch.no_grad():
        assert _rel(loaded(x), m(x)) < 1e-4


def test_onnx_round_trip(tmp_path):
    onnx = pytest.importorskip("onnx")
    m = _model()
    p = export_onnx(m, tmp_path / "m.onnx", 128, 64)
    model = onnx.load(str(p))
    onnx.checker.check_model(model)
    ops = {n.op_type for n in model.graph.node}
    assert "InstanceNormalization" in ops and "BatchNormalization" not in ops
    x = torch.randn(3, 3, 128, 64)  # exported with batch 2: the batch axis is dynamic
    with torch.no_grad():
        ref = m(x).numpy()
    try:
        import onnxruntime as ort

        sess = ort.InferenceSession(str(p), providers=["CPUExecutionProvider"])
        y = sess.run(None, {sess.get_inputs()[0].name: x.numpy()})[0]
    except ImportError:
        from onnx.reference import ReferenceEvaluator

        y = ReferenceEvaluator(model).run(None, {"images": x.numpy()})[0]
    assert y.shape == (3, 512)
    assert np.linalg.norm(y - ref) / np.linalg.norm(ref) < 1e-4


# ----------------------------------------------------------------------------- checkpoints, extract, export
def _retrain_checkpoint(tmp_path, name="osnet_ain_x0_25", **kw):
    from osnas.models.genotype import named_genotype
    from osnas.utils import save_checkpoint

    m = _model(name, num_classes=7, **kw)
    g = named_genotype("osnet_ain" if "_ain_" in name else "osnet")
    ck = {"model": m.state_dict(), "genotype": g.to_dict(), "arch": "osnet_x0_25", "head": kw.get("head", "reference"),
          "feature_dim": 512, "last_stride": kw.get("last_stride", 2), "num_classes": 7, "epoch": 3}
    p = tmp_path / "checkpoint.pth"
    save_checkpoint(ck, p)
    return m, p, ck


def test_load_model_from_checkpoint(tmp_path):
    from osnas.utils import save_checkpoint

    m, p, ck = _retrain_checkpoint(tmp_path, head="bnneck", last_stride=1)
    m2, ck2 = load_model_from_checkpoint(p)
    assert not m2.training and m2.head_type == "bnneck" and m2.last_stride == 1 and ck2["epoch"] == 3
    x = torch.randn(2, 3, 64, 32)
    with torch.no_grad():
        assert torch.equal(m2(x), m(x))
    for drop in ("genotype", "last_stride"):
        bad = {k: v for k, v in ck.items() if k != drop}
        save_checkpoint(bad, tmp_path / "bad.pth")
        with pytest.raises(OsnasError) as e:
            load_model_from_checkpoint(tmp_path / "bad.pth")
        assert drop in str(e.value) and "bad.pth" in str(e.value)
    save_checkpoint({**ck, "arch": "osnet_x1_0"}, tmp_path / "wrong.pth")
    with pytest.raises(OsnasError) as e:
        load_model_from_checkpoint(tmp_path / "wrong.pth")
    assert "do not fit" in str(e.value) and "\n" not in str(e.value)


def _images(folder, n=5, size=(40, 90)):
    rng = np.random.default_rng(0)
    paths = []
    for i in range(n):
        sub = folder / ("a" if i % 2 else "b/c")
        sub.mkdir(parents=True, exist_ok=True)
        ext = [".jpg", ".png", ".bmp", ".JPG", ".png"][i % 5]
        p = sub / f"img{i}{ext}"
        Image.fromarray(rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)).save(
            p, format={"jpg": "JPEG", "png": "PNG", "bmp": "BMP"}[ext[1:].lower()])
        paths.append(p)
    (folder / "notes.txt").write_text("not an image")
    return paths


def test_run_extract_with_checkpoint_and_with_torchreid_weights(tmp_path, capsys):
    m, ck, _ = _retrain_checkpoint(tmp_path)
    imgs = _images(tmp_path / "imgs")
    out = tmp_path / "feats.npz"
    r = run_extract(checkpoint=str(ck), images=str(tmp_path / "imgs"), out=str(out), batch_size=2, height=64,
                    width=32, backend="eager")
    d = np.load(out)
    names = list(d["names"])
    assert r["n"] == 5 and d["features"].shape == (5, 512) and d["features"].dtype == np.float32
    assert names == sorted(p.relative_to(tmp_path / "imgs").as_posix() for p in imgs)
    x = torch.stack([load_image(tmp_path / "imgs" / n, 64, 32) for n in names])
    with torch.no_grad():
        ref = m(x).numpy()
    assert np.linalg.norm(d["features"] - ref) / np.linalg.norm(ref) < 1e-4
    # a named model with torchreid weights, bf16
    w = tmp_path / "w.pth"
    torch.save(export_torchreid_state_dict(_randomise_stats(build_model("osnet_x0_25", num_classes=1000))), w)
    run_extract(model="osnet_x0_25", weights=str(w), images=str(tmp_path / "imgs"), out=str(tmp_path / "f2.npz"),
                height=64, width=32, bf16=True, backend="eager")
    assert np.load(tmp_path / "f2.npz")["features"].shape == (5, 512)
    assert "skipped classifier" in capsys.readouterr().err


def test_run_extract_errors(tmp_path):
    (tmp_path / "empty" / "sub").mkdir(parents=True)
    (tmp_path / "empty" / "x.txt").write_text("")
    _, ck, _ = _retrain_checkpoint(tmp_path)
    cases = [
        (dict(checkpoint=str(ck), images=str(tmp_path / "empty")), "no images"),
        (dict(checkpoint=str(ck), images=str(tmp_path / "nope")), "not found"),
        (dict(images=str(tmp_path / "empty")), "expected --checkpoint"),
        (dict(checkpoint=str(ck), model="osnet_x0_25", images=str(tmp_path)), "not both"),
        (dict(model="osnet_x0_25", images=str(tmp_path), height=16), "too small"),
    ]
    for kw, expect in cases:
        with pytest.raises(OsnasError) as e:
            run_extract(out=str(tmp_path / "o.npz"), **{"height": 64, "width": 32, **kw})
        assert expect in str(e.value) and "\n" not in str(e.value), (kw, str(e.value))
    assert not (tmp_path / "o.npz").exists()


def test_run_export_both_formats(tmp_path):
    _, ck, _ = _retrain_checkpoint(tmp_path)
    run_export(checkpoint=str(ck), fmt="torchscript", out=str(tmp_path / "m.pt"), height=64, width=32)
    assert torch.jit.load(str(tmp_path / "m.pt"))(torch.randn(1, 3, 64, 32)).shape == (1, 512)
    run_export(model="osnet_ibn_x1_0", fmt="onnx", out=str(tmp_path / "m.onnx"), height=64, width=32)
    assert (tmp_path / "m.onnx").stat().st_size > 1_000_000
    with pytest.raises(OsnasError):
        run_export(model="osnet_x0_25", fmt="tflite", out=str(tmp_path / "m.x"))


def test_osnas_extract_cli(tmp_path):
    _, ck, _ = _retrain_checkpoint(tmp_path)
    _images(tmp_path / "imgs", n=3)
    out = tmp_path / "f.npz"
    cmd = [sys.executable, "-m", "osnas", "extract", "--checkpoint", str(ck), "--images", str(tmp_path / "imgs"),
           "--out", str(out), "--height", "64", "--width", "32", "--batch-size", "2"]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=SUB_ENV)
    assert r.returncode == 0, r.stderr
    d = np.load(out)
    assert d["features"].shape == (3, 512) and len(d["names"]) == 3 and np.isfinite(d["features"]).all()
    assert "extract" in r.stderr  # progress on stderr
    # a corrupt image: exit 2, one line naming the file, no traceback
    (tmp_path / "imgs" / "a" / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=SUB_ENV)
    assert r.returncode == 2 and "Traceback" not in r.stderr
    lines = [ln for ln in r.stderr.strip().splitlines() if ln.startswith("osnas: error")]
    assert len(lines) == 1 and "broken.jpg" in lines[0], r.stderr
    assert len(r.stderr.strip().splitlines()) == 1, r.stderr
