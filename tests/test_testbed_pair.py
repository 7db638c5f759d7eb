"""run_testbed.py --pair and --from: a recipe that searches nothing and derives each seed from two
other recipes' searches (the protocol's pair-pooled on the synth test-bed), or from one other
recipe's search again with other derive settings (--stem-first)."""

import json
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml

from osnas.errors import OsnasError

HERE = Path(__file__).resolve().parents[1] / "experiments" / "synthetic"
sys.path.insert(0, str(HERE))
import run_testbed  # noqa: E402


@pytest.mark.parametrize("recipe, pair, sets", [
    ("p", "a", []),                 # one recipe is not a pair
    ("p", "a,b,c", []),
    ("a", "a,b", []),               # the pair's own name among its parts
    ("p", "lodo,b", []),            # lodo's folders have no suffix: not a recipe name here
    ("p", "a,b", ["search.lr=1"]),  # nothing is searched: --search-set would be ignored silently
])
def test_bad_pair_arguments_are_refused(recipe, pair, sets):
    with pytest.raises(OsnasError, match="--pair"):
        run_testbed._pair_recipes(SimpleNamespace(recipe=recipe, pair=pair, search_set=sets))


def test_a_pair_names_its_missing_searches_before_training_anything(tmp_path):
    r = subprocess.run([sys.executable, str(HERE / "run_testbed.py"), "--out", str(tmp_path), "--seeds", "1,2",
                        "--recipe", "both", "--pair", "u,s"], capture_output=True, text=True)
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1
    assert str(tmp_path / "seed1" / "search-u") in r.stderr and str(tmp_path / "seed2" / "search-s") in r.stderr
    assert list(tmp_path.iterdir()) == []  # no domain-gap retrain started


@pytest.mark.parametrize("recipe, src, pair, sets", [
    ("p", "a,b", None, []),             # one recipe's search
    ("a", "a", None, []),               # not its own
    ("p", "lodo", None, []),
    ("p", "a", "a,b", []),              # not with --pair
    ("p", "a", None, ["search.lr=1"]),  # nothing is searched
])
def test_bad_from_arguments_are_refused(recipe, src, pair, sets):
    with pytest.raises(OsnasError, match="--from"):
        run_testbed._pair_recipes(SimpleNamespace(recipe=recipe, from_recipe=src, pair=pair, search_set=sets))


def test_from_names_one_recipe_and_its_missing_searches(tmp_path):
    assert run_testbed._pair_recipes(SimpleNamespace(recipe="u-stem", from_recipe="u", pair=None,
                                                     search_set=[])) == ["u"]
    r = subprocess.run([sys.executable, str(HERE / "run_testbed.py"), "--out", str(tmp_path), "--seeds", "1",
                        "--recipe", "u-stem", "--from", "u", "--stem-first"], capture_output=True, text=True)
    assert r.returncode == 2 and "Traceback" not in r.stderr and r.stderr.startswith("run_testbed: --from u:")
    assert str(tmp_path / "seed1" / "search-u") in r.stderr and list(tmp_path.iterdir()) == []


def _recipe(out: Path, seed: int, name: str, searched: float, config: bool, runs=(), stem_first=False):
    search = out / f"seed{seed}" / f"search-{name}"
    search.mkdir(parents=True)
    positions = {"stem": {"choice": "in", **({"stem_first": {"moved_from": "conv2.0"}} if stem_first else {})}}
    (search / "genotype.yaml").write_text(yaml.safe_dump({"plan": {"stem": "in"}, "select": "retrieval-pooled",
                                                          "runs": [str(r) for r in runs], "positions": positions}))
    if config:
        (search / "config.yaml").write_text(yaml.safe_dump({"search": {
            "space": "osnet_stem_blocks", "weight_step": "uniform", "objective": "unseen", "epochs": 2,
            "steps_per_epoch": 3, "optimizer": "amsgrad", "lr": 0.02}}))
    ev = out / f"seed{seed}" / f"eval-{name}"
    ev.mkdir(parents=True)
    models = {k: {"targets": {"synth3": {"mAP": v}}} for k, v in
              (("searched-x", searched), ("osnet_ain-y", 0.25), ("osnet-z", 0.15))}
    (ev / "metrics.json").write_text(json.dumps({"models": models}))
    return search


def test_compare_describes_a_pair_recipe_by_the_searches_it_derives_from(tmp_path):
    u = _recipe(tmp_path, 1, "u", 0.20, config=True)
    s = _recipe(tmp_path, 1, "s", 0.22, config=True)
    _recipe(tmp_path, 1, "both", 0.30, config=False, runs=[u, s])
    results = tmp_path / "R.md"
    run_testbed.compare_recipes(tmp_path, str(results))
    text = results.read_text()
    assert "| both | the searches of u and s, derived together |" in text
    assert "| both | 1 | 30.0 ± 0.0 | 5.0 ± 0.0 | 15.0 ± 0.0 |" in text  # paired against the shared retrains
    assert "| u | osnet_stem_blocks | uniform | unseen | 6 | amsgrad, 0.02 | retrieval-pooled |" in text


def test_compare_describes_a_from_recipe_and_its_stem_first_derive(tmp_path):
    u = _recipe(tmp_path, 1, "u", 0.20, config=True)
    _recipe(tmp_path, 1, "u-stem", 0.28, config=False, runs=[u], stem_first=True)
    results = tmp_path / "R.md"
    run_testbed.compare_recipes(tmp_path, str(results))
    text = results.read_text()
    assert "| u-stem | the searches of u, derived again | | | | | retrieval-pooled --stem-first |" in text
    assert "| u-stem | 1 | 28.0 ± 0.0 | 3.0 ± 0.0 | 13.0 ± 0.0 |" in text
