"""The README's commands, run as written at tiny size, so the README cannot drift from the code.

Fenced ```bash blocks are run in order in one folder that holds three tiny custom sources
(data/cam_a, data/cam_b, data/cam_c) and the tiny built-in domains; each command gets only the
size overrides every test uses (width x0.25, 64x32 images, a few steps). Fenced ```sh blocks need
datasets, weights or GPUs this machine lacks: their osnas commands are parsed by the CLI's own
parser, so a renamed flag still fails here.
"""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import numpy as np
import pytest

from conftest import ENV, TINY

ROOT = Path(__file__).resolve().parents[1]
SIZE = {
    "search": TINY + ["search.epochs=1", "search.steps_per_epoch=2", "search.warmup_epochs=0"],
    "analyze": TINY + ["analyze.epochs=1", "analyze.steps_per_epoch=2", "analyze.batches=2"],
    "retrain": TINY + ["train.epochs=1", "train.steps_per_epoch=2"],
}


def fenced(lang: str) -> list:
    """The commands of the README's fenced blocks of `lang`: continuation lines joined, comments
    and blank lines dropped, each as (block index, command)."""
    text = (ROOT / "README.md").read_text()
    out = []
    for i, block in enumerate(re.findall(rf"```{lang}\n(.*?)```", text, flags=re.S)):
        for cmd in block.replace("\\\n", " ").splitlines():
            cmd = cmd.split(" #")[0].strip()
            if cmd and not cmd.startswith("#"):
                out.append((i, cmd))
    return out


def tiny(cmd: str) -> list:
    """The command's arguments (after `osnas`) with the tiny-size overrides of its stage."""
    argv = shlex.split(cmd)
    assert argv[0] == "osnas", f"a README command that is not osnas: {cmd}"
    stage = argv[1]
    extra = [a for s in SIZE.get(stage, []) for a in ("--set", s)]
    if stage == "derive":
        extra += ["--batches", "1"]
    if stage == "export":
        extra += ["--height", "64", "--width", "32", "--check-batches", "1,2"]
    return [*argv[1:], *extra]


def _sources(folder: Path) -> None:
    """Three tiny Market-style sources with different colour casts: 14 people x 4 images each."""
    from _reid_gen import random_ids, write_market

    rng = np.random.default_rng(0)
    for k, name in enumerate(("cam_a", "cam_b", "cam_c")):
        ids = [(pid, cam, np.clip(img * (0.7 + 0.3 * k), 0, 255))
               for pid, cam, img in random_ids(rng, 14, 4, 64, 32)]
        q = [i for i, x in enumerate(ids) if x[1] == 1][::2]  # one camera-1 image of each person is a query
        write_market(folder / name, ids, query=[ids[i] for i in q],
                     gallery=[x for i, x in enumerate(ids) if i not in q])


def test_the_readme_runs_as_written(tmp_path, monkeypatch, capsys):
    """Each command through the CLI's own entry point (osnas.cli.main), in process: the same
    code path as the installed `osnas` script, without a Python start per command."""
    from osnas.cli import main

    cmds = fenced("bash")
    assert any(c.startswith("osnas search") for _, c in cmds) and any(c.startswith("osnas derive") for _, c in cmds)
    _sources(tmp_path / "data")
    monkeypatch.chdir(tmp_path)
    for k, v in ENV.items():
        if k.startswith("OSNAS_"):
            monkeypatch.setenv(k, v)
    for _, cmd in cmds:
        rc = main(tiny(cmd))
        assert rc == 0, f"README command failed: {cmd}\n{capsys.readouterr().err[-3000:]}"
    # what the README says the recipe leaves behind
    assert (tmp_path / "runs/search/supernet3/final_alphas.json").is_file()
    from osnas.models.genotype import load_genotype

    g = load_genotype(tmp_path / "runs/search/genotype.yaml")
    assert g.select == "vote" and g.decision.get("verdict") in ("searched", "published")
    assert (tmp_path / "runs/search/plots/answer.png").is_file()
    assert (tmp_path / "runs/analyze/site_gap.png").is_file()


def test_the_readme_commands_that_need_data_parse():
    from osnas.cli import build_parser

    cmds = fenced("sh")
    assert any(c.startswith("osnas search") and "--pretrained" in c for _, c in cmds)
    parser = build_parser()
    for _, cmd in cmds:
        argv = shlex.split(cmd)
        if argv[0] != "osnas":
            continue
        try:
            parser.parse_args(argv[1:])
        except SystemExit:
            pytest.fail(f"README command does not parse: {cmd}")


def test_the_readme_stays_a_guide():
    """At most about 250 lines, no research tables (a table row of a results narrative ran to
    2,274 characters before)."""
    lines = (ROOT / "README.md").read_text().splitlines()
    assert len(lines) <= 250
    assert max(len(ln) for ln in lines) <= 200
