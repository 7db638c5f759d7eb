"""The search-step benchmark writes what RESULTS.md's step target reads: for every row a median
ratio to the plain step and its band, the plain step's own ratio exactly 1."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "experiments" / "synthetic"))
results_protocol = pytest.importorskip("results_protocol")


def test_bench_json_feeds_the_step_target(tmp_path):
    out = tmp_path / "bench.json"
    subprocess.run([sys.executable, str(ROOT / "experiments" / "benchmarks" / "bench_search_step.py"),
                    "--arch", "osnet_x0_25", "--height", "32", "--width", "16", "--batch", "8", "--rounds", "4",
                    "--threads", "1", "--json", str(out)], check=True, capture_output=True, timeout=300)
    b = json.loads(out.read_text())
    assert b["config"]["space"] == "osnet_stem_blocks"  # the space the protocol searches, by default
    assert set(b["ratio_median"]) == set(b["ratio_2se"]) == set(b["seconds_best"])
    assert b["ratio_median"]["weight step: plain OSNet"] == 1.0
    assert all(len(r) == 4 for r in b["ratios_per_round"].values())
    # a whole step is the weight step plus the alpha step over alpha_every, round by round
    per = b["ratios_per_round"]
    w, al = per["weight step: supernet (sampled path)"], per["alpha step: first-order"]
    assert per["search step: sampled path, first-order, alpha_every=2"] == pytest.approx(
        [x + y / 2 for x, y in zip(w, al)])
    line = results_protocol.step_target_line(out)
    assert line.startswith("- a whole search step at most 1.5x") and "space osnet_stem_blocks" in line
    assert line.count("x (") == len(results_protocol.STEP_KEYS)
