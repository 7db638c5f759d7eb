"""`osnas profile` and the cost model: the folded network's units, latency backends, cost tables
(proxy and measured), their validation against a space, and the expected relative cost the
search differentiates. Everything at x0.25 width and 64x32 images, few repeats."""

import json
import os
import subprocess
import sys

import pytest
import torch
import yaml

from osnas.cli import main
from osnas.errors import OsnasError
from osnas.models import cost as C
from osnas.models import latency as L
from osnas.models import build_model
from osnas.models.space import load_space

ARCH, H, W = "osnet_x0_25", 64, 32
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}


def _model(name="osnet_ain_x0_25"):
    torch.manual_seed(0)
    return build_model(name).eval()


def _one_line_error(code, err, needle):
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert code == 2, err
    assert len(lines) == 1 and lines[0].startswith("osnas: error: ") and "Traceback" not in err, err
    assert needle in lines[0], lines[0]


@pytest.fixture(scope="module")
def proxy_table():
    return C.proxy_cost_table("osnet_stem_blocks", ARCH, H, W, batch=1)


# ----------------------------------------------------------------------------- units of the folded network
@pytest.mark.parametrize("backend", ["eager", "bf16"])
def test_units_in_order_equal_the_folded_network(backend):
    m = _model()
    prep = L.prepare(m, backend)
    units = prep.units()
    assert tuple(units) == L.UNITS
    x = L.example_input(2, H, W)
    with torch.no_grad():
        y = prep.convert(x)
        for u in units.values():
            y = u(y)
        ref = prep.net(x)
    assert y.shape == ref.shape == (2, 512)
    assert torch.equal(y, ref)  # the same ops in the same order: bit-identical
    inputs = L.unit_inputs(units, prep.convert(x))
    assert inputs["stem"].shape == (2, 3, H, W)
    assert inputs["conv2.0"].shape == (2, 16, H // 4, W // 4)  # after the stem's stride 2 and max-pool
    assert inputs["conv5"].shape == (2, 128, H // 16, W // 16)


def test_unit_sites_partition_the_norm_sites():
    from osnas.models.osnet import norm_sites

    assert [s for u in L.UNITS for s in L.unit_sites(u)] == norm_sites()
    assert L.unit_sites("conv3.1") == ["conv3.1.end", "conv3.1.post"]
    with pytest.raises(OsnasError, match="unknown unit"):
        L.unit_sites("conv9")


# ----------------------------------------------------------------------------- measure_latency
def test_measure_latency_eager_whole_and_unit_restores_threads():
    m = _model()
    before = torch.get_num_threads()
    torch.set_num_threads(2)  # (not run with 2 threads: slow on a busy 2-core machine)
    try:
        r = L.measure_latency(m, "eager", H, W, batch=1, threads=1, repeats=3, warmup=1)
        assert torch.get_num_threads() == 2  # restored
    finally:
        torch.set_num_threads(before)
    assert r["threads"] == 1 and r["unit"] == "network" and len(r["times_ms"]) == 3
    assert 0 < r["p25_ms"] <= r["median_ms"] <= r["p75_ms"] and r["iqr_ms"] >= 0
    u = L.measure_latency(m, "eager", H, W, repeats=3, warmup=1, unit="conv2.0", threads=1, clock="cpu")
    assert u["unit"] == "conv2.0" and u["clock"] == "cpu" and u["median_ms"] > 0
    with pytest.raises(OsnasError, match="unknown unit"):
        L.measure_latency(m, "eager", H, W, unit="conv7")


def test_onnxruntime_and_torchscript_backends_on_a_tiny_model():
    pytest.importorskip("onnxruntime")
    m = _model()
    for backend in ("onnxruntime", "torchscript"):
        whole = L.measure_latency(m, backend, H, W, batch=2, threads=1, repeats=2, warmup=1)
        unit = L.measure_latency(m, backend, H, W, batch=2, threads=1, repeats=2, warmup=1, unit="conv2.0")
        assert whole["backend"] == backend and whole["median_ms"] > 0 and unit["median_ms"] > 0
    # the onnxruntime runner computes what the folded network computes
    prep = L.prepare(m, "onnxruntime")
    units = prep.units()
    x = L.example_input(1, H, W)
    ex = L.unit_inputs(units, x)["conv2.0"]
    out = L.make_runner(units["conv2.0"], ex, "onnxruntime", threads=1)()[0]
    with torch.no_grad():
        ref = units["conv2.0"](ex).numpy()
    assert out.shape == ref.shape
    assert abs(out - ref).max() < 1e-4 * max(1.0, abs(ref).max())


def test_bad_backend_clock_and_missing_cuda(monkeypatch):
    m = _model()
    with pytest.raises(OsnasError, match="unknown latency backend 'tpu'"):
        L.measure_latency(m, "tpu", H, W)
    with pytest.raises(OsnasError, match="needs threads=1"):
        L.measure_latency(m, "eager", H, W, threads=0, clock="cpu")
    with pytest.raises(OsnasError, match="too small"):
        L.measure_latency(m, "eager", 16, 8)
    with pytest.raises(OsnasError, match="only for backend cuda"):
        L.measure_latency(m, "eager", H, W, device="cuda")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(OsnasError, match="CUDA is not available"):
        L.measure_latency(m, "cuda", H, W)


# ----------------------------------------------------------------------------- proxy table
def test_proxy_in_costs_more_than_plain(proxy_table):
    t = proxy_table
    assert t.method == "proxy" and t.arch == ARCH and (t.height, t.width) == (H, W)
    assert t.latency_ms["stem"]["in"] > t.latency_ms["stem"]["bn"]
    for p in ("conv2.0", "conv2.1", "conv3.0", "conv3.1", "conv4.0", "conv4.1"):
        row = t.latency_ms[p]
        assert row["plain"] < row["in_res"] < row["both"], (p, row)
        assert row["plain"] < row["in_post"] < row["both"], (p, row)
    assert set(t.fixed_units_ms) == {"pool2", "pool3", "conv5"}
    assert t.fixed_ms == pytest.approx(sum(t.fixed_units_ms.values()))


def test_proxy_reference_is_the_all_plain_prediction(proxy_table):
    space = load_space("osnet_stem_blocks")
    plain = {p.name: C.no_in_candidate(p) for p in space.positions}
    assert plain == {"stem": "bn", **{p.name: "plain" for p in space.positions[1:]}}
    assert C.predicted_latency_ms(proxy_table, plain) == pytest.approx(proxy_table.reference_ms, rel=1e-12)
    assert C.relative_cost(proxy_table, plain) == pytest.approx(1.0)
    dear = {p.name: p.names[-1] for p in space.positions}  # stem in, both everywhere
    assert C.relative_cost(proxy_table, dear) > 1.0
    with pytest.raises(OsnasError, match="unknown candidate 'gn'"):
        C.predicted_latency_ms(proxy_table, {**plain, "conv2.0": "gn"})
    with pytest.raises(OsnasError, match="no choice for position 'stem'"):
        C.predicted_latency_ms(proxy_table, {k: v for k, v in plain.items() if k != "stem"})


def test_proxy_with_a_fixed_in_stem_counts_it_in_fixed_but_not_in_the_reference():
    t = C.proxy_cost_table("osnet_ain_blocks", ARCH, H, W)
    space = load_space("osnet_ain_blocks")
    assert "stem" in t.fixed_units_ms and "stem" not in t.latency_ms
    assert t.fixed_units_ms["stem"] > t.reference_units_ms["stem"]  # IN fixed there; the reference has BN
    plain = {p.name: "plain" for p in space.positions}
    assert C.relative_cost(t, plain) > 1.0


def test_proxy_on_a_space_with_several_positions_per_unit_is_additive():
    """norm_sites searches a block's end and post sites separately: the later one holds increments."""
    t = C.proxy_cost_table("norm_sites", ARCH, H, W)
    assert t.latency_ms["conv2.0.post"]["none"] == 0.0 and t.latency_ms["conv2.0.post"]["in"] > 0
    assert t.latency_ms["conv2.0.end"]["in"] > t.latency_ms["conv2.0.end"]["bn"] > 0
    space = load_space("norm_sites")
    base = {p.name: C.no_in_candidate(p) for p in space.positions}
    assert C.relative_cost(t, base) == pytest.approx(1.0)
    # one site departing from the base: exactly the unit priced with it
    stats, numel = C.unit_stats(ARCH, H, W)
    extra = C._op_ms("in", "post", numel["conv2.0.post"], 1)
    assert C.predicted_latency_ms(t, {**base, "conv2.0.post": "in"}) - t.reference_ms == pytest.approx(extra)


def test_proxy_cost_grows_with_the_batch_but_less_than_linearly():
    t1 = C.proxy_cost_table("osnet_stem_blocks", ARCH, H, W, batch=1)
    t8 = C.proxy_cost_table("osnet_stem_blocks", ARCH, H, W, batch=8)
    assert t1.reference_ms < t8.reference_ms < 8 * t1.reference_ms  # per-call overheads do not scale


# ----------------------------------------------------------------------------- expected relative cost
def test_expected_cost_one_hot_equals_predicted_and_gradient_flows(proxy_table):
    space = load_space("osnet_stem_blocks")
    choice = [1, 0, 3, 2, 1, 0, 3]  # stem in, conv2.0 plain, conv2.1 both, ...
    probs = [torch.nn.functional.one_hot(torch.tensor(c), len(p.names)).double() for c, p in
             zip(choice, space.positions)]
    e = C.expected_relative_cost(proxy_table, space, probs)
    choices = {p.name: p.names[c] for c, p in zip(choice, space.positions)}
    assert float(e) == pytest.approx(C.relative_cost(proxy_table, choices), rel=1e-12)

    alphas = [torch.zeros(len(p.names), requires_grad=True) for p in space.positions]
    e = C.expected_relative_cost(proxy_table, space, [a.softmax(-1) for a in alphas])
    e.backward()
    g = alphas[1].grad  # conv2.0: plain, in_res, in_post, both
    assert g is not None and g.abs().sum() > 0
    assert g[0] < 0 < g[3]  # more weight on plain lowers the cost; on both raises it
    uniform = sum(sum(r.values()) / len(r) for r in proxy_table.latency_ms.values())
    assert float(e.detach()) == pytest.approx((uniform + proxy_table.fixed_ms) / proxy_table.reference_ms, rel=1e-6)


def test_expected_cost_rejects_wrong_probabilities(proxy_table):
    space = load_space("osnet_stem_blocks")
    with pytest.raises(OsnasError, match="expected 7 probability vectors"):
        C.expected_relative_cost(proxy_table, space, [torch.ones(2)])
    probs = [torch.ones(len(p.names)) / len(p.names) for p in space.positions]
    probs[2] = torch.ones(3) / 3
    with pytest.raises(OsnasError, match="position conv2.1"):
        C.expected_relative_cost(proxy_table, space, probs)


# ----------------------------------------------------------------------------- files
@pytest.mark.parametrize("suffix", [".yaml", ".json"])
def test_save_load_round_trip(proxy_table, tmp_path, suffix):
    p = proxy_table.save(tmp_path / f"cost{suffix}")
    if suffix == ".json":
        json.loads(p.read_text())
    t = C.load_cost_table(p, "osnet_stem_blocks")
    assert list(t.latency_ms) == list(proxy_table.latency_ms)
    for pos, row in proxy_table.latency_ms.items():
        assert t.latency_ms[pos] == pytest.approx(row, rel=1e-5)
    assert t.reference_ms == pytest.approx(proxy_table.reference_ms, rel=1e-5)
    assert t.path == str(p) and t.space_structure == proxy_table.space_structure
    with pytest.raises(OsnasError, match=r"\.yaml, \.yml or \.json"):
        proxy_table.save(tmp_path / "cost.txt")


def test_mismatching_space_is_refused(proxy_table, tmp_path):
    p = proxy_table.save(tmp_path / "cost.yaml")
    with pytest.raises(OsnasError, match=r"cost\.yaml: .*does not match space 'osnet_ain_blocks' \(positions not in the space \['stem'\]\)"):
        C.load_cost_table(p, "osnet_ain_blocks")
    # same positions and candidates, a different fixed op: the costs would be wrong
    d = yaml.safe_load(load_space("osnet_stem_blocks").text)
    d["fixed"]["pool2"] = "in"
    other = tmp_path / "space.yaml"
    other.write_text(yaml.safe_dump(d))
    with pytest.raises(OsnasError, match="different site ops"):
        C.load_cost_table(p, other)
    # the search's per-step check refuses it too
    with pytest.raises(OsnasError, match="different site ops"):
        C.expected_relative_cost(C.load_cost_table(p), load_space(other),
                                 [torch.ones(len(q.names)) for q in load_space(other).positions])


BROKEN = {
    "format": (lambda d: d.update(format="something"), "not an osnas cost table"),
    "version": (lambda d: d.update(version=7), "version 7 not supported"),
    "reference": (lambda d: d.update(reference_ms=0), "'reference_ms' must be > 0"),
    "latency_text": (lambda d: d["latency_ms"]["stem"].update(bn="fast"), "latency_ms.stem"),
    "spread_keys": (lambda d: d["spread_ms"].pop("stem"), "same positions and candidates"),
    "method": (lambda d: d.update(method="guessed"), "method 'guessed'"),
    "arch": (lambda d: d.update(arch="osnet_x9"), "arch 'osnet_x9'"),
    "batch": (lambda d: d.update(batch=0), "'batch' must be an integer >= 1"),
    "candidate": (lambda d: (d["latency_ms"]["conv2.0"].pop("both"), d["spread_ms"]["conv2.0"].pop("both")),
                  "position conv2.0: candidates"),
}


@pytest.mark.parametrize("name", BROKEN)
def test_broken_cost_tables_are_one_line_errors(proxy_table, tmp_path, name):
    change, needle = BROKEN[name]
    d = proxy_table.to_dict()
    change(d)
    p = tmp_path / "cost.yaml"
    p.write_text(yaml.safe_dump(d))
    with pytest.raises(OsnasError) as e:
        C.load_cost_table(p, "osnet_stem_blocks")
    msg = str(e.value)
    assert needle in msg and str(p) in msg and "\n" not in msg


def test_not_a_cost_table_file(tmp_path):
    with pytest.raises(OsnasError, match="cost table not found"):
        C.load_cost_table(tmp_path / "none.yaml")
    (tmp_path / "c.yaml").write_text("[1, 2]\n")
    with pytest.raises(OsnasError, match="expected a mapping"):
        C.load_cost_table(tmp_path / "c.yaml")
    with pytest.raises(OsnasError, match="expected a cost table file"):
        C.load_cost_table(tmp_path / "c.pth")


# ----------------------------------------------------------------------------- osnas profile
def test_tiny_measured_profile_writes_a_valid_table(tmp_path, capsys):
    from osnas.profile import run_profile

    out = tmp_path / "cost.yaml"
    t = run_profile(space="osnet_stem_blocks", arch=ARCH, backend="eager", height=H, width=W, threads=1,
                    repeats=3, warmup=1, out=out, progress=False, clock="cpu")
    printed = capsys.readouterr().out
    assert "reference" in printed and "conv4.1" in printed and f"wrote {out}" in printed
    loaded = C.load_cost_table(out, "osnet_stem_blocks")
    assert loaded.method == "measured" and loaded.backend == "eager" and loaded.repeats == 3
    assert loaded.clock == "cpu" and loaded.machine["threads"] == 1 and "cpu" in loaded.machine
    assert "hostname" not in json.dumps(loaded.machine) and os.uname().nodename not in out.read_text()
    assert all(v > 0 for row in loaded.latency_ms.values() for v in row.values())
    assert all(v >= 0 for row in loaded.spread_ms.values() for v in row.values())
    assert loaded.whole_ms > 0 and loaded.additive_error is not None
    assert set(loaded.reference_units_ms) == set(L.UNITS)
    # the plain candidates are the reference's own units (one configuration, timed once)
    assert loaded.latency_ms["conv2.0"]["plain"] == loaded.reference_units_ms["conv2.0"]
    assert t.reference_ms == pytest.approx(loaded.reference_ms, rel=1e-5)


def test_pack_networks_builds_each_configuration_once():
    from osnas.profile import pack_networks

    layout = C.cost_layout(load_space("osnet_stem_blocks"))
    nets = pack_networks(layout)
    assert len(nets) == 4  # 4 candidates per block
    timed = [k for _, chosen in nets for k in chosen.values()]
    assert len(timed) == len(set(timed)) == len(layout.keys())
    for plan, chosen in nets:  # every network really holds the configurations timed in it
        for unit, (_, ops) in chosen.items():
            assert all(plan[s] == op for s, op in ops)


def test_profile_proxy_cli_writes_default_name(tmp_path, monkeypatch, capsys):
    """No --space: the table is of the space `osnas search` searches by default, so it fits a
    default search without naming the space twice."""
    from osnas.config import SearchConfig

    monkeypatch.chdir(tmp_path)
    assert main(["profile", "--proxy", "--arch", ARCH, "--height", str(H), "--width", str(W)]) == 0
    out = tmp_path / f"cost_proxy_{ARCH}_{H}x{W}_b1.yaml"
    assert out.is_file() and "x1.000" in capsys.readouterr().out
    t = C.load_cost_table(out, SearchConfig().space)
    assert t.method == "proxy" and t.space == SearchConfig().space == "osnet_stem_blocks"


@pytest.mark.parametrize("args,needle", [
    (["--backend", "tpu"], "unknown backend 'tpu'"),
    (["--height", "8"], "too small"),
    (["--batch", "0"], "batch must be >= 1"),
    (["--threads", "-2"], "--threads must be >= 0"),
    (["--arch", "osnet_x2_0"], "unknown arch"),
    (["--proxy", "--backend", "eager"], "takes no --backend"),
    (["--clock", "cpu"], "needs threads=1"),
    (["--out", "cost.txt"], ".yaml, .yml or .json"),
    (["--space", "no_such_space"], "unknown search space"),
])
def test_profile_cli_bad_input(args, needle, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    capsys.readouterr()
    code = main(["profile", "--arch", ARCH, "--height", "64", "--width", "32", *args])
    _one_line_error(code, capsys.readouterr().err, needle)
    assert not list(tmp_path.iterdir())  # nothing written


def test_profile_cli_missing_cuda(monkeypatch, tmp_path, capsys):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    capsys.readouterr()
    code = main(["profile", "--backend", "cuda", "--arch", ARCH])
    _one_line_error(code, capsys.readouterr().err, "CUDA is not available")


def test_profile_cli_bad_backend_subprocess(tmp_path):
    r = subprocess.run([sys.executable, "-m", "osnas", "profile", "--backend", "gpu9"], cwd=tmp_path, env=ENV,
                       capture_output=True, text=True, timeout=120)
    _one_line_error(r.returncode, r.stderr, "unknown backend 'gpu9'")


def test_noisy_wall_clock_profiles_are_flagged(proxy_table):
    from dataclasses import replace

    from osnas.profile import NOISY, _relative_spread

    quiet = replace(proxy_table, spread_ms={p: {c: 0.05 * v for c, v in cs.items()}
                                            for p, cs in proxy_table.latency_ms.items()})
    noisy = replace(proxy_table, spread_ms={p: {c: 0.8 * v for c, v in cs.items()}
                                            for p, cs in proxy_table.latency_ms.items()})
    assert _relative_spread(quiet) == pytest.approx(0.05) and _relative_spread(quiet) < NOISY
    assert _relative_spread(noisy) == pytest.approx(0.8) and _relative_spread(noisy) > NOISY


def test_in_candidates_timed_below_their_subset_are_raised():
    """Timing noise cannot make IN cheaper than no IN: the table is made monotone in IN sites."""
    from osnas.models.cost import monotone_in_cost
    from osnas.models.space import load_space

    space = load_space("osnet_stem_blocks")
    lat = {p.name: {c: 1.0 for c in p.names} for p in space.positions}
    lat["conv2.0"] = {"plain": 1.0, "in_res": 0.9, "in_post": 1.2, "both": 1.1}
    lat["stem"] = {"bn": 0.5, "in": 0.6}
    raised = monotone_in_cost(space, lat)
    assert lat["conv2.0"] == {"plain": 1.0, "in_res": 1.0, "in_post": 1.2, "both": 1.2}
    assert lat["stem"] == {"bn": 0.5, "in": 0.6}
    assert sorted(raised) == ["conv2.0:both", "conv2.0:in_res"]


def test_median_standard_error_from_the_spread():
    """The timing noise both the protocol's latency stage and the step bench quote: for normal
    timings sigma = IQR / 1.349 and a median's error 1.2533 sigma / sqrt(n) (RESULTS.md: IQR 0.096
    over 100 rounds gives twice the error 0.018); it shrinks as sqrt(n)."""
    assert 2 * L.median_se(0.096, 100) == pytest.approx(0.0178, abs=5e-5)
    assert L.median_se(1.349, 1) == pytest.approx(1.2533)
    assert L.median_se(0.5, 400) == pytest.approx(L.median_se(0.5, 100) / 2)
