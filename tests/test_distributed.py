"""DDP on CPU (gloo): 2-process search and retrain through torchrun, ranks in agreement.

Every checkpoint under DDP verifies that the ranks hold identical weights, alphas and BN
buffers (dist.check_consistent) and logs the digest of the state it saved; with
run.ddp_check=true that check runs after every step. The tests below check that this
holds for a second-order search and a retrain (centre loss, classifier-only epoch), that
only rank 0 writes, and that the check does catch ranks that disagree.
"""

import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
import torch
import yaml

from osnas import distributed as dist
from conftest import ENV, TINY
from osnas.errors import OsnasError
from osnas.search import read_history
from osnas.utils import load_checkpoint

# one supernet (its run folder is the search's), the default recipe otherwise: osnet_stem_blocks,
# single paths drawn from the alphas, the last source kept out, an alpha step every second step
SEARCH = TINY + ["search.epochs=2", "search.steps_per_epoch=2", "search.warmup_epochs=1", "search.order=second",
                 "run.ddp_check=true", "search.runs=1"]
POSITIONS = ["stem", "conv2.0", "conv2.1", "conv3.0", "conv3.1", "conv4.0", "conv4.1"]
RETRAIN = TINY + ["train.epochs=2", "train.steps_per_epoch=2", "train.triplet_weight=1.0",
                  "train.center_weight=0.0005", "train.fixbase_epochs=1", "run.ddp_check=true"]
AGREE = re.compile(r"(\d+) ranks agree on [^(]*\(state sha256 ([0-9a-f]{16})\)")


def _sets(overrides):
    return [x for s in overrides for x in ("--set", s)]


def _torchrun(args, nproc=2, timeout=300, **kw):
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(nproc),
           "-m", "osnas", *args]
    return subprocess.run(cmd, env=ENV, capture_output=True, text=True, timeout=timeout, **kw)


def _osnas_lines(stderr):
    return [ln for ln in stderr.splitlines() if ln.startswith("osnas:")]


@pytest.fixture(scope="session")
def root(synth_root):
    """The tiny built-in domains (tests/conftest.py)."""
    return synth_root


@pytest.fixture(scope="module")
def ddp_search(root, tmp_path_factory):
    out = tmp_path_factory.mktemp("ddp") / "search"
    r = _torchrun(["search", "--data-root", str(root), "--out", str(out)] + _sets(SEARCH))
    assert r.returncode == 0, r.stderr[-4000:]
    return out


def _agreements(run: Path):
    return [(int(n), h) for n, h in AGREE.findall((run / "log.txt").read_text())]


def test_ddp_search_ranks_agree_and_rank0_writes(ddp_search):
    out = ddp_search
    assert sorted(p.name for p in out.iterdir()) == sorted(
        ["alphas.jsonl", "checkpoint.pth", "config.yaml", "final_alphas.json", "log.txt", "run.json", "space.yaml"])
    assert json.loads((out / "run.json").read_text())["world_size"] == 2
    cfg = yaml.safe_load((out / "config.yaml").read_text())
    assert cfg["search"]["order"] == "second" and cfg["run"]["ddp_check"] is True
    log = (out / "log.txt").read_text()
    assert log.count(" search osnet_stem_blocks ") == 1 and "2 processes" in log  # one writer
    # one history row per step (written by rank 0 only), alphas frozen in warm-up then moving
    rows = read_history(out)
    assert [r["step"] for r in rows] == [0, 1, 2, 3]
    assert rows[0]["alphas"] == rows[1]["alphas"] and rows[1]["alphas"] != rows[3]["alphas"]
    assert [r["loss_a"] is not None for r in rows] == [False, False, True, False]  # search.alpha_every=2
    assert all("path" in r for r in rows)  # single paths, the same on both ranks (one writer records them)
    ck = load_checkpoint(out / "checkpoint.pth")
    assert {"model", "w_opt", "a_opt", "streams", "rng", "epoch", "step_in_epoch", "global_step"} <= set(ck)
    assert ck["global_step"] == 4 and ck["epoch"] == 2
    alphas = [ck["model"][f"alphas.{i}"] for i in range(len(POSITIONS))]
    assert [a.shape for a in alphas] == [(2,)] + [(4,)] * 6
    assert [round(float(v), 6) for v in alphas[1]] == rows[-1]["alphas"]["conv2.0"]
    # both ranks held exactly the saved state at every checkpoint (run.ddp_check: after every step too)
    agree = _agreements(out)
    assert len(agree) == 2 and all(n == 2 for n, _ in agree)
    assert agree[-1][1] == dist.digest(ck["model"].values())[:16]
    final = json.loads((out / "final_alphas.json").read_text())
    assert set(final["positions"]) == set(POSITIONS)


def test_ddp_retrain_ranks_agree(ddp_search, root, tmp_path):
    from osnas.derive import run_derive

    g = run_derive(ddp_search, select="argmax")  # any genotype of the run: the retrain is under test
    out = tmp_path / "rt"
    r = _torchrun(["retrain", "--genotype", str(g), "--data-root", str(root), "--out", str(out)] + _sets(RETRAIN))
    assert r.returncode == 0, r.stderr[-4000:]
    assert sorted(p.name for p in out.iterdir()) == sorted(
        ["checkpoint.pth", "config.yaml", "genotype.yaml", "log.txt", "run.json", "train_log.jsonl"])
    rows = [json.loads(x) for x in (out / "train_log.jsonl").read_text().splitlines()]
    assert [(r["epoch"], r["fixbase"]) for r in rows] == [(0, True), (1, False)]
    assert all(r["id"] > 0 and r["center"] >= 0 for r in rows)
    ck = load_checkpoint(out / "checkpoint.pth")
    assert {"model", "optimizer", "center", "center_opt", "genotype", "arch", "num_classes"} <= set(ck)
    assert ck["epoch"] == 2 and ck["arch"] == "osnet_x0_25" and ck["center"]["centers"].shape[0] == ck["num_classes"]
    agree = _agreements(out)
    assert len(agree) == 2 and agree[-1] == (2, dist.digest(ck["model"].values())[:16])


# ----------------------------------------------------------------------------- primitives, 2 processes
def _primitives_worker(rank, world, init_file, result_dir):
    import torch.distributed as tdist

    torch.set_num_threads(1)
    tdist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    ctx = dist.DistContext(rank, world, 0, torch.device("cpu"), True, True)
    res = {}
    # gather_rows: round-robin shards of 5 rows over 2 ranks, back in order
    local = torch.arange(5, dtype=torch.float32).repeat(3, 1).T[rank::world]
    res["gather"] = dist.gather_rows(local, 5, ctx)[:, 0].tolist()
    # allreduce_mean
    res["mean"] = dist.allreduce_mean([torch.tensor([float(rank)]), torch.ones(2) * rank], ctx)[1].tolist()
    # sync_step: a NaN or a stop request on one rank reaches every rank
    loss = torch.tensor(float("nan") if rank == 1 else 2.0)
    res["sync_nan"] = dist.sync_step(loss, False, ctx)[1:]
    res["sync_stop"] = dist.sync_step(torch.tensor(1.0 + rank), rank == 0, ctx)
    # check_consistent: equal tensors pass, a differing one is named
    res["agree"] = bool(dist.check_consistent({"weights": [torch.ones(3)]}, ctx, "t"))
    try:
        dist.check_consistent({"weights": [torch.ones(3)], "alphas": [torch.tensor([float(rank)])]}, ctx, "step 7")
        res["disagree"] = ""
    except OsnasError as e:
        res["disagree"] = str(e)
    # sync_buffers: rank 0's buffers everywhere, rank 0 unchanged
    bn = torch.nn.BatchNorm1d(3)
    bn.running_mean.fill_(rank + 1.0)
    bn.num_batches_tracked.fill_(10 + rank)
    dist.sync_buffers(bn, ctx)
    res["buffers"] = [bn.running_mean.tolist(), int(bn.num_batches_tracked)]

    # on_main: rank 0's write error raised on every rank
    def fail():
        raise OsnasError("cannot write x: No space left on device")

    try:
        dist.on_main(fail, ctx)
        res["on_main"] = ""
    except OsnasError as e:
        res["on_main"] = str(e)
    # extract_features: shard + gather equals embedding everything in one process
    from osnas.evaluate import extract_features
    from osnas.models.genotype import load_genotype
    from osnas.models import build_model
    from osnas.data.transforms import build_transforms

    torch.manual_seed(0)
    model = build_model(load_genotype("osnet_ain"), num_classes=0, arch="osnet_x0_25").eval()
    items = [(str(p), i, 0, 0) for i, p in enumerate(sorted(Path(result_dir, "imgs").iterdir()))]
    f = extract_features(model, items, build_transforms(64, 32, train=False), batch_size=2, workers=0, ctx=ctx)
    torch.save(f, Path(result_dir) / f"feats{rank}.pt")
    (Path(result_dir) / f"rank{rank}.json").write_text(json.dumps(res))
    tdist.destroy_process_group()


def test_ddp_primitives_two_processes(tmp_path):
    import numpy as np
    import torch.multiprocessing as mp
    from PIL import Image

    (tmp_path / "imgs").mkdir()
    for i in range(5):  # 5 images over 2 ranks: uneven shards
        arr = np.random.default_rng(i).integers(0, 255, (64, 32, 3), dtype=np.uint8)
        Image.fromarray(arr).save(tmp_path / "imgs" / f"{i}.jpg")
    # the one-process reference first: the forked children then inherit torchvision & co.
    # (fork, not spawn: spawn re-imports torch and torchvision in each child, ~20 s when loaded)
    from osnas.data.transforms import build_transforms
    from osnas.evaluate import extract_features
    from osnas.models.genotype import load_genotype
    from osnas.models import build_model

    torch.manual_seed(0)
    model = build_model(load_genotype("osnet_ain"), num_classes=0, arch="osnet_x0_25").eval()
    items = [(str(p), i, 0, 0) for i, p in enumerate(sorted((tmp_path / "imgs").iterdir()))]
    ref = extract_features(model, items, build_transforms(64, 32, train=False), batch_size=2, workers=0)
    init = Path(tempfile.mkdtemp()) / "init"
    mp.start_processes(_primitives_worker, args=(2, str(init), str(tmp_path)), nprocs=2, join=True,
                       start_method="fork")
    res = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]
    for r in res:
        assert r["gather"] == [0, 1, 2, 3, 4]
        assert r["mean"] == [0.5, 0.5]
        assert r["sync_nan"] == [True, False]
        assert r["sync_stop"] == [1.5, False, True]
        assert r["agree"] is True
        assert "out of sync at step 7" in r["disagree"] and "alphas of rank(s) 1" in r["disagree"]
        assert "weights" not in r["disagree"]
        assert r["buffers"] == [[1.0, 1.0, 1.0], 10]
        assert "No space left on device" in r["on_main"]
    assert res[1]["on_main"].startswith("rank 0: ")
    # features: the same on both ranks, equal to one process's up to batch-composition rounding
    f0, f1 = torch.load(tmp_path / "feats0.pt"), torch.load(tmp_path / "feats1.pt")
    assert torch.equal(f0, f1) and f0.shape[0] == 5
    assert torch.allclose(f0, ref, atol=1e-5)


def test_sync_bn_on_cpu_is_a_clear_error():
    ctx = dist.DistContext(0, 2, 0, torch.device("cpu"), True, False)
    with pytest.raises(OsnasError, match="run.sync_bn=true needs CUDA"):
        dist.check_sync_bn(True, ctx)
    dist.check_sync_bn(False, ctx)
    dist.check_sync_bn(True, dist.DistContext())  # one process: nothing to synchronise


def test_single_process_helpers_are_no_ops():
    ctx = dist.DistContext()
    t = [torch.ones(2)]
    assert dist.allreduce_mean(t, ctx) is t
    assert dist.sync_step(torch.tensor(3.0), True, ctx) == (3.0, False, True)
    assert dist.sync_step(torch.tensor(float("inf")), False, ctx)[1] is True
    calls = []
    dist.on_main(lambda: calls.append(1), ctx)
    assert calls == [1]
    with pytest.raises(OsnasError, match="disk"):
        dist.on_main(lambda: (_ for _ in ()).throw(OsnasError("disk")), ctx)
    assert len(dist.check_consistent({"w": t}, ctx, "x")["w"]) == 64


def test_torchrun_signal_repeat_is_one_request(monkeypatch):
    """Under torchrun a Ctrl-C arrives twice (terminal + agent): still one graceful stop."""
    from osnas.session import stop_signals as graceful_stop

    monkeypatch.setenv("TORCHELASTIC_RUN_ID", "test")
    with graceful_stop() as stop:
        os.kill(os.getpid(), signal.SIGINT)
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(0.05)
        assert stop
    monkeypatch.delenv("TORCHELASTIC_RUN_ID")
    with pytest.raises(KeyboardInterrupt):  # a plain second Ctrl-C still gives up at once
        with graceful_stop() as stop:
            os.kill(os.getpid(), signal.SIGINT)
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(0.05)


# ----------------------------------------------------------------------------- slower: resume, first order, eval
@pytest.mark.slow
def test_ddp_sigint_then_resume_matches_uninterrupted(ddp_search, root, tmp_path):
    """Ctrl-C (SIGINT to the whole process group, as a terminal does) mid-run under torchrun:
    every rank stops at the same step, rank 0 saves; a DDP --resume ends bit-identical to the
    uninterrupted DDP run."""
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m", "osnas",
           "search", "--data-root", str(root), "--out", str(out)] + _sets(SEARCH)
    proc = subprocess.Popen(cmd, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    t0 = time.time()
    h = out / "alphas.jsonl"
    while not (h.is_file() and h.read_text().count("\n") >= 1):
        assert proc.poll() is None, proc.communicate()[1][-3000:]
        assert time.time() - t0 < 240
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    lines = _osnas_lines(err)
    assert len(lines) == 2 and all("interrupted: checkpoint saved at step" in ln for ln in lines), err[-3000:]
    ck = load_checkpoint(out / "checkpoint.pth")
    assert 1 <= ck["global_step"] < 4
    r = _torchrun(["search", "--data-root", str(root), "--out", str(out), "--resume"])
    assert r.returncode == 0, r.stderr[-4000:]
    a = load_checkpoint(ddp_search / "checkpoint.pth")["model"]
    b = load_checkpoint(out / "checkpoint.pth")["model"]
    assert all(torch.equal(a[k], b[k]) for k in a), "DDP resume diverged"
    assert read_history(out) == read_history(ddp_search)


@pytest.mark.slow
def test_ddp_first_order_search_and_eval(root, tmp_path):
    out = tmp_path / "s"
    over = [o for o in SEARCH if not o.startswith("search.order")] + ["search.order=first", "search.objective=heldout",
                                                                      "data.batch_size=12"]
    r = _torchrun(["search", "--data-root", str(root), "--out", str(out)] + _sets(over))
    assert r.returncode == 0, r.stderr[-4000:]
    assert len(read_history(out)) == 4 and len(_agreements(out)) == 2
    # eval-crossdomain: features sharded over ranks and gathered; same metrics as one process
    from osnas.retrain import run_retrain

    rt = run_retrain(genotype="osnet_ain", data_root=str(root), out=str(tmp_path / "rt"),
                     overrides=TINY + ["train.epochs=1", "train.steps_per_epoch=1"])
    ev = ["eval-crossdomain", "--checkpoint", str(rt / "checkpoint.pth"), "--targets", "synth3", "--data-root",
          str(root), "--set", "data.height=64", "--set", "data.width=32", "--set", "data.workers=0"]
    r = _torchrun(ev + ["--out", str(tmp_path / "e2")])
    assert r.returncode == 0, r.stderr[-4000:]
    one = subprocess.run([sys.executable, "-m", "osnas", *ev, "--out", str(tmp_path / "e1")], env=ENV,
                         capture_output=True, text=True, timeout=300)
    assert one.returncode == 0, one.stderr
    m1 = json.loads((tmp_path / "e1" / "metrics.json").read_text())["models"]["osnet_ain"]["targets"]["synth3"]
    m2 = json.loads((tmp_path / "e2" / "metrics.json").read_text())["models"]["osnet_ain"]["targets"]["synth3"]
    for k in ("rank1", "rank5", "mAP", "mINP", "num_query", "num_gallery"):
        assert m1[k] == pytest.approx(m2[k], abs=1e-6), k


@pytest.mark.slow
def test_ddp_config_error_is_clean_on_every_rank(tmp_path):
    r = _torchrun(["search", "--out", str(tmp_path / "o"), "--set", "run.sync_bn=true"] + _sets(TINY))
    lines = _osnas_lines(r.stderr)
    assert r.returncode != 0 and len(lines) == 2 and all("run.sync_bn=true needs CUDA" in ln for ln in lines)
    assert "Traceback" not in "\n".join(ln for ln in r.stderr.splitlines() if ln.startswith("[rank"))
    assert not (tmp_path / "o").exists()
