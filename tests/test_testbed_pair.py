"""experiments/synthetic/run_testbed.py: the recipes come from the registry (recipes.py) alone,
unknown and historical ones are refused before any work, and RESULTS.md is rendered from
results.json alone (each recipe paired with the published designs by seed)."""

import json
import sys
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parents[1] / "experiments" / "synthetic"
sys.path.insert(0, str(HERE))
import run_testbed  # noqa: E402


@pytest.mark.parametrize("recipe, says", [
    ("pair", "unknown recipe 'pair'"),
    ("pair-pooled", "recipe pair-pooled is historical"),  # several runs' scores pooled: the package votes now
    ("consensus", "git checkout d8d15c6"),
])
def test_unknown_and_historical_recipes_are_refused_before_any_work(tmp_path, recipe, says):
    with pytest.raises(SystemExit) as e:
        run_testbed.main(["--out", str(tmp_path / "tb"), "--seeds", "1,2", "--recipes", f"uniform-pooled,{recipe}"])
    assert "\n" not in str(e.value.code) and says in str(e.value.code)
    assert not (tmp_path / "tb").exists()  # no domain-gap retrain started


def test_the_recorded_command_keeps_no_path_outside_the_repository(tmp_path):
    a = run_testbed.parse_args(["--out", str(tmp_path / "tb"), "--data-root", "/tmp/data", "--seeds", "1,2",
                                "--config", str(HERE / "testbed.yaml"), "--recipes", "vote3"])
    assert a.command == ("python experiments/synthetic/run_testbed.py --out OUT --data-root DATA --seeds 1,2 --config "
                         "experiments/synthetic/testbed.yaml --recipes vote3")
    assert a.seeds == [1, 2] and a.recipes == ["vote3"]


def _answer(seed, m, sites, stem="in"):
    return {"seed": seed, "mAP": m, "rank1": m + 0.05, "targets": {"synth3": {"mAP": m, "rank1": m + 0.05}},
            "choices": {"stem": stem, "conv2.0": "plain"}, "in_sites": sites}


def _summary() -> dict:
    designs = {n: [{"mAP": v + 0.01 * i, "rank1": v, "targets": {}} for i in range(2)]
               for n, v in (("osnet", 0.15), ("osnet_ibn", 0.2), ("osnet_ain", 0.25))}
    return {"command": "python experiments/synthetic/run_testbed.py --out OUT --recipes vote3", "commit": "abc1234",
            "minutes": 12.3, "seeds": [1, 2],
            "config": {"file": "osnas/configs/demo.yaml", "sources": ["synth0", "synth1", "synth2"],
                       "targets": ["synth3"], "arch": "osnet_x0_25", "size": "64x32", "retrain_steps": 240},
            "gap": {"synth0": {"mAP": 0.5, "rank1": 0.6}, "synth3": {"mAP": 0.3, "rank1": 0.35}},
            "designs": designs,
            "recipes": {"vote3": {"text": "three uniform supernets, voted", "select": "retrieval-pooled",
                                  "runs_per_answer": 3, "moves": [], "searches": {"uniform": "search.runs=1"},
                                  "answers": [_answer(1, 0.30, ["stem"]), _answer(2, 0.20, [], stem="bn")]}}}


def test_results_are_rendered_from_the_summary_alone(tmp_path):
    """Each recipe row: its mean over seeds and its differences with OSNet-AIN and OSNet, paired by
    seed; the recipe as it ran; what each seed chose; the agreement between seeds. Regenerating
    from results.json gives the same bytes."""
    text = run_testbed.render(_summary())
    assert "osnas at commit abc1234" in text and "--out OUT" in text
    assert "| synth0 (same domain) | 60.0 | 50.0 |" in text
    # vote3 minus OSNet-AIN: 30 - 25 = +5 and 20 - 26 = -6 -> -0.5 ± 7.8; minus OSNet: 15 and 4 -> 9.5 ± 7.8
    assert "| vote3 | 25.0 ± 7.1 | 30.0 ± 7.1 | -0.5 ± 7.8 | 9.5 ± 7.8 | 1, 0 |" in text
    assert "| vote3 | three uniform supernets, voted | uniform: `search.runs=1` | retrieval-pooled | 3 | – |" in text
    assert "| vote3 | 2 | 20.0 | 26.0 | 16.0 | nowhere |" in text
    assert "- vote3: the most frequent genotype found by 1 of 2 seeds (2 distinct); per position, the modal " \
           "choice's share: stem 1/2, conv2.0 2/2." in text
    (tmp_path / "results.json").write_text(json.dumps(_summary()))
    assert run_testbed.main(["--render", str(tmp_path / "results.json"), "--results", str(tmp_path / "R.md")]) == 0
    assert (tmp_path / "R.md").read_text() == text
