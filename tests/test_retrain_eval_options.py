"""Retrain and evaluation options through the CLI: published weights (--pretrained),
bf16 autocast on CPU (train.amp), classifier-only first epochs (train.fixbase_epochs),
flip-test and k-reciprocal re-ranking in eval-crossdomain.

Only stable interfaces: `osnas.cli.main`, run-folder files (checkpoint.pth, run.json,
train_log.jsonl, metrics.json), `osnas.models.build_model` and `osnas.metrics.evaluate_rank`.
"""

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from _reid_gen import random_ids, write_market
from osnas.cli import main

H, W = 32, 16
ARCH = "osnet_x0_25"
TINY = [f"model.arch={ARCH}", f"data.height={H}", f"data.width={W}", "data.batch_size=8", "data.num_instances=2",
        "data.workers=0", "run.progress=false", "run.log_every=1000", "train.steps_per_epoch=2"]
KEYS_FILE = Path(__file__).parent / "data" / "torchreid_state_dict_keys.txt"
RUNNING = ("running_mean", "running_var", "num_batches_tracked")


def _sets(items):
    return [x for s in items for x in ("--set", s)]


def _retrain(out, source, extra=(), genotype="osnet", pretrained=None):
    args = ["retrain", "--genotype", genotype, "--sources", source, "--out", str(out)]
    args += ["--pretrained", str(pretrained)] if pretrained else []
    rc = main(args + _sets(TINY + list(extra)))
    assert rc == 0, f"retrain failed with exit code {rc}"
    return out


def _ck(run):
    return torch.load(Path(run) / "checkpoint.pth", weights_only=True)


def _log(run):
    return [json.loads(x) for x in (Path(run) / "train_log.jsonl").read_text().splitlines() if x.strip()]


def fake_torchreid_state_dict(model: str, seed: int = 0) -> dict:
    """Random tensors with the key names and shapes of a published torchreid checkpoint
    (tests/data/torchreid_state_dict_keys.txt); BN variances positive, counters integers."""
    g = torch.Generator().manual_seed(seed)
    sd = {}
    for line in KEYS_FILE.read_text().splitlines():
        if not line.strip() or line.startswith("#"):
            continue
        name, key, shape = line.split()
        if name != model:
            continue
        if shape == "scalar":
            sd[key] = torch.tensor(7, dtype=torch.long)
            continue
        dims = [int(d) for d in shape.split("x")]
        t = torch.randn(*dims, generator=g) * 0.2
        if key.endswith("running_var"):
            t = t.abs() + 0.5
        sd[key] = t
    assert sd, f"{model} not in {KEYS_FILE}"
    return sd


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """A tiny training source and a target with query (camera 1) and gallery (cameras 2, 3)."""
    root = tmp_path_factory.mktemp("rt_data")
    rng = np.random.default_rng(3)
    write_market(root / "src", random_ids(rng, 4, 4, H, W))
    items = random_ids(rng, 6, 5, H, W, cams=(1, 1, 2, 2, 3))
    query = [it for i, it in enumerate(items) if i % 5 == 0]
    gallery = [it for i, it in enumerate(items) if i % 5 != 0]
    write_market(root / "tgt", items[:8], query, gallery)
    return {"root": root, "source": f"custom:{root / 'src'}", "target": f"custom:{root / 'tgt'}"}


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory, data):
    """A torchreid-format osnet_x0_25 file and two retrains from it (1 epoch of 2 steps):
    `lr0` with lr 0 (nothing may change but BN statistics), `fixbase` with a real lr and a
    classifier-only first epoch (nothing may change but the classifier)."""
    tmp = tmp_path_factory.mktemp("rt_pretrained")
    sd = fake_torchreid_state_dict(ARCH)
    path = tmp / "osnet_x0_25_fake.pth"
    torch.save(sd, path)
    lr0 = _retrain(tmp / "lr0", data["source"], ["train.epochs=1", "train.lr=0"], pretrained=path)
    fixbase = _retrain(tmp / "fixbase", data["source"], ["train.epochs=1", "train.fixbase_epochs=1",
                                                          "train.lr=0.01"], pretrained=path)
    return {"path": path, "sd": sd, "lr0": lr0, "fixbase": fixbase}


def _find(tensor, model_sd, used):
    """The osnas keys (not yet matched) holding exactly `tensor`; random values make a
    match unambiguous, so this needs no knowledge of the renaming."""
    return [k for k, v in model_sd.items()
            if k not in used and v.shape == tensor.shape and v.dtype == tensor.dtype and torch.equal(v, tensor)]


def test_pretrained_weights_land_in_the_backbone(pretrained):
    """--pretrained with lr 0: every published parameter (classifier aside: 1000 classes) is
    found unchanged in the retrain checkpoint, at the documented osnas names."""
    sd, ck = pretrained["sd"], _ck(pretrained["lr0"])
    m = ck["model"]
    # spot checks of the renaming: stem, a stream of an OS block, the branch-end BN, a transition, head fc
    assert torch.equal(m["conv1.conv.weight"], sd["conv1.conv.weight"])
    assert torch.equal(m["conv1.norm.ops.bn.weight"], sd["conv1.bn.weight"])
    assert torch.equal(m["conv2.0.conv2.1.layers.1.conv2.weight"], sd["conv2.0.conv2b.1.conv2.weight"])
    assert torch.equal(m["conv2.0.conv2.0.layers.0.conv1.weight"], sd["conv2.0.conv2a.conv1.weight"])
    assert torch.equal(m["conv3.1.end.ops.bn.weight"], sd["conv3.1.conv3.bn.weight"])
    assert torch.equal(m["pool2.conv.weight"], sd["conv2.2.0.conv.weight"])
    assert torch.equal(m["head.fc.0.weight"], sd["fc.0.weight"])
    # every published parameter is somewhere in the model, bit for bit
    params = {k: v for k, v in sd.items() if not k.startswith("classifier.") and not k.endswith(RUNNING)}
    used = set()
    for k, v in params.items():
        hits = _find(v, m, used)
        assert len(hits) == 1, f"{k}: found at {hits}"
        used.add(hits[0])
    # the BN statistics were loaded too, then updated by the two training forwards
    assert not torch.equal(m["conv1.norm.ops.bn.running_mean"], sd["conv1.bn.running_mean"])
    assert m["head.classifier.weight"].shape[0] == ck["num_classes"] == 4  # not the file's 1000
    run = json.loads((pretrained["lr0"] / "run.json").read_text())
    assert run["pretrained"] == str(pretrained["path"])
    assert run["environment"]["torch"] == torch.__version__  # what bit-exactness depends on
    assert str(pretrained["path"]) in (pretrained["lr0"] / "log.txt").read_text()


def test_fixbase_epoch_changes_only_the_classifier(pretrained):
    """train.fixbase_epochs=1, train.epochs=1: after the classifier-only epoch every backbone
    (and head fc) parameter AND BN running statistic equals the published file's, while the
    classifier moved away from its initial value (the lr-0 run's classifier, same seed)."""
    sd, m = pretrained["sd"], _ck(pretrained["fixbase"])["model"]
    used = set()
    for k, v in sd.items():
        if k.startswith("classifier.") or k.endswith("num_batches_tracked"):  # counters: all 7, checked below
            continue
        hits = _find(v, m, used)
        assert len(hits) == 1, f"{k} changed during the classifier-only epoch (or was not loaded)"
        used.add(hits[0])
    counters = [v for k, v in m.items() if k.endswith("num_batches_tracked")]
    assert counters and all(int(v) == 7 for v in counters), "BN layers ran in training mode during fix-base"
    init = _ck(pretrained["lr0"])["model"]
    assert not torch.equal(m["head.classifier.weight"], init["head.classifier.weight"])
    assert _log(pretrained["fixbase"])[0]["fixbase"] is True


def test_fixbase_then_full_training(data, pretrained, tmp_path):
    """train.epochs=2 with fixbase_epochs=1: the second epoch trains the backbone again."""
    run = _retrain(tmp_path / "fb2", data["source"], ["train.epochs=2", "train.fixbase_epochs=1", "train.lr=0.01"],
                   pretrained=pretrained["path"])
    rows = _log(run)
    assert [r["fixbase"] for r in rows] == [True, False]
    m = _ck(run)["model"]
    assert not torch.equal(m["conv1.conv.weight"], pretrained["sd"]["conv1.conv.weight"])
    assert not torch.equal(m["conv1.norm.ops.bn.running_mean"], pretrained["sd"]["conv1.bn.running_mean"])


@pytest.fixture(scope="module")
def trained(data, tmp_path_factory):
    """OSNet-AIN trained from scratch, fp32, one epoch of 2 steps (for amp and evaluation)."""
    return _retrain(tmp_path_factory.mktemp("rt_fp32") / "fp32", data["source"], ["train.epochs=1"],
                    genotype="osnet_ain")


def test_amp_bf16_on_cpu(data, trained, tmp_path):
    """train.amp=true on CPU trains under bf16 autocast: finite losses, and weights that differ
    from the same run in fp32 (the flag is not ignored)."""
    amp = _retrain(tmp_path / "amp", data["source"], ["train.epochs=1", "train.amp=true"], genotype="osnet_ain")
    fp32 = trained
    rows = _log(amp)
    assert len(rows) == 1 and all(math.isfinite(v) for v in rows[0].values() if isinstance(v, float))
    assert rows[0]["id"] > 0
    a, b = _ck(amp)["model"], _ck(fp32)["model"]
    assert all(torch.isfinite(v).all() for v in a.values() if v.is_floating_point())
    assert a["conv1.conv.weight"].dtype == torch.float32  # weights stay fp32 under autocast
    assert any(not torch.equal(a[k], b[k]) for k in a if a[k].is_floating_point())


# ----------------------------------------------------------------------------- evaluation
def _images(items):
    """Test-time tensors of (path, pid, cam) items: to [0, 1], normalised (images are already H x W)."""
    x = torch.stack([torch.from_numpy(np.asarray(Image.open(p).convert("RGB"), np.float32) / 255).permute(2, 0, 1)
                     for p, _, _ in items])
    return x


def _split(folder):
    out = []
    for p in sorted(Path(folder).iterdir()):
        pid, cam = p.name.split("_")[:2]
        out.append((str(p), int(pid), int(cam[1]) - 1))
    return out


def _features(run, items, flip):
    """Embeddings computed here, from the checkpoint, with osnas.models.build_model."""
    from osnas.models import build_model

    ck = _ck(run)
    m = build_model(Path(run) / "genotype.yaml", num_classes=ck["num_classes"], arch=ck["arch"], head=ck["head"],
                    feature_dim=ck["feature_dim"], last_stride=ck["last_stride"])
    m.load_state_dict(ck["model"])
    m.eval()
    mean = torch.tensor(ck["mean"]).view(1, 3, 1, 1)
    std = torch.tensor(ck["std"]).view(1, 3, 1, 1)
    x = (_images(items) - mean) / std
    with torch.no_grad():
        f = m(x)
        if flip:
            f = (f + m(torch.flip(x, dims=[3]))) / 2
    return f.double()


def _cosine(qf, gf):
    q = torch.nn.functional.normalize(qf, dim=1)
    g = torch.nn.functional.normalize(gf, dim=1)
    return (1 - q @ g.T).numpy()


def k_reciprocal_rerank(q_g, q_q, g_g, k1, k2, lam):
    """Dense k-reciprocal re-ranking (Zhong et al., CVPR 2017), written plainly for small sets.

    Distances are squared and each row scaled by its maximum; R(i, k) = the k-reciprocal
    nearest neighbours of i among its k+1 nearest; R*(i) adds R(j, k/2) for j in R(i, k1)
    when they overlap R(i, k1) by more than 2/3; V(i) = softmax-like weights exp(-d) over
    R*(i); V is averaged over the k2 nearest neighbours; the Jaccard distance of V rows is
    mixed with the scaled distance: (1 - lam) * d_J + lam * d.
    """
    nq = q_g.shape[0]
    full = np.block([[q_q, q_g], [q_g.T, g_g]]).astype(np.float64) ** 2
    n = full.shape[0]
    d = full / full.max(axis=0, keepdims=True)
    d = d.T
    rank = np.argsort(d, axis=1, kind="stable")

    def recip(i, k):
        fwd = rank[i, :k + 1]
        return np.array([j for j in fwd if i in rank[j, :k + 1]], dtype=int)

    V = np.zeros((n, n))
    for i in range(n):
        r = recip(i, k1)
        expanded = set(r.tolist())
        for j in r:
            rj = recip(j, int(np.around(k1 / 2.0)))
            if len(set(rj.tolist()) & set(r.tolist())) > 2.0 / 3.0 * len(rj):
                expanded |= set(rj.tolist())
        idx = np.array(sorted(expanded))
        w = np.exp(-d[i, idx])
        V[i, idx] = w / w.sum()
    if k2 != 1:
        V = np.stack([V[rank[i, :k2]].mean(axis=0) for i in range(n)])
    m = np.minimum(V[:nq, None, :], V[None, nq:, :]).sum(-1)
    jac = 1 - m / (2 - m)
    return (1 - lam) * jac + lam * d[:nq, nq:]


@pytest.fixture(scope="module")
def evaluated(data, trained, tmp_path_factory):
    """One trained model evaluated three ways: plain, flip-test, re-ranked (k1=4, k2=2)."""
    tmp = tmp_path_factory.mktemp("rt_eval")
    ck = trained / "checkpoint.pth"
    out = {}
    for name, extra in (("plain", []), ("flip", ["--set", "eval.flip_test=true"]),
                        ("rerank", ["--rerank", "--set", "eval.k1=4", "--set", "eval.k2=2"])):
        rc = main(["eval-crossdomain", "--checkpoint", str(ck), "--targets", data["target"],
                   "--out", str(tmp / name)] + extra)
        assert rc == 0
        m = json.loads((tmp / name / "metrics.json").read_text())
        (entry,) = m["models"].values()
        out[name] = (m, entry["targets"][data["target"]])
    return out


def _check_ranges(r):
    for k in ("rank1", "rank5", "rank10", "mAP", "mINP"):
        assert 0.0 <= r[k] <= 1.0, k
    assert all(0.0 <= v <= 1.0 for v in r["cmc"]) and r["cmc"] == sorted(r["cmc"])


def _ranked(r):
    return [(e["query"], [x["path"] for x in e["ranked"]], [x["distance"] for x in e["ranked"]])
            for e in r["examples"]]


def test_flip_test_averages_flipped_embeddings(data, trained, evaluated, capsys):
    """eval.flip_test=true: metrics.json holds the metrics of (f(x) + f(flip x)) / 2 embeddings,
    recomputed here from the checkpoint; they differ from the plain embeddings' distances."""
    from osnas.metrics import evaluate_rank

    capsys.readouterr()
    tgt = data["root"] / "tgt"
    query, gallery = _split(tgt / "query"), _split(tgt / "bounding_box_test")
    qp, gp = np.array([q[1] for q in query]), np.array([g[1] for g in gallery])
    qc, gc = np.array([q[2] for q in query]), np.array([g[2] for g in gallery])
    for name, flip in (("plain", False), ("flip", True)):
        m, r = evaluated[name]
        _check_ranges(r)
        assert r["num_query"] == len(query) and r["num_gallery"] == len(gallery)
        dist = _cosine(_features(trained, query, flip), _features(trained, gallery, flip))
        assert dist.std() > 1e-3  # embeddings that tell images apart (else ranks are rounding noise)
        want = evaluate_rank(dist, qp, gp, qc, gc, max_rank=50)
        assert r["mAP"] == pytest.approx(float(want["mAP"]), abs=1e-6)
        assert r["cmc"] == pytest.approx([float(v) for v in want["cmc"]][:len(r["cmc"])], abs=1e-6)
        index = {p: i for i, (p, _, _) in enumerate(gallery)}
        qindex = {p: i for i, (p, _, _) in enumerate(query)}
        for e in r["examples"]:  # the retrieval examples carry the distances of these embeddings
            for x in e["ranked"]:
                assert x["distance"] == pytest.approx(dist[qindex[e["query"]], index[x["path"]]], abs=1e-5)
    plain, flip = _ranked(evaluated["plain"][1]), _ranked(evaluated["flip"][1])
    assert [p[0] for p in plain] == [f[0] for f in flip]
    assert any(a[2] != pytest.approx(b[2], abs=1e-6) for a, b in zip(plain, flip)), "flip-test changed nothing"


def test_rerank_matches_a_direct_computation(data, trained, evaluated):
    """--rerank: metrics.json equals evaluate_rank on a plain re-implementation of k-reciprocal
    re-ranking (same k1, k2, lambda) of the cosine distances; on this data re-ranking changes
    the ranking and the metrics (checked on the direct computation, which must then agree)."""
    from osnas.metrics import evaluate_rank

    m, r = evaluated["rerank"]
    assert m["rerank"] is True
    _check_ranges(r)
    tgt = data["root"] / "tgt"
    query, gallery = _split(tgt / "query"), _split(tgt / "bounding_box_test")
    qp, gp = np.array([q[1] for q in query]), np.array([g[1] for g in gallery])
    qc, gc = np.array([q[2] for q in query]), np.array([g[2] for g in gallery])
    qf, gf = _features(trained, query, False), _features(trained, gallery, False)
    plain = _cosine(qf, gf)
    rr = k_reciprocal_rerank(plain, _cosine(qf, qf), _cosine(gf, gf), k1=4, k2=2, lam=0.3)
    want = evaluate_rank(rr, qp, gp, qc, gc, max_rank=50)
    assert r["mAP"] == pytest.approx(float(want["mAP"]), abs=1e-5)
    assert r["mINP"] == pytest.approx(float(want["mINP"]), abs=1e-5)
    assert r["cmc"] == pytest.approx([float(v) for v in want["cmc"]][:len(r["cmc"])], abs=1e-5)
    # re-ranking must matter here: the order of the gallery changes for some query
    assert (np.argsort(rr, axis=1, kind="stable") != np.argsort(plain, axis=1, kind="stable")).any()
    base = evaluated["plain"][1]
    assert (r["mAP"], r["cmc"]) != (base["mAP"], base["cmc"]), "re-ranking left the metrics unchanged"


def _rerank_setup(data, trained):
    tgt = data["root"] / "tgt"
    query, gallery = _split(tgt / "query"), _split(tgt / "bounding_box_test")
    qf, gf = _features(trained, query, False), _features(trained, gallery, False)
    plain = _cosine(qf, gf)
    rr = k_reciprocal_rerank(plain, _cosine(qf, qf), _cosine(gf, gf), k1=4, k2=2, lam=0.3)
    return query, gallery, plain, rr


def _top(dist, query, gallery, qi, top=10):
    """Gallery paths of query qi by increasing distance, same identity + camera removed."""
    _, pid, cam = query[qi]
    keep = [j for j in np.argsort(dist[qi], kind="stable") if not (gallery[j][1] == pid and gallery[j][2] == cam)]
    return [gallery[j][0] for j in keep[:top]]


def test_rerank_retrieval_examples_follow_the_reranked_order(data, trained, evaluated):
    """With --rerank the ranked retrieval examples in metrics.json (the ranked-retrieval plot)
    should be in the re-ranked order that the metrics use, not the plain one."""
    query, gallery, plain, rr = _rerank_setup(data, trained)
    qindex = {p: i for i, (p, _, _) in enumerate(query)}
    examples = evaluated["rerank"][1]["examples"]
    assert examples
    # the case must discriminate: for some example query the two top-10 lists differ
    assert any(_top(rr, query, gallery, qindex[e["query"]]) != _top(plain, query, gallery, qindex[e["query"]])
               for e in examples)
    for e in examples:
        assert [x["path"] for x in e["ranked"]] == _top(rr, query, gallery, qindex[e["query"]])
