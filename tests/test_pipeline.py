"""search -> derive -> retrain -> eval-crossdomain on tiny built-in data; determinism and resume.

Each search here trains one supernet (`search.runs=1`) with the default recipe otherwise
(osnet_stem_blocks, single paths drawn from the alphas, the last source kept out of the weights,
an alpha step every second step); searches of several supernets are in test_search_runs.py.
"""

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from osnas.retrain import run_retrain
from conftest import ENV, TINY
from osnas.errors import OsnasError
from osnas.evaluate import run_eval_crossdomain
from osnas.derive import DeriveConfig, derive, run_derive
from osnas.models.genotype import load_genotype
from osnas.search import read_history, run_search
from osnas.utils import load_checkpoint

SEARCH = TINY + ["search.epochs=3", "search.steps_per_epoch=2", "search.warmup_epochs=1", "search.runs=1"]
RETRAIN = TINY + ["train.epochs=2", "train.steps_per_epoch=3", "train.triplet_weight=1.0"]


@pytest.fixture(scope="session")
def root(synth_root):
    """The tiny built-in domains (tests/conftest.py)."""
    return synth_root


def _search(root, out, extra=()):
    return run_search(data_root=str(root), out=str(out), overrides=SEARCH + list(extra))


def _argmax(run):
    """A run read by the argmax of its alphas."""
    return derive(run, DeriveConfig(select="argmax"))


def _cli(args, **kw):
    return subprocess.run([sys.executable, "-m", "osnas", *args], env=ENV, capture_output=True, text=True, **kw)


def test_search_is_deterministic_and_records_every_step(root, tmp_path):
    a = _search(root, tmp_path / "a", ["search.order=second"])
    b = _search(root, tmp_path / "b", ["search.order=second"])
    ha, hb = read_history(a), read_history(b)
    assert len(ha) == 6 and [r["step"] for r in ha] == list(range(6))
    assert ha == hb  # identical alpha histories with the same seed
    # warm-up (steps 0-1), then an alpha step every search.alpha_every=2 steps
    assert [r["loss_a"] is not None for r in ha] == [False, False, True, False, True, False]
    assert ha[0]["alphas"] == ha[1]["alphas"] and ha[2]["alphas"] != ha[-1]["alphas"]
    p = ha[-1]["probs"]["conv2.0"]
    assert set(p) == {"plain", "in_res", "in_post", "both"} and abs(sum(p.values()) - 1) < 1e-5
    for f in ("config.yaml", "space.yaml", "run.json", "checkpoint.pth", "final_alphas.json", "log.txt"):
        assert (a / f).is_file(), f
    ck = load_checkpoint(a / "checkpoint.pth")
    assert {"model", "w_opt", "a_opt", "streams", "rng", "space_sha256"} <= set(ck)
    # bit-exact holds on one machine and library set only: run.json names them
    env = json.loads((a / "run.json").read_text())["environment"]
    assert env["torch"] == torch.__version__ and env["threads"] == torch.get_num_threads() and env["cpu"]
    c = _search(root, tmp_path / "c", ["search.order=second", "run.seed=2"])
    assert read_history(c) != ha


def _wait_for_checkpoint(path: Path, proc, timeout=240):
    t0 = time.time()
    while not path.exists():
        if proc.poll() is not None:
            return False
        if time.time() - t0 > timeout:
            proc.kill()
            pytest.fail("no checkpoint appeared")
        time.sleep(0.05)
    return True


@pytest.mark.parametrize("how,extra", [("kill", []), ("sigint", []),
                                       ("kill", ["search.weight_step=mixed"]),  # the whole mixture every step
                                       ("kill", ["search.weight_step=uniform"])])
def test_search_killed_then_resumed_matches_uninterrupted(root, tmp_path, how, extra):
    ref = _search(root, tmp_path / "ref", extra)
    out = tmp_path / "run"
    args = ["search", "--data-root", str(root), "--out", str(out)] + [x for s in SEARCH + extra for x in ("--set", s)]
    proc = subprocess.Popen([sys.executable, "-m", "osnas", *args], env=ENV, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    if how == "kill":  # SIGKILL right after the first checkpoint (end of epoch 1)
        assert _wait_for_checkpoint(out / "checkpoint.pth", proc), "finished before it could be killed"
        proc.send_signal(signal.SIGKILL)
    else:  # SIGINT once the first steps are logged: saves mid-epoch and exits 130
        t0 = time.time()
        while not (out / "alphas.jsonl").exists() or not (out / "alphas.jsonl").read_text().strip():
            assert proc.poll() is None and time.time() - t0 < 240
            time.sleep(0.05)
        proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=240)
    if how == "sigint":
        assert proc.returncode == 130, err
        assert "interrupted: checkpoint saved" in err and "Traceback" not in err
    else:
        assert proc.returncode == -signal.SIGKILL
    r = _cli(args + ["--resume"], timeout=300)
    assert r.returncode == 0, r.stderr
    assert "warning: resuming" not in r.stderr  # the same settings again: nothing to warn about
    a = load_checkpoint(ref / "checkpoint.pth")["model"]
    b = load_checkpoint(out / "checkpoint.pth")["model"]
    assert all(torch.equal(a[k], b[k]) for k in a), "resumed run diverged"
    assert read_history(ref) == read_history(out)


@pytest.mark.parametrize("stop_after", [1, 3])  # mid-epoch: in the warm-up, and after an alpha step
def test_search_stopped_mid_epoch_resumes_bit_exactly(root, tmp_path, monkeypatch, stop_after):
    """A stop request after a given step (as SIGINT sets it, but at a chosen step, so the test
    does not depend on when a signal lands): the checkpoint must hold the batch streams as they
    stand at that step, not at the end of the epoch the loader had planned."""
    from osnas import session
    from osnas.errors import OsnasInterrupted

    ref = _search(root, tmp_path / "ref")
    check, calls = session.TrainingSession.check, [0]

    def stop_at(self, loss, where):
        value = check(self, loss, where)
        calls[0] += 1
        self.stop_requested = self.stop_requested or calls[0] == stop_after
        return value

    monkeypatch.setattr(session.TrainingSession, "check", stop_at)
    with pytest.raises(OsnasInterrupted):
        _search(root, tmp_path / "run")
    monkeypatch.setattr(session.TrainingSession, "check", check)
    assert load_checkpoint(tmp_path / "run" / "checkpoint.pth")["global_step"] == stop_after
    run_search(data_root=str(root), out=str(tmp_path / "run"), resume=True)
    a = load_checkpoint(ref / "checkpoint.pth")["model"]
    b = load_checkpoint(tmp_path / "run" / "checkpoint.pth")["model"]
    assert all(torch.equal(a[k], b[k]) for k in a), "resumed run diverged"
    assert read_history(ref) == read_history(tmp_path / "run")


def test_resuming_with_other_settings_names_them(root, tmp_path, monkeypatch, capsys):
    """A resume may change settings (the config file and --set still apply over the run's
    config.yaml), but it says which: the continued run no longer repeats the uninterrupted one.
    (A protocol once resumed searches with their configuration file alone, which put the file's
    epochs back over the job's own, and got shorter searches without a word.)"""
    from osnas import session
    from osnas.errors import OsnasInterrupted

    check = session.TrainingSession.check

    def stop_at_first(self, loss, where):
        value = check(self, loss, where)
        self.stop_requested = True
        return value

    monkeypatch.setattr(session.TrainingSession, "check", stop_at_first)
    with pytest.raises(OsnasInterrupted):
        _search(root, tmp_path / "run")
    monkeypatch.setattr(session.TrainingSession, "check", check)
    capsys.readouterr()
    run_search(data_root=str(root), out=str(tmp_path / "run"), resume=True,
               overrides=["search.epochs=4", "search.alpha_every=2"])  # alpha_every 2 is the saved value
    err = capsys.readouterr().err
    assert "warning: resuming" in err and "search.epochs 3 -> 4" in err and "alpha_every" not in err
    assert session.changed_settings({"a": {"b": 1, "c": [1]}}, {"a": {"b": 2, "c": [1]}}) == ["a.b 1 -> 2"]


def test_derive_retrain_eval_end_to_end(root, tmp_path):
    """The default recipe end to end: derive reads the unseen-objective run by retrieval on half
    of the kept-out people and checks the answer against the published designs on the other
    half; whichever it recommends is retrained and evaluated on the held-out domain."""
    from osnas.models.space import load_space

    run = _search(root, tmp_path / "search")
    gpath = run_derive(run, batches=2)
    g = load_genotype(gpath)
    assert g.space == "osnet_stem_blocks" and len(g.positions) == 7 and g.sources == ["synth0", "synth1", "synth2"]
    assert g.step == 6 and len(g.space_hash) == 64 and g.select == "retrieval-pooled"
    space = load_space(run / "space.yaml")
    assert g.plan == space.plan_for({k: v["choice"] for k, v in g.positions.items()})
    d = g.decision
    assert d["verdict"] in ("searched", "published") and d["against"] == ["osnet", "osnet_ibn", "osnet_ain"]
    assert set(d["scores"]) == {"searched", "osnet", "osnet_ibn", "osnet_ain"} and d["units"] >= 2
    if d["verdict"] == "published":  # the design is written, the search's own answer beside it
        assert g.name == d["recommended"] and g.plan == load_genotype(d["recommended"]).plan
        own = load_genotype(gpath.with_name("genotype.searched.yaml"))
        assert {k: v["choice"] for k, v in own.positions.items()} == d["searched"]
    else:
        assert {k: v["choice"] for k, v in g.positions.items()} == d["searched"]
    rt = run_retrain(genotype=str(gpath), data_root=str(root), out=str(tmp_path / "rt"), overrides=RETRAIN)
    base = run_retrain(genotype="osnet", data_root=str(root), out=str(tmp_path / "base"), overrides=RETRAIN)
    rows = [json.loads(x) for x in (rt / "train_log.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [0, 1] and all(r["id"] > 0 and r["triplet"] >= 0 for r in rows)
    # no size given: each model is evaluated at the input size it was trained with (64x32)
    m = run_eval_crossdomain([str(rt / "checkpoint.pth"), str(base / "checkpoint.pth")], "synth3",
                             data_root=str(root), out=str(tmp_path / "ev"))
    saved = json.loads((tmp_path / "ev" / "metrics.json").read_text())
    assert saved["models"].keys() == m["models"].keys() and len(m["models"]) == 2
    for entry in saved["models"].values():
        assert entry["input_size"] == [64, 32]
        r = entry["targets"]["synth3"]
        assert 0 <= r["mAP"] <= 1 and 0 <= r["rank1"] <= r["rank5"] <= r["rank10"] <= 1
        assert len(r["cmc"]) >= 10 and r["num_query"] > 0 and len(r["examples"]) > 0
    table = (tmp_path / "ev" / "results.md").read_text()
    assert "synth3 R1" in table and "osnet" in table


def test_retrain_resume_matches_uninterrupted(root, tmp_path):
    ref = run_retrain(genotype="osnet_ain", data_root=str(root), out=str(tmp_path / "ref"), overrides=RETRAIN)
    out = tmp_path / "run"
    args = ["retrain", "--genotype", "osnet_ain", "--data-root", str(root), "--out", str(out)] + \
        [x for s in RETRAIN + ["train.epochs=2"] for x in ("--set", s)]
    proc = subprocess.Popen([sys.executable, "-m", "osnas", *args], env=ENV, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    assert _wait_for_checkpoint(out / "checkpoint.pth", proc), "finished before it could be killed"
    proc.send_signal(signal.SIGKILL)
    proc.communicate(timeout=60)
    r = _cli(args + ["--resume"], timeout=300)
    assert r.returncode == 0, r.stderr
    assert "warning: resuming" not in r.stderr  # the same settings again: nothing to warn about
    a = load_checkpoint(ref / "checkpoint.pth")["model"]
    b = load_checkpoint(out / "checkpoint.pth")["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_nan_loss_stops_with_last_good_checkpoint(root, tmp_path, monkeypatch):
    out = _search(root, tmp_path / "s")
    before = (out / "checkpoint.pth").read_bytes()
    import osnas.search.bilevel as loop

    real = loop.make_loss_fn

    def poisoned(kind, ls, margin):
        fn = real(kind, ls, margin)
        return lambda m, b: fn(m, b) * float("nan")

    monkeypatch.setattr(loop, "make_loss_fn", poisoned)
    with pytest.raises(OsnasError, match="non-finite"):
        run_search(data_root=str(root), out=str(out), overrides=SEARCH + ["search.epochs=4"], resume=True)
    assert (out / "checkpoint.pth").read_bytes() == before


@pytest.mark.parametrize("args,needle", [
    (["derive", "--run", "/nonexistent/run"], "search run folder not found"),
    (["retrain", "--genotype", "no_such_genotype"], "genotype"),
    (["eval-crossdomain", "--checkpoint", "/nonexistent.pth", "--targets", "synth3"], "checkpoint not found"),
    (["search", "--set", "search.nope=1"], "unknown config key search.nope"),
    (["search", "--set", "search.epochs=abc"], "expected an integer"),
    (["search", "--space", "no_space"], "unknown search space"),
    (["search", "--sources", "nowhere_ds"], "unknown dataset"),
])
def test_bad_input_one_line_exit_2(args, needle, tmp_path):
    r = _cli(args + (["--out", str(tmp_path / "o")] if args[0] in ("search",) else []), cwd=tmp_path, timeout=120)
    assert r.returncode == 2, r.stderr
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and needle in lines[0] and "Traceback" not in r.stderr, r.stderr


def test_eval_rejects_wrong_checkpoints(root, tmp_path):
    run = _search(root, tmp_path / "s")
    with pytest.raises(OsnasError, match="not a retrain checkpoint"):
        run_eval_crossdomain([str(run / "checkpoint.pth")], "synth3", data_root=str(root), out=str(tmp_path / "e"))
    rt = run_retrain(genotype="osnet", data_root=str(root), out=str(tmp_path / "rt"), overrides=RETRAIN)
    ck = torch.load(rt / "checkpoint.pth", weights_only=True)
    ck["genotype"] = load_genotype("osnet_ibn").to_dict()  # weights of one architecture, description of another
    torch.save(ck, tmp_path / "wrong.pth")
    with pytest.raises(OsnasError, match="do not fit"):
        run_eval_crossdomain([str(tmp_path / "wrong.pth")], "synth3", data_root=str(root), out=str(tmp_path / "e"))
    with pytest.raises(OsnasError, match="market1501"):
        run_eval_crossdomain([str(rt / "checkpoint.pth")], "market", data_root=str(root), out=str(tmp_path / "e"))


def test_derive_detects_changed_space(root, tmp_path):
    run = _search(root, tmp_path / "s")
    text = (run / "space.yaml").read_text()
    (run / "space.yaml").write_text(text + "\n# edited\n")
    with pytest.raises(OsnasError, match="hash"):
        _argmax(run)
    (run / "space.yaml").write_text(text.replace("{block: conv4.1, candidates: *block4}", ""))
    with pytest.raises(OsnasError):
        _argmax(run)


def test_derive_from_hand_set_alphas(root, tmp_path):
    """Alphas written by hand into a search checkpoint give exactly the expected genotype file."""
    run = _search(root, tmp_path / "s")
    ck = torch.load(run / "checkpoint.pth", weights_only=True)
    # positions stem (bn/in), then conv2.0..conv4.1 (plain/in_res/in_post/both): make OSNet-AIN the argmax
    want = ["in", "in_res", "in_res", "plain", "in_res", "in_res", "plain"]
    for i, c in enumerate(want):
        names = ["bn", "in"] if i == 0 else ["plain", "in_res", "in_post", "both"]
        a = torch.zeros(len(names))
        a[names.index(c)] = 2.0
        ck["model"][f"alphas.{i}"] = a
    torch.save(ck, run / "checkpoint.pth")
    g = load_genotype(run_derive(run, out=tmp_path / "g.json", select="argmax"))
    assert g.plan == load_genotype("osnet_ain").plan
    p = g.positions["conv2.0"]["probs"]
    assert p["in_res"] == pytest.approx(torch.softmax(torch.tensor([0.0, 2.0, 0.0, 0.0]), 0)[1].item(), abs=1e-6)
    assert g.positions["conv2.0"]["entropy"] > 0 and g.step == 6 and g.seed == 1
    with open(tmp_path / "g.json") as f:  # JSON when asked for .json
        assert json.load(f)["space"] == "osnet_stem_blocks"
    ck["model"]["alphas.1"] = torch.zeros(3)  # alphas that do not fit the block position's 4 candidates
    torch.save(ck, run / "checkpoint.pth")
    with pytest.raises(OsnasError, match="do not fit"):
        _argmax(run)


def test_demo_quick_runs_every_stage(root, tmp_path, capsys, monkeypatch):
    """The default recipe through every stage: three supernets, each read by retrieval, voted,
    checked against the published designs; the answer retrained next to OSNet and OSNet-AIN
    (each architecture once), evaluated, plotted. Derive scores on 2 batches per source instead
    of its default 16, which would take most of this test's time for the same stages."""
    from osnas.demo import _to_retrain, run_demo
    from osnas.derive.options import DEFAULT_BATCHES

    monkeypatch.setitem(DEFAULT_BATCHES, "retrieval-pooled", 2)
    metrics = run_demo(out=str(tmp_path / "demo"), data_root_arg=str(root), quick=True)
    d = tmp_path / "demo"
    g = load_genotype(d / "search" / "genotype.yaml")
    labels = list(_to_retrain(d / "search" / "genotype.yaml"))
    assert list(metrics["models"]) == labels and {"osnet", "osnet_ain"} <= set(labels)
    plans = [load_checkpoint(d / f"retrain-{k}" / "checkpoint.pth")["genotype"]["plan"] for k in labels]
    assert all(plans[i] != plans[j] for i in range(len(plans)) for j in range(i))  # each architecture once
    assert g.select == "vote" and len(g.runs) == 3 and g.derive["methods"] == ["retrieval-pooled"] * 3
    assert g.decision["verdict"] in ("searched", "published")
    for f in ["search/run.json", "search/genotype.yaml", "eval/metrics.json", "eval/results.md", "plots/results.png",
              "plots/answer.png"] + [f"search/supernet{k}/alphas.jsonl" for k in (1, 2, 3)] + \
            [f"retrain-{k}/checkpoint.pth" for k in labels]:
        assert (d / f).is_file() and (d / f).stat().st_size > 0, f
    out = capsys.readouterr().out
    assert f"the answer: {d / 'search' / 'genotype.yaml'}  ({g.name or g.select}; IN at: " in out and "plots:" in out
    assert f"held-out mAP: the answer ({labels[0]})" in out and "osnet_ain" in out.split("held-out mAP:")[1]
