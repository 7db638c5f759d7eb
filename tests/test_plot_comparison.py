"""`osnas plot` on a comparison folder (results.json of the trustworthy-search protocol): the
distribution of retrained architectures with the searched ones marked, seed agreement, and
the Pareto front of held-out mAP against latency when latencies are recorded."""

import json

import pytest

from osnas.errors import OsnasError
from osnas.plot import run_plot
from osnas.plot.comparison import pareto_front


def _results(latency: bool) -> dict:
    yard = {f"random{i:02d}": {"mAP": 0.05 + 0.01 * i, "rank1": 0.1} for i in range(6)}
    yard.update({"osnet": {"mAP": 0.07, "rank1": 0.1}, "osnet_ibn": {"mAP": 0.08, "rank1": 0.1},
                 "osnet_ain": {"mAP": 0.09, "rank1": 0.1}})
    if latency:
        for i, v in enumerate(yard.values()):
            v["latency_ms"] = 1.0 + 0.1 * i
    row = {"seed": 1, "mAP": 0.1, **({"latency_ms": 1.2} if latency else {})}
    return {"yardstick": yard, "noise": {"mAP_std": 0.005},
            "methods": {"argmax": {"per_seed": [row, dict(row, seed=2)], "mean_position_agreement": 0.8},
                        "consensus": {"per_seed": [row], "mean_position_agreement": 0.9}}}


@pytest.mark.parametrize("latency", [False, True])
def test_comparison_folder_draws_distribution_agreement_and_pareto(tmp_path, latency):
    (tmp_path / "cmp").mkdir()
    (tmp_path / "cmp" / "results.json").write_text(json.dumps(_results(latency)))
    written = run_plot([str(tmp_path / "cmp")], out=str(tmp_path / "plots"))
    names = sorted(p.split("/")[-1] for p in written)
    assert names == sorted(["distribution.png", "agreement.png"] + (["pareto.png"] if latency else []))
    assert all((tmp_path / "plots" / n).stat().st_size > 5000 for n in names)


def test_yardstick_seeds_are_drawn_as_means_and_ranges(tmp_path):
    """With the yardstick retrained several times (run_protocol --yardstick-seeds), the figure
    adds each architecture's mean and range and the default's means; it differs from the figure
    without them."""
    r = _results(False)
    (tmp_path / "one").mkdir()
    (tmp_path / "one" / "results.json").write_text(json.dumps(r))
    for v in r["yardstick"].values():
        v["mAP_seeds"] = [v["mAP"], v["mAP"] + 0.01, v["mAP"] - 0.02]
    r["methods"]["argmax"]["per_seed"][0]["mAP_seeds"] = [0.1, 0.12, 0.08]
    (tmp_path / "three").mkdir()
    (tmp_path / "three" / "results.json").write_text(json.dumps(r))
    run_plot([str(tmp_path / "one")], out=str(tmp_path / "p1"))
    run_plot([str(tmp_path / "three")], out=str(tmp_path / "p3"))
    assert (tmp_path / "p1" / "distribution.png").read_bytes() != (tmp_path / "p3" / "distribution.png").read_bytes()
    assert (tmp_path / "p1" / "agreement.png").read_bytes() == (tmp_path / "p3" / "agreement.png").read_bytes()
    r["yardstick"]["osnet"]["mAP_seeds"] = ["0.07"]
    (tmp_path / "three" / "results.json").write_text(json.dumps(r))
    with pytest.raises(OsnasError, match=r"yardstick 'osnet': 'mAP_seeds' must be a list of numbers"):
        run_plot([str(tmp_path / "three")], out=str(tmp_path / "p3"))


def test_comparison_bad_results_name_the_file(tmp_path):
    (tmp_path / "cmp").mkdir()
    bad = _results(False)
    bad["methods"]["argmax"]["per_seed"][0]["mAP"] = "high"
    (tmp_path / "cmp" / "results.json").write_text(json.dumps(bad))
    with pytest.raises(OsnasError, match=r"results.json: method 'argmax'"):
        run_plot([str(tmp_path / "cmp")], out=str(tmp_path / "plots"))
    (tmp_path / "cmp" / "results.json").write_text(json.dumps({"yardstick": {}}))
    with pytest.raises(OsnasError, match="yardstick"):
        run_plot([str(tmp_path / "cmp")], out=str(tmp_path / "plots"))


def test_pareto_front_keeps_only_undominated_points():
    pts = [(1.0, 5.0), (2.0, 4.0), (2.0, 7.0), (3.0, 7.0), (4.0, 9.0), (0.5, 1.0)]
    # (2, 4) is beaten by (1, 5); (3, 7) ties (2, 7) on mAP at a higher latency
    assert [pts[i] for i in pareto_front(pts)] == [(0.5, 1.0), (1.0, 5.0), (2.0, 7.0), (4.0, 9.0)]


def test_every_protocol_method_gets_its_own_colour():
    """The agreement chart colours one bar per method: with as many methods as the protocol
    runs, no two share a colour."""
    import sys
    from pathlib import Path

    from osnas.plot.comparison import _color

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "experiments" / "synthetic"))
    from run_protocol import METHODS

    colours = [_color(i) for i in range(len(METHODS))]
    assert len(set(colours)) == len(METHODS)
