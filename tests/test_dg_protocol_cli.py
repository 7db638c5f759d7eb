"""The DG protocol folder (experiments/dg_protocol) end to end through the CLI, on generated
stand-ins of every dataset: retrain on the five sources with all their images, then
eval-crossdomain on every split of VIPeR, PRID, GRID and iLIDS (mean ± std per target)."""

import json
from pathlib import Path

import numpy as np

import _dg_trees as T
from conftest import TINY
from osnas.cli import main

PROTOCOL = Path(__file__).resolve().parents[1] / "experiments" / "dg_protocol" / "config.yaml"


def _sets(overrides):
    return [x for s in overrides for x in ("--set", s)]


def test_dg_protocol_runs_end_to_end(data_root, tmp_path, capsys):
    T.make_all(data_root)
    run = tmp_path / "ain"
    tiny = [o for o in TINY if not o.startswith("data.batch_size")] + [
        "data.batch_size=10", "train.epochs=1", "train.steps_per_epoch=2", "train.fixbase_epochs=0"]
    rc = main(["retrain", "--genotype", "osnet_ain", "--sources", "market,duke,cuhk02,cuhk03,cuhksysu",
               "--data-root", str(data_root), "--config", str(PROTOCOL), "--out", str(run)] + _sets(tiny))
    assert rc == 0, capsys.readouterr().err
    rc = main(["eval-crossdomain", "--checkpoint", str(run / "checkpoint.pth"), "--targets", "viper,prid,grid,ilids",
               "--data-root", str(data_root), "--out", str(tmp_path / "eval")])
    assert rc == 0, capsys.readouterr().err
    m = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    targets = m["models"]["osnet_ain"]["targets"]
    for t, n in {"viper": 20, "prid": 10, "grid": 10, "ilids": 10}.items():
        r = targets[t]
        assert r["num_splits"] == n and [s["split"] for s in r["splits"]] == list(range(n))
        for key in ("rank1", "mAP", "mINP"):  # the headline is the mean over splits, with its std
            vals = [s[key] for s in r["splits"]]
            assert abs(r[key] - np.mean(vals)) < 1e-9 and abs(r["std"][key] - np.std(vals)) < 1e-9
            assert 0.0 <= r[key] <= 1.0
    assert " ± " in (tmp_path / "eval" / "results.md").read_text()


def test_eval_split_picks_one_split(data_root, tmp_path, capsys):
    """--set eval.split=K evaluates split K alone (and single-split targets as usual)."""
    T.make_all(data_root)
    run = tmp_path / "r"
    tiny = [o for o in TINY if not o.startswith("data.batch_size")] + ["data.batch_size=6", "train.epochs=1",
                                                                        "train.steps_per_epoch=1"]
    assert main(["retrain", "--genotype", "osnet", "--sources", "market", "--data-root", str(data_root),
                 "--out", str(run)] + _sets(tiny)) == 0, capsys.readouterr().err
    assert main(["eval-crossdomain", "--checkpoint", str(run / "checkpoint.pth"), "--targets", "viper,market",
                 "--data-root", str(data_root), "--out", str(tmp_path / "e"), "--set", "eval.split=3"]) == 0
    targets = json.loads((tmp_path / "e" / "metrics.json").read_text())["models"]["osnet"]["targets"]
    assert targets["viper"]["split"] == 3 and "splits" not in targets["viper"]
    assert "splits" not in targets["market1501"]
    # a training-only target is refused in one line
    assert main(["eval-crossdomain", "--checkpoint", str(run / "checkpoint.pth"), "--targets", "cuhksysu",
                 "--data-root", str(data_root), "--out", str(tmp_path / "e2")]) == 2
    assert "training-only" in capsys.readouterr().err
