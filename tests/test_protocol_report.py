"""The protocol's scripts (experiments/synthetic: recipes.py, run_protocol.py, results_protocol.py).

RESULTS.md's analysis of the yardstick, on hand-made summaries: a planted effect at one position
must be reported as resolved, positions without one must not, and each method's seeds are counted
against the favoured side. The registry: every recipe described, its searches pinned, the
historical ones refused with the commit that ran them."""

import json
import random
import sys
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parents[1] / "experiments" / "synthetic"
sys.path.insert(0, str(HERE))
results_protocol = pytest.importorskip("results_protocol")

POSITIONS = ["stem", "conv2.0", "conv2.1"]
BLOCK = ["plain", "in_res", "in_post", "both"]


# the no-effect positions are called at the 2-standard-error level, so by chance about one in
# twenty draws resolves one of them: the draw is fixed (seed 1)
def _summary(stem_effect: float, n: int = 40, seed: int = 1) -> dict:
    rng = random.Random(seed)
    randoms, yard = [], {}
    for i in range(n):
        a = {"stem": rng.choice(["bn", "in"]), "conv2.0": rng.choice(BLOCK), "conv2.1": rng.choice(BLOCK)}
        randoms.append(a)
        yard[f"random{i:02d}"] = {"mAP": 0.05 + (stem_effect if a["stem"] == "in" else 0.0) + rng.gauss(0, 0.002)}
    seeds = [{"seed": s, "choices": {"stem": st, "conv2.0": "plain", "conv2.1": "both"}}
             for s, st in enumerate(["in", "in", "bn"], 1)]
    return {"random_architectures": randoms, "yardstick": yard, "methods": {"argmax": {"per_seed": seeds}}}


def test_a_planted_stem_effect_is_resolved_and_the_seeds_are_counted():
    text = "\n".join(results_protocol.yardstick_section(_summary(0.02)))
    stem = next(line for line in text.splitlines() if line.startswith("| stem |"))
    assert stem.endswith("| **IN** |")
    for pos in ("conv2.0", "conv2.1"):  # no effect planted: not resolved, however the stem's falls
        assert next(line for line in text.splitlines() if line.startswith(f"| {pos} |")).endswith("| no |")
    assert "- argmax: stem 2/3" in text


def test_the_opposite_effect_favours_no_in_and_no_effect_resolves_nothing():
    text = "\n".join(results_protocol.yardstick_section(_summary(-0.02)))
    assert next(line for line in text.splitlines() if line.startswith("| stem |")).endswith("| **no IN** |")
    assert "- argmax: stem 1/3" in text
    flat = "\n".join(results_protocol.yardstick_section(_summary(0.0)))
    assert "**IN**" not in flat and "**no IN**" not in flat and "Seeds choosing" not in flat


def test_paired_methods_are_tabled_against_both_references():
    pm = {"uniform": {"choices": {"stem": "bn"}, "mAP": [0.06, 0.07],
                      "vs_osnet_ain": {"diff_mean": 0.02, "diff_std": 0.005},
                      "vs_osnet": {"diff_mean": 0.0, "diff_std": 0.0}},
          "retrieval": {"choices": {"stem": "in"}, "mAP": [0.05, 0.05],
                        "vs_osnet_ain": {"diff_mean": -0.001, "diff_std": 0.01},
                        "vs_osnet": {"diff_mean": -0.015, "diff_std": 0.004}}}
    lines = results_protocol.paired_methods_section({"paired_methods": pm}, noise=0.007)
    assert "| uniform | stem=bn | 6.5 ± 0.7 | 2.0 ± 0.5 | 0.0 ± 0.0 |" in lines
    assert "| retrieval | stem=in | 5.0 ± 0.0 | -0.1 ± 1.0 | -1.5 ± 0.4 |" in lines
    assert results_protocol.paired_methods_section({"paired_methods": {"uniform": pm["uniform"]}}, 0.007) == []


def test_a_retrain_refuses_a_genotype_that_is_not_its_folders_architecture(tmp_path):
    """Retrain folders are named by the architecture they hold: a genotype file that names
    another one (a stale label) must stop the job before any training."""
    run_protocol = pytest.importorskip("run_protocol")
    from osnas.models.genotype import named_genotype

    g = tmp_path / "default.yaml"
    named_genotype("osnet_ain").save(g)
    right = tmp_path / run_protocol.plan_id(named_genotype("osnet_ain").plan) / "seed2"
    wrong = tmp_path / run_protocol.plan_id(named_genotype("osnet").plan) / "seed2"
    with pytest.raises(RuntimeError, match="not " + wrong.parent.name):
        run_protocol.retrain({"genotype": str(g), "out": str(wrong), "seed": 2, "overrides": [],
                              "root": str(tmp_path), "config": ""})
    assert not wrong.exists() and not right.exists()


def test_the_targets_are_judged_on_the_default_method_not_on_the_best_one():
    """Another method meeting agreement or the top 10% is named for reference, but the target
    is the default's: here the default misses both while `other` meets both."""
    def method(same, agree, worst):
        return {"same_genotype": same, "mean_position_agreement": agree, "min_percentile": worst}

    s = {"paired": {"default": "dflt", "diff_mean": 0.03},
         "methods": {"dflt": method("2/5", 0.86, 74.0), "other": method("4/5", 0.95, 95.0)},
         "noise": {"mAP_std": 0.01, "mAP": [0.05, 0.06]},
         "yardstick": {f"r{i}": {"mAP": 0.01 * i} for i in range(10)}}
    lines = results_protocol.targets_section(s)
    agree = next(x for x in lines if x.startswith("- same genotype"))
    top = next(x for x in lines if x.startswith("- genotype in the top 10%"))
    beat = next(x for x in lines if x.startswith("- beats OSNet-AIN"))
    assert "**not met** (2/5 identical, 86% agreement" in agree and "other, 4/5 and 95%" in agree
    assert "**not met** (worst percentile 74;" in top and "the highest: other" in top
    assert beat.startswith("- beats OSNet-AIN by more than twice the noise floor, paired: met (3.0 vs 2.0)")
    s["methods"]["dflt"] = method("4/5", 0.80, 90.0)  # 4 of 5 identical is enough, whatever the agreement
    lines = results_protocol.targets_section(s)
    assert any(x.startswith("- same genotype") and ": met (4/5" in x for x in lines)
    assert any(x.startswith("- genotype in the top 10%") and ": met (worst percentile 90" in x for x in lines)
    for same, ok in (("8/10", True), ("7/10", False)):  # more seeds (--search-seeds): 80% of them
        s["methods"]["dflt"] = method(same, 0.85, 90.0)
        agree = next(x for x in results_protocol.targets_section(s) if x.startswith("- same genotype"))
        assert (f": met ({same}" in agree) == ok and (f"**not met** ({same}" in agree) != ok


def test_with_several_yardstick_seeds_the_means_decide_the_percentile_target():
    """One retrain per architecture cannot place a genotype in the top 10% reliably; with
    --yardstick-seeds the default's percentile among the yardstick's means decides the target,
    and the one-retrain figure is still shown."""
    s = {"paired": {"default": "dflt", "diff_mean": 0.0},
         "methods": {"dflt": {"same_genotype": "5/5", "mean_position_agreement": 1.0, "min_percentile": 74.0,
                              "min_percentile_resolved": 95.0}},
         "noise": {"mAP_std": 0.01, "mAP": [0.05, 0.06]}, "yardstick_seeds": 3,
         "yardstick": {f"r{i}": {"mAP": 0.01 * i, "mAP_seeds": [0.01 * i] * 3} for i in range(10)}}
    top = next(x for x in results_protocol.targets_section(s) if x.startswith("- genotype in the top 10%"))
    assert "the mean of 3 retrains: met (worst percentile 95; by one retrain each: 74" in top
    s["methods"]["dflt"]["min_percentile_resolved"] = 87.0
    top = next(x for x in results_protocol.targets_section(s) if x.startswith("- genotype in the top 10%"))
    assert "**not met** (worst percentile 87; by one retrain each: 74" in top


def test_the_position_effects_are_fitted_on_the_means_of_the_yardstick_seeds():
    """A stem effect visible only in the mean over seeds (the seed-1 retrains are pure noise)
    is resolved when the yardstick has several seeds."""
    s = _summary(0.0)
    rng = random.Random(7)
    for i, a in enumerate(s["random_architectures"]):
        true = 0.05 + (0.02 if a["stem"] == "in" else 0.0)
        s["yardstick"][f"random{i:02d}"]["mAP_seeds"] = [true + rng.gauss(0, 0.002) for _ in range(3)]
    s["yardstick_seeds"] = 3
    text = "\n".join(results_protocol.yardstick_section(s))
    assert next(line for line in text.splitlines() if line.startswith("| stem |")).endswith("| **IN** |")
    assert "(each the mean of 3 retrains)" in text


def test_summarise_places_every_method_by_the_means_of_its_retrains():
    run_protocol = pytest.importorskip("run_protocol")
    pytest.importorskip("scipy")
    from types import SimpleNamespace as NS

    space = NS(name="toy", positions=[NS(name="stem")])
    cfg = NS(data=NS(sources=["a"], targets=["b"]), model=NS(arch="x"),
             search=NS(epochs=1, steps_per_epoch=1), train=NS(epochs=1, steps_per_epoch=1))
    plans = {"in": {"stem": "in"}, "bn": {"stem": "bn"}}
    # retrains by (plan, seed): IN is better on average, and its seed-1 retrain is unlucky; BN's is lucky
    maps = {("in", 1): 0.04, ("in", 2): 0.08, ("bn", 1): 0.05, ("bn", 2): 0.04}

    def result(plan, seed=1):
        k = plan["stem"]
        return {"mAP": maps[(k, seed)], "rank1": 0.0, "targets": {}}

    yard = {f"random{i:02d}": {"mAP": 0.045 + 0.001 * i, "mAP_seeds": [0.045 + 0.001 * i] * 2} for i in range(4)}
    derived = [{"plan": plans["in"], "choices": {"stem": "in"}, "agreement": {}},
               {"plan": plans["bn"], "choices": {"stem": "bn"}, "agreement": {}}]
    djobs = [{"method": "dflt", "seed": 1}, {"method": "other", "seed": 1}]
    s = run_protocol.summarise(cfg, space, [result(plans["bn"])], yard, [{"stem": "bn"}] * 4, derived, djobs,
                               result, {}, [(0.04, 0.05)], "dflt", yseeds=[1, 2])
    d, o = s["methods"]["dflt"], s["methods"]["other"]
    assert d["per_seed"][0]["mAP_seeds"] == [0.04, 0.08] and d["min_percentile_resolved"] == 100.0
    assert d["min_percentile"] == 0.0  # seed 1 alone: below every yardstick architecture
    # not only the default: every method alike, here one whose mean ranks it lower than seed 1 alone
    assert o["per_seed"][0]["mAP_seeds"] == [0.05, 0.04] and o["min_percentile_resolved"] == 25.0
    assert o["min_percentile"] == 100.0
    assert s["yardstick_seeds"] == 2
    one = run_protocol.summarise(cfg, space, [result(plans["bn"])], yard, [{"stem": "bn"}] * 4, derived, djobs,
                                 result, {}, [(0.04, 0.05)], "dflt", yseeds=[1])
    assert all("min_percentile_resolved" not in m and "mAP_seeds" not in m["per_seed"][0]
               for m in one["methods"].values())


@pytest.mark.parametrize("v, text", [(1, "1st"), (2.0, "2nd"), (3, "3rd"), (11, "11th"), (12.4, "12th"), (13, "13th"),
                                     (22, "22nd"), (83.0, "83rd"), (91.3, "91st"), (100, "100th"), (0, "0th")])
def test_percentiles_are_written_as_ordinals(v, text):
    assert results_protocol.ordinal(v) == text


def test_a_pair_method_costs_both_of_its_searches_per_seed():
    """pair-pooled derived from two searches per seed: its search time is their sum, seed by seed,
    and a seed whose time is unknown (NaN) in either is left out."""
    from recipes import RECIPES

    assert RECIPES["pair-pooled"].searches == ("uniform", "sampled-unseen")
    assert RECIPES["uniform"].searches == ("uniform",)
    s = {"search_minutes": {"uniform": [2.0, 2.2, float("nan")], "sampled-unseen": [1.5, 1.3, 1.4]},
         "methods": {"pair-pooled": {"per_seed": [{"derive_seconds": 60.0}, {"derive_seconds": 120.0}]}}}
    assert results_protocol._minutes(s, "pair-pooled") == "3.5 per seed + 1.5 derive"
    assert results_protocol._minutes(s, "uniform") == "2.1 per seed + derive"  # its derive time unknown here
    assert results_protocol._minutes(s, "argmax") == "–"  # no lodo searches in this summary


def test_a_vote_answer_reads_three_searches_and_costs_their_sum():
    """vote3's answer s reads the uniform seeds 3s-2 .. 3s (no seed twice, none skipped), each read
    by retrieval-pooled and voted by derive, and costs their three search times together."""
    from recipes import RECIPES

    vote = RECIPES["vote3"]
    assert vote.searches == ("uniform",) and vote.select == "retrieval-pooled" and vote.runs_per_answer == 3
    assert [vote.answer_seeds(s) for s in (1, 2, 5)] == [[1, 2, 3], [4, 5, 6], [13, 14, 15]]
    assert RECIPES["uniform-pooled"].answer_seeds(4) == [4]
    s = {"search_minutes": {"uniform": [1.0, 2.0, 3.0, 1.5, 1.5, 1.5, 9.0]},  # 7: the last triple incomplete
         "methods": {"vote3": {"per_seed": [{"derive_seconds": 90.0}, {"derive_seconds": 90.0}]}}}
    assert results_protocol._minutes(s, "vote3") == "5.2 per seed + 1.5 derive"  # (6.0 + 4.5) / 2
    assert results_protocol._minutes(s, "uniform").startswith("2.8 per seed")  # each search alone: 19.5 / 7


def test_the_step_target_is_judged_on_the_bench_band(tmp_path):
    """A whole search step is met only when its median ratio plus twice the standard error stays
    at or under 1.5x, not met when the whole band is above, and at the limit in between."""
    key = "search step: sampled path, first-order, alpha_every=2"
    config = {"space": "osnet_stem_blocks", "arch": "osnet_x1_0", "batch": 16, "height": 256, "width": 128,
              "rounds": 20}

    def line(median, band):
        f = tmp_path / "bench.json"
        f.write_text(json.dumps({"config": config, "ratio_median": {key: median}, "ratio_2se": {key: band}}))
        return results_protocol.step_target_line(f)

    assert "1.46 ± 0.03x (met)" in line(1.46, 0.03)
    assert "(**not met**)" in line(1.56, 0.03)
    assert "(at the limit, inside the timing noise)" in line(1.49, 0.03)
    assert "space osnet_stem_blocks" in line(1.46, 0.03)
    (tmp_path / "old.json").write_text(json.dumps({"ratio_to_plain": {key: 1.4}}))  # before rounds: not quoted
    assert results_protocol.step_target_line(tmp_path / "old.json") == ""
    assert results_protocol.step_target_line(tmp_path / "absent.json") == ""


def test_the_yardstick_table_lists_every_architecture_by_its_mean_with_its_in_sites():
    """RESULTS.md keeps each yardstick architecture's retrains, best first, so a later genotype can
    be placed among them without retraining the yardstick."""
    s = _summary(0.01, n=6)
    s["yardstick"]["osnet"] = {"mAP": 0.5}  # published: no random draw behind it
    s["yardstick"]["random00"]["mAP_seeds"] = [0.2, 0.4]  # its mean (0.3) sorts it, not its first retrain
    s["random_architectures"][0] = {"stem": "in", "conv2.0": "plain", "conv2.1": "both"}
    s["random_architectures"][1] = {"stem": "bn", "conv2.0": "plain", "conv2.1": "plain"}
    rows = [r for r in results_protocol.yardstick_table(s) if r.startswith("| ") and "---" not in r][1:]
    assert len(rows) == 7
    assert rows[0].startswith("| osnet | published |")
    assert rows[1] == "| random00 | stem, conv2.1 both | 20.0, 40.0 | 30.0 |"
    assert "| random01 | none |" in "\n".join(rows)
    means = [float(r.rstrip(" |").rsplit("|", 1)[1]) for r in rows]
    assert means == sorted(means, reverse=True)


def test_results_regenerate_from_the_copies_kept_beside_them(tmp_path, monkeypatch):
    """Without run folders, results_protocol.py reads the results_<configuration>.json that
    write_results keeps beside RESULTS.md; with neither, one line and a non-zero exit."""
    got = {}
    monkeypatch.setattr(results_protocol, "write_results", lambda summaries, *a, **k: got.update(summaries))
    (tmp_path / "results_style.json").write_text(json.dumps({"config": {"name": "style"}}))
    monkeypatch.setattr(sys, "argv", ["results_protocol.py", str(tmp_path)])
    results_protocol.main()
    assert got == {"style": {"config": {"name": "style"}}}
    monkeypatch.setattr(sys, "argv", ["results_protocol.py", str(tmp_path / "empty")])
    with pytest.raises(SystemExit, match="no .*results.json or results_.*json in"):
        results_protocol.main()


def test_two_results_files_share_a_folder_without_overwriting(tmp_path, monkeypatch):
    """A second results file (RESULTS_X.md) keeps its summaries as RESULTS_X.results_<config>.json:
    regenerating it reads only those, and RESULTS.md's own copies are left to RESULTS.md."""
    assert results_protocol.prefix(tmp_path / "RESULTS.md") == ""
    assert results_protocol.prefix(tmp_path / "RESULTS_defaults.md") == "RESULTS_defaults."
    got = {}
    monkeypatch.setattr(results_protocol, "write_results", lambda summaries, path, *a, **k: got.update(
        {path.name: summaries}))
    (tmp_path / "results_style.json").write_text(json.dumps({"run": "main"}))
    (tmp_path / "RESULTS_defaults.results_style.json").write_text(json.dumps({"run": "defaults"}))
    for name in ("RESULTS.md", "RESULTS_defaults.md"):
        monkeypatch.setattr(sys, "argv", ["results_protocol.py", str(tmp_path), "--results", str(tmp_path / name)])
        results_protocol.main()
    assert got == {"RESULTS.md": {"style": {"run": "main"}}, "RESULTS_defaults.md": {"style": {"run": "defaults"}}}


def test_every_recipe_is_described_and_its_searches_exist():
    """Each recipe of the registry has its row text and its searches; the every-3 pair keeps about
    the plain-step budget of the pair it varies (1.32x at 275 steps against 1.48x at 250:
    bench_search_step.json)."""
    from osnas.config import build_config
    from recipes import RECIPES, SEARCHES

    for name, r in RECIPES.items():
        assert r.text and all(v in SEARCHES for v in r.searches), name
        assert r.select in ("argmax", "perturb", "consensus", "retrieval", "retrieval-pooled"), name
    assert RECIPES["pair3-pooled"].searches == ("uniform", "sampled3-unseen")

    def steps(variant):
        cfg = build_config(str(HERE / "testbed_style.yaml"), list(SEARCHES[variant].overrides))
        return cfg.search.epochs * cfg.search.steps_per_epoch, cfg.search.alpha_every

    assert steps("sampled-unseen") == (250, 2) and steps("sampled3-unseen") == (275, 3)
    assert abs(275 * 1.32 - 250 * 1.48) / (250 * 1.48) < 0.05


def test_every_search_variant_pins_what_its_recipe_needs_not_the_package_defaults():
    """The recipes are older than the package's defaults (three supernets, sampled paths, triplet
    alpha loss, objective auto): every variant states one supernet and its own weight step,
    objective and alpha loss, so a change of the defaults cannot change a recipe."""
    from osnas.config import build_config
    from recipes import SEARCHES

    want = {"lodo": ("mixed", 1, "lodo", "id"), "anneal": ("mixed", 2, "lodo", "id"),
            "unseen": ("mixed", 1, "unseen", "triplet"), "sampled": ("sampled", 2, "lodo", "id"),
            "sampled-unseen": ("sampled", 2, "unseen", "triplet"), "uniform": ("uniform", None, "unseen", "triplet"),
            "sampled3-unseen": ("sampled", 3, "unseen", "triplet")}
    for v, (step, every, objective, loss) in want.items():
        sets = SEARCHES[v].overrides
        assert "search.runs=1" in sets and f"search.weight_step={step}" in sets, v
        assert f"search.objective={objective}" in sets and f"search.alpha_loss={loss}" in sets, v
        cfg = build_config(None, list(sets))
        assert (cfg.search.runs, cfg.search.weight_step, cfg.search.objective, cfg.search.alpha_loss) == \
            (1, step, objective, loss), v
        if every is not None:
            assert cfg.search.alpha_every == every, v


@pytest.mark.parametrize("config", ["testbed_style.yaml", "testbed_geometry.yaml", "testbed.yaml"])
def test_every_search_variant_is_a_valid_search_on_every_configuration(config):
    """A variant's settings go together on each configuration the runners use (the check a search
    makes before it reads any data)."""
    from osnas.config import build_config
    from osnas.search.bilevel import validate_search_config
    from recipes import SEARCHES

    for v, search in SEARCHES.items():
        sets = [o.format(cost_table="proxy") for o in search.overrides]
        validate_search_config(build_config(str(HERE / config), sets))


@pytest.mark.parametrize("flag", [["--search-seeds", "1"], ["--methods", "pair3"], ["--default", "uniform-pooled",
                                                                                   "--methods", "pair3-pooled"]])
def test_the_protocol_refuses_bad_arguments_in_one_line(flag, monkeypatch, tmp_path):
    run_protocol = pytest.importorskip("run_protocol")
    with pytest.raises(SystemExit) as e:
        run_protocol.main(["--out", str(tmp_path / "p"), *flag])
    assert isinstance(e.value.code, (str, int)) and e.value.code != 0
    assert not (tmp_path / "p").exists()  # refused before any work


@pytest.mark.parametrize("method, commit", [("consensus", "d8d15c6"), ("pair-pooled", "252a0b4"),
                                            ("pair3-pooled", "252a0b4")])
def test_a_historical_recipe_is_refused_naming_the_commit_that_ran_it(method, commit, tmp_path):
    """consensus and the pooled pairs need derive modes the package no longer has: one line that
    says so and names the commit whose code ran them, before any work."""
    run_protocol = pytest.importorskip("run_protocol")
    with pytest.raises(SystemExit) as e:
        run_protocol.main(["--out", str(tmp_path / "p"), "--methods", f"uniform-pooled,{method}",
                           "--default", "uniform-pooled"])
    line = str(e.value.code)
    assert "\n" not in line and f"recipe {method} is historical" in line and f"git checkout {commit}" in line
    assert not (tmp_path / "p").exists()


def test_the_recorded_command_names_the_run_folder_and_data_root_out_and_data():
    """RESULTS.md records the command without paths outside the repository."""
    from expkit import provenance

    argv = ["--out", "/tmp/x/exp", "--data-root", "/tmp/x/data", "--methods", "vote3", "--default", "vote3"]
    assert provenance.command(argv, "/tmp/x/exp", "/tmp/x/data") == \
        "--out OUT --data-root DATA --methods vote3 --default vote3"


def test_a_resumed_search_counts_its_running_time_only(tmp_path):
    """The wall-time column: a search killed and resumed 40 minutes later ran for 1.5 minutes."""
    run_protocol = pytest.importorskip("run_protocol")
    (tmp_path / "log.txt").write_text("\n".join([
        "23:59:00 search osnet_stem_blocks ...", "23:59:30 epoch 1 step 50/250", "00:39:30 resumed RUN at epoch 2",
        "00:40:00 epoch 3 step 100/250", "00:40:30 final choices: stem=bn", "00:40:30 done: RUN"]) + "\n")
    assert run_protocol.search_minutes(tmp_path) == pytest.approx(1.5)
    (tmp_path / "log.txt").write_text("00:00:00 search\n00:01:00 epoch 1\n")  # never finished
    assert run_protocol.search_minutes(tmp_path) != run_protocol.search_minutes(tmp_path)  # nan


def test_the_header_gives_each_search_its_own_steps(tmp_path):
    """A search variant's budget comes from its run's config.yaml, not the configuration file's
    search.epochs (which is the leave-one-domain-out search's only)."""
    run_protocol = pytest.importorskip("run_protocol")
    (tmp_path / "config.yaml").write_text("search:\n  epochs: 14\n  steps_per_epoch: 25\n")
    assert run_protocol.search_steps(tmp_path) == 350
    c = {"search_steps": 150, "search_steps_by_variant": {"uniform": 350, "sampled-unseen": 250}}
    assert results_protocol._search_steps_text(c) == "search steps uniform 350, sampled-unseen 250"
    assert results_protocol._search_steps_text({"search_steps": 150}) == "search 150 steps"  # an older summary
