"""Bad input, systematically: a corpus of broken config files, genotype files, search-space
files, checkpoints and dataset trees. Each must give exit code 2 and exactly one line on
stderr (`osnas: error: ...`, no traceback) and leave existing outputs untouched.

Most cases go through the CLI in-process (`osnas.cli.main`: the same parsing, dispatch and
error formatting, without a new interpreter per case); one case per category also runs as a
real `python -m osnas` subprocess. Property-based tests cover the config parser. Cases
already in test_pipeline.py / test_search_core.py / test_data.py are not repeated.
"""

import argparse
import hashlib
import io
import os
import pickle
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from osnas.cli import main
from osnas.config import Config, _section_types, build_config, merge_dict, parse_override, save_config
from osnas.errors import OsnasError

TINY = ["model.arch=osnet_x0_25", "data.height=64", "data.width=32", "data.batch_size=8", "data.num_instances=2",
        "data.workers=0", "run.progress=false"]
ENV = {**os.environ, "OSNAS_SYNTH_PRESET": "tiny", "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}


# ----------------------------------------------------------------------------- helpers
def snapshot(folder: Path) -> dict:
    """{relative path: (sha256, size, mtime_ns)} of every file under folder ({} if missing)."""
    if not folder.exists():
        return {}
    return {str(p.relative_to(folder)): (hashlib.sha256(p.read_bytes()).hexdigest(), p.stat().st_size,
                                         p.stat().st_mtime_ns)
            for p in sorted(folder.rglob("*")) if p.is_file()}


def run_cli(args, capsys) -> tuple:
    capsys.readouterr()
    code = main([str(a) for a in args])
    err = capsys.readouterr().err
    return code, err


def assert_one_line_error(code, err, needle):
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert code == 2, err
    assert len(lines) == 1, err
    assert lines[0].startswith("osnas: error: ") and "Traceback" not in err
    if isinstance(needle, str):
        needle = [needle]
    for n in needle:
        assert n in lines[0], lines[0]


def _jpeg(seed=0, size=(32, 64)) -> bytes:
    arr = np.random.default_rng(seed).integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="JPEG")
    return buf.getvalue()


@pytest.fixture
def outputs(tmp_path):
    """An existing output folder (a previous run's artifacts) that no failing command may touch."""
    out = tmp_path / "existing"
    out.mkdir()
    for name, data in (("metrics.json", b'{"models": {}}\n'), ("results.md", b"# old\n"), ("log.txt", b"old log\n")):
        (out / name).write_bytes(data)
    return out


# ============================================================================ config files
CONFIGS = {
    "invalid_yaml.yaml": (b"search: {epochs: 3\n", "invalid YAML"),
    "tab_indent.yaml": (b"search:\n\tepochs: 3\n", "invalid YAML"),
    "binary.yaml": (b"\x80\x81\xfe\xff\x00", "not a text file"),
    "top_list.yaml": (b"- search\n- run\n", "expected a mapping of sections, got list"),
    "top_scalar.yaml": (b"42\n", "expected a mapping of sections, got int"),
    "unknown_section.yaml": (b"serach:\n  epochs: 3\n", "unknown config section 'serach'"),
    "unknown_key.yaml": (b"search:\n  epoch: 3\n", "unknown config key search.epoch"),
    "section_scalar.yaml": (b"search: 5\n", "section 'search' must be a mapping"),
    "int_as_text.yaml": (b"search:\n  epochs: three\n", ["search.epochs", "expected an integer"]),
    "int_as_float.yaml": (b"search:\n  epochs: 2.5\n", ["search.epochs", "expected an integer"]),
    "int_as_bool.yaml": (b"search:\n  epochs: true\n", ["search.epochs", "expected an integer"]),
    "int_as_null.yaml": (b"search:\n  epochs:\n", ["search.epochs", "expected an integer"]),
    "bool_as_text.yaml": (b"run:\n  progress: maybe\n", ["run.progress", "expected true/false"]),
    "bool_as_int.yaml": (b"data:\n  flip: 1\n", ["data.flip", "expected true/false"]),
    "float_as_text.yaml": (b"search:\n  lr: fast\n", ["search.lr", "expected a number"]),
    "float_as_list.yaml": (b"search:\n  lr: [0.1]\n", ["search.lr", "expected a number"]),
    "str_as_list.yaml": (b"search:\n  space: [a, b]\n", ["search.space", "expected a string"]),
    "str_as_int.yaml": (b"model:\n  arch: 25\n", ["model.arch", "expected a string"]),
    "list_as_number.yaml": (b"data:\n  mean: 0.5\n", ["data.mean", "expected a list"]),
    "list_as_mapping.yaml": (b"data:\n  sources: {a: 1}\n", ["data.sources", "expected a list"]),
}


@pytest.mark.parametrize("name", CONFIGS)
def test_bad_config_file_new_run(name, tmp_path, capsys):
    text, needle = CONFIGS[name]
    cfg = tmp_path / name
    cfg.write_bytes(text)
    out = tmp_path / "new_run"
    code, err = run_cli(["search", "--config", cfg, "--out", out], capsys)
    assert_one_line_error(code, err, needle)
    assert not out.exists()  # nothing created


@pytest.mark.parametrize("cmd", ["search", "retrain"])
def test_bad_config_file_on_resume_leaves_run_untouched(cmd, tmp_path, capsys):
    run = tmp_path / "run"
    run.mkdir()
    save_config(build_config(None, TINY), run)
    (run / "checkpoint.pth").write_bytes(b"an old checkpoint")
    (run / ("alphas.jsonl" if cmd == "search" else "train_log.jsonl")).write_text('{"step": 0}\n')
    (run / "genotype.yaml").write_text("plan: {stem: in}\n")
    before = snapshot(run)
    bad = tmp_path / "bad.yaml"
    bad.write_text("train:\n  epochs: many\n" if cmd == "retrain" else "search:\n  order: [first]\n")
    extra = ["--genotype", "osnet"] if cmd == "retrain" else []
    code, err = run_cli([cmd, *extra, "--config", bad, "--out", run, "--resume"], capsys)
    assert_one_line_error(code, err, "train.epochs" if cmd == "retrain" else "search.order")
    assert snapshot(run) == before


@pytest.mark.parametrize("override,needle", [
    ("search.epochs", "expected section.key=value"),
    ("epochs=3", "expected section.key=value"),
    ("a.b.c=1", "expected section.key=value"),
    (".epochs=1", "expected section.key=value"),
    ("search.epochs=[1, 2]", "expected an integer"),
    ("run.seed={a: 1}", "expected an integer"),
    ("search.order=second order", "search.order='second order': expected one of first, second, single"),
])
def test_bad_overrides(override, needle, tmp_path, capsys):
    code, err = run_cli(["search", "--set", override, "--out", tmp_path / "o"], capsys)
    assert_one_line_error(code, err, needle)
    assert not (tmp_path / "o").exists()


# ----------------------------------------------------------------------------- config parser properties
_SECTIONS = {f: _section_types(getattr(Config(), f)) for f in ("data", "model", "search", "train", "eval", "run")}
_FIELDS = [(sec, key) for sec, keys in _SECTIONS.items() for key in keys]
_ident = st.from_regex(r"[a-z_][a-z0-9_]{0,15}", fullmatch=True)
_text = st.text(st.characters(codec="utf-8", exclude_categories=("Cs", "Cc")), max_size=20)
_finite = st.floats(allow_nan=False, allow_infinity=False, width=64)


def _value_for(default):
    if isinstance(default, bool):
        return st.booleans()
    if isinstance(default, int):
        return st.integers(-(2 ** 62), 2 ** 62)
    if isinstance(default, float):
        return _finite
    if isinstance(default, str):
        return _text
    if isinstance(default, list):
        return st.lists(st.one_of(_finite, st.integers(-1000, 1000), _ident), max_size=5)
    raise AssertionError(type(default))


@st.composite
def well_typed(draw):
    sec, key = draw(st.sampled_from(_FIELDS))
    default = getattr(getattr(Config(), sec), key)
    return sec, key, draw(_value_for(default))


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(well_typed())
def test_config_well_typed_values_round_trip(tmp_path_factory, item):
    sec, key, value = item
    cfg = merge_dict(Config(), {sec: {key: value}})
    assert getattr(getattr(cfg, sec), key) == value
    # as a --set override (the value written as YAML, the way a user would type it)
    dumped = yaml.safe_dump(value, default_flow_style=True, width=10 ** 6).strip()
    if dumped.endswith("\n..."):
        dumped = dumped[:-4].strip()
    s, k, v = parse_override(f"{sec}.{key}={dumped}")
    assert (s, k) == (sec, key)
    assert getattr(getattr(build_config(None, [f"{sec}.{key}={dumped}"]), sec), key) == value
    # through config.yaml, as --resume reads a run's saved config
    folder = tmp_path_factory.mktemp("cfg")
    save_config(cfg, folder)
    again = build_config(None, None, base=yaml.safe_load((folder / "config.yaml").read_text()))
    assert again.to_dict() == cfg.to_dict()


@settings(max_examples=100, deadline=None)
@given(st.sampled_from(list(_SECTIONS)), _ident, st.one_of(st.integers(), _text, st.booleans()))
def test_config_unknown_key_is_named(sec, key, value):
    if key in _SECTIONS[sec]:
        return
    with pytest.raises(OsnasError) as e:
        merge_dict(Config(), {sec: {key: value}}, "test")
    assert f"unknown config key {sec}.{key}" in str(e.value) and "\n" not in str(e.value)
    with pytest.raises(OsnasError, match=f"unknown config key {sec}.{key}"):
        build_config(None, [f"{sec}.{key}=1"])


@settings(max_examples=60, deadline=None)
@given(_ident)
def test_config_unknown_section_is_named(sec):
    if sec in _SECTIONS:
        return
    with pytest.raises(OsnasError, match=f"unknown config section '{sec}'"):
        merge_dict(Config(), {sec: {"x": 1}})


def _wrong_for(default):
    """Values of a type the key must refuse."""
    nums = st.one_of(st.integers(), _finite)
    containers = st.one_of(st.lists(st.integers(), max_size=3), st.dictionaries(_ident, st.integers(), max_size=2))
    if isinstance(default, bool):
        return st.one_of(nums, _text, containers)
    if isinstance(default, int):
        return st.one_of(_finite.filter(lambda f: f != int(f)), st.booleans(), containers,
                         _text.filter(lambda t: not t.strip().lstrip("+-").isdigit()))
    if isinstance(default, float):
        return st.one_of(st.booleans(), containers, st.sampled_from(["fast", "nan", "inf", "1e", "", "0x10", "1,5"]))
    if isinstance(default, str):
        return st.one_of(nums, st.booleans(), containers)
    if isinstance(default, list):
        return st.one_of(nums, st.booleans(), st.dictionaries(_ident, st.integers(), max_size=2))
    raise AssertionError(type(default))


@st.composite
def wrongly_typed(draw):
    sec, key = draw(st.sampled_from(_FIELDS))
    default = getattr(getattr(Config(), sec), key)
    return sec, key, draw(_wrong_for(default))


@settings(max_examples=200, deadline=None)
@given(wrongly_typed())
def test_config_wrong_types_error_naming_the_key(item):
    sec, key, value = item
    with pytest.raises(OsnasError) as e:
        merge_dict(Config(), {sec: {key: value}}, "test")
    msg = str(e.value)
    assert f"config key {sec}.{key}: expected" in msg and "\n" not in msg


def test_config_float_keys_take_yaml11_exponents():
    """YAML 1.1 reads 1e-3 (no dot) as a string; a float key still takes it."""
    cfg = build_config(None, ["search.lr=1e-3", "train.lr=-2E+2"])
    assert cfg.search.lr == 0.001 and cfg.train.lr == -200.0


# ============================================================================ genotype files
GENOTYPES = {
    "invalid.yaml": ("plan: {stem: in\n", "invalid YAML"),
    "empty.yaml": ("", "not a genotype file"),
    "no_plan.yaml": ("name: x\narch: osnet_x0_25\n", "not a genotype file"),
    "plan_list.yaml": ("plan: [stem, in]\n", "not a genotype file"),
    "top_list.json": ('["plan"]', "not a genotype file"),
    "broken.json": ('{"plan": {"stem": "in"}', "invalid YAML"),
    "unknown_site.yaml": ("plan: {stemm: in}\n", "unknown normalisation site 'stemm'"),
    "unknown_op.yaml": ("plan: {stem: gn}\n", "site 'stem': unknown op 'gn'"),
    "op_number.yaml": ("plan: {stem: 5}\n", "malformed genotype"),
    "op_null.yaml": ("plan: {stem: null}\n", "malformed genotype"),
    "two_ops.yaml": ("plan: {stem: [bn, in]}\n", "must have exactly one op"),
    "repeated_op.yaml": ("plan: {stem: [in, in]}\n", "distinct ops"),
    "unknown_field.yaml": ("plan: {stem: in}\ncolour: red\n", "unknown genotype fields ['colour']"),
    "bad_arch.yaml": ("plan: {stem: in}\narch: osnet_x9_0\n", "unknown arch 'osnet_x9_0'"),
    "arch_list.yaml": ("plan: {stem: in}\narch: [osnet_x1_0]\n", "malformed genotype"),
    "binary.yaml": (b"\xff\xfe\x00plan", "not a text file"),
}


@pytest.mark.parametrize("name", GENOTYPES)
def test_bad_genotype_files(name, tmp_path, capsys):
    text, needle = GENOTYPES[name]
    g = tmp_path / name
    g.write_bytes(text if isinstance(text, bytes) else text.encode())
    out = tmp_path / "rt"
    code, err = run_cli(["retrain", "--genotype", g, "--out", out], capsys)
    assert_one_line_error(code, err, needle)
    assert not out.exists()


def test_genotype_folder_and_info(tmp_path, capsys):
    (tmp_path / "g.yaml").mkdir()
    code, err = run_cli(["retrain", "--genotype", tmp_path / "g.yaml", "--out", tmp_path / "o"], capsys)
    assert_one_line_error(code, err, "g.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("plan: {conv9.0.end: in}\n")
    code, err = run_cli(["info", bad], capsys)
    assert_one_line_error(code, err, "unknown normalisation site")


# ============================================================================ search-space files
SPACES = {  # beyond test_search_core.test_malformed_spaces (which calls load_space directly)
    "empty.yaml": ("", "space"),
    "top_list.yaml": ("- {site: stem, candidates: [bn, in]}\n", "space"),
    "no_positions.yaml": ("name: x\n", "positions"),
    "positions_scalar.yaml": ("name: x\npositions: 3\n", "positions"),
    "candidates_number.yaml": ("name: x\npositions: [{site: stem, candidates: 2}]\n", "candidates"),
    "binary.yaml": (b"\x00\x01\xff", "space"),
    "bad_relaxation.yaml": ("name: x\nrelaxation: magic\npositions: [{site: stem, candidates: [bn, in]}]\n",
                            "magic"),
}


@pytest.mark.parametrize("name", SPACES)
def test_bad_space_files(name, tmp_path, capsys):
    text, needle = SPACES[name]
    sp = tmp_path / name
    sp.write_bytes(text if isinstance(text, bytes) else text.encode())
    out = tmp_path / "s"
    code, err = run_cli(["search", "--space", sp, "--out", out], capsys)
    assert_one_line_error(code, err, needle)
    assert not out.exists()


# ============================================================================ checkpoints
def _retrain_ck(arch="osnet_x0_25"):
    from osnas.models.genotype import load_genotype
    from osnas.models import build_model

    g = load_genotype("osnet_ain")
    torch.manual_seed(0)
    m = build_model(g, num_classes=3, arch=arch)
    return {"model": m.state_dict(), "genotype": g.to_dict(), "arch": arch, "head": "reference", "feature_dim": 512,
            "last_stride": 2, "num_classes": 3, "optimizer": {}, "epoch": 1, "step_in_epoch": 0}


class _Evil:
    def __reduce__(self):  # would run os.getpid on a plain pickle.load; weights_only must refuse it
        return (os.getpid, ())


def _save(obj) -> bytes:
    buf = io.BytesIO()
    torch.save(obj, buf)
    return buf.getvalue()


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    """name -> path of a broken checkpoint."""
    d = tmp_path_factory.mktemp("ck")
    good = _save(_retrain_ck())
    wrong_arch = _retrain_ck("osnet_x0_25")
    wrong_arch["arch"] = "osnet_x0_5"  # weights of one width, description of another
    missing = _retrain_ck()
    del missing["head"]
    not_sd = _retrain_ck()
    not_sd["model"] = torch.ones(3)
    files = {
        "truncated.pth": good[: len(good) // 2],
        "empty.pth": b"",
        "garbage.pth": os.urandom(4096),
        "text.pth": b"this is not a checkpoint\n",
        "tensor.pth": _save(torch.ones(3)),
        "list.pth": _save([1, 2, 3]),
        "namespace.pth": _save({"model": argparse.Namespace(a=1)}),
        "evil_pickle.pth": pickle.dumps({"model": _Evil()}),
        "wrong_arch.pth": _save(wrong_arch),
        "missing_head.pth": _save(missing),
        "model_not_dict.pth": _save(not_sd),
    }
    for name, data in files.items():
        (d / name).write_bytes(data)
    (d / "folder.pth").mkdir()
    return d


CK_NEEDLES = {
    "truncated.pth": "not a readable retrain checkpoint (truncated or corrupt",
    "empty.pth": "not a readable retrain checkpoint",
    "garbage.pth": "retrain checkpoint",
    "text.pth": "retrain checkpoint",
    "tensor.pth": "expected a retrain checkpoint holding a dict, got Tensor",
    "list.pth": "expected a retrain checkpoint holding a dict, got list",
    "namespace.pth": "weights_only loading does not allow (Unsupported global: GLOBAL argparse.Namespace",
    "evil_pickle.pth": "weights_only loading does not allow",
    "wrong_arch.pth": "weights do not fit the described architecture",
    "missing_head.pth": "not a retrain checkpoint (missing head)",
    "model_not_dict.pth": "'model' is a Tensor, expected a state dict",
}


@pytest.mark.parametrize("name", CK_NEEDLES)
def test_bad_checkpoints_eval(name, checkpoints, outputs, capsys):
    before = snapshot(outputs)
    pid_before = os.getpid()
    code, err = run_cli(["eval-crossdomain", "--checkpoint", checkpoints / name, "--targets", "synth3",
                         "--out", outputs], capsys)
    assert_one_line_error(code, err, [str(checkpoints / name), CK_NEEDLES[name]])
    assert snapshot(outputs) == before and os.getpid() == pid_before


@pytest.mark.parametrize("name", ["truncated.pth", "namespace.pth", "evil_pickle.pth", "tensor.pth"])
def test_bad_checkpoints_derive(name, checkpoints, tmp_path, capsys):
    run = tmp_path / "run"
    run.mkdir()
    (run / "space.yaml").write_text("name: x\npositions: [{site: stem, candidates: [bn, in]}]\n")
    before = snapshot(run)
    code, err = run_cli(["derive", "--run", run, "--checkpoint", checkpoints / name], capsys)
    assert_one_line_error(code, err, [str(checkpoints / name), "search checkpoint"])
    assert snapshot(run) == before


def _search_run(folder: Path, checkpoint: bytes) -> Path:
    folder.mkdir()
    save_config(build_config(None, TINY), folder)
    (folder / "checkpoint.pth").write_bytes(checkpoint)
    (folder / "alphas.jsonl").write_text('{"step": 0}\n{"step": 1}\n')
    (folder / "log.txt").write_text("old\n")
    return folder


def _search_ck(**changes):
    from osnas.models.space import load_space

    ck = {"model": {}, "w_opt": {}, "a_opt": {}, "streams": {}, "rng": {}, "epoch": 1, "step_in_epoch": 0,
          "global_step": 2, "space_sha256": load_space(build_config().search.space).sha256, "arch": "osnet_x0_25",
          "shared": True}
    ck.update(changes)
    return {k: v for k, v in ck.items() if v is not None}


@pytest.mark.parametrize("case,needle", [
    ("truncated", "not a readable search checkpoint"),
    ("namespace", "weights_only loading does not allow"),
    ("retrain_ck", "not a search checkpoint to resume (missing w_opt, a_opt, streams, rng, global_step)"),
    ("other_space", "space_sha256 is 'feed"),
    ("other_arch", "arch is 'osnet_x1_0' in the checkpoint, 'osnet_x0_25' now"),
    ("other_mode", "shared is False in the checkpoint, True now"),
])
def test_bad_checkpoints_search_resume(case, needle, checkpoints, tmp_path, capsys):
    data = {"truncated": (checkpoints / "truncated.pth").read_bytes(),
            "namespace": (checkpoints / "namespace.pth").read_bytes(),
            "retrain_ck": _save(_retrain_ck()),
            "other_space": _save(_search_ck(space_sha256="feed" * 16)),
            "other_arch": _save(_search_ck(arch="osnet_x1_0")),
            "other_mode": _save(_search_ck(shared=False))}[case]
    run = _search_run(tmp_path / "run", data)
    before = snapshot(run)
    code, err = run_cli(["search", "--out", run, "--resume", "--data-root", tmp_path / "no_data"], capsys)
    assert_one_line_error(code, err, needle)
    assert snapshot(run) == before  # history not truncated, log not appended


@pytest.mark.parametrize("case,needle", [
    ("truncated", "not a readable retrain checkpoint"),
    ("search_ck", "not a retrain checkpoint to resume (missing optimizer)"),
    ("evil", "weights_only loading does not allow"),
])
def test_bad_checkpoints_retrain_resume(case, needle, checkpoints, tmp_path, capsys):
    data = {"truncated": (checkpoints / "truncated.pth").read_bytes(),
            "search_ck": _save({**_search_ck(), "rng": {"x": 1}}),
            "evil": (checkpoints / "evil_pickle.pth").read_bytes()}[case]
    run = tmp_path / "run"
    run.mkdir()
    save_config(build_config(None, TINY), run)
    (run / "genotype.yaml").write_text("plan: {stem: in}\n")
    (run / "checkpoint.pth").write_bytes(data)
    (run / "train_log.jsonl").write_text('{"epoch": 0}\n')
    before = snapshot(run)
    code, err = run_cli(["retrain", "--genotype", "osnet", "--out", run, "--resume",
                         "--data-root", tmp_path / "no_data"], capsys)
    assert_one_line_error(code, err, needle)
    assert snapshot(run) == before


# ============================================================================ dataset trees
def _market(base: Path, n_ids=4, per_id=3):
    for split in ("bounding_box_train", "query", "bounding_box_test"):
        (base / split).mkdir(parents=True, exist_ok=True)
        for pid in range(1, n_ids + 1):
            for j in range(per_id):
                (base / split / f"{pid:04d}_c{j % 3 + 1}s1_{j:06d}_00.jpg").write_bytes(_jpeg(pid * 10 + j))
    return base


TREES = {
    "no_train_split": (lambda r: __import__("shutil").rmtree(_market(r / "market1501") / "bounding_box_train"),
                       "bounding_box_train"),
    "empty_query": (lambda r: [p.unlink() for p in (_market(r / "market1501") / "query").iterdir()], "query"),
    "unparsable_name": (lambda r: (_market(r / "market1501") / "query" / "img_001.jpg").write_bytes(_jpeg()),
                        "img_001.jpg"),
    "split_is_file": (lambda r: (__import__("shutil").rmtree(_market(r / "market1501") / "query"),
                                 (r / "market1501" / "query").write_text("x")), "query"),
    "dataset_is_file": (lambda r: (r / "market1501").write_text("x"), "market1501"),
}


@pytest.mark.parametrize("name", TREES)
def test_broken_dataset_trees(name, tmp_path, capsys):
    make, needle = TREES[name]
    r = tmp_path / "data"
    r.mkdir()
    make(r)
    code, err = run_cli(["data", "info", "market1501", "--data-root", r], capsys)
    assert_one_line_error(code, err, needle)


@pytest.mark.parametrize("runs", [pytest.param(["search.runs=1"], id="one-supernet"),
                                  pytest.param([], id="default-runs")])
def test_data_root_is_a_file(tmp_path, capsys, runs):
    f = tmp_path / "data"
    f.write_text("x")
    args = ["search", "--sources", "market1501,duke", "--out", tmp_path / "o"] + \
        [x for s in TINY + runs for x in ("--set", s)]
    code, err = run_cli(args + ["--data-root", f], capsys)
    assert_one_line_error(code, err, str(f))
    # the folder of a search that never started is no run to resume: the corrected command is not refused
    code, err = run_cli(args + ["--data-root", tmp_path / "elsewhere"], capsys)
    assert "already holds a search run" not in err


# ============================================================================ one real subprocess per category
def _subprocess(args, cwd):
    return subprocess.run([sys.executable, "-m", "osnas", *map(str, args)], env=ENV, capture_output=True, text=True,
                          timeout=300, cwd=cwd)


@pytest.mark.parametrize("category", ["config", "genotype", "space", "checkpoint", "dataset"])
def test_cli_subprocess_one_per_category(category, checkpoints, outputs, tmp_path):
    if category == "config":
        bad = tmp_path / "c.yaml"
        bad.write_text("search:\n  epochs: three\n")
        args, needle = ["search", "--config", bad, "--out", outputs], "search.epochs"
    elif category == "genotype":
        bad = tmp_path / "g.yaml"
        bad.write_text("plan: {stem: gn}\n")
        args, needle = ["retrain", "--genotype", bad, "--out", outputs], "unknown op 'gn'"
    elif category == "space":
        bad = tmp_path / "s.yaml"
        bad.write_text("name: x\npositions: [{site: stem, candidates: [bn, in]}\n")
        args, needle = ["search", "--space", bad, "--out", outputs], "invalid YAML"
    elif category == "checkpoint":
        args = ["eval-crossdomain", "--checkpoint", checkpoints / "evil_pickle.pth", "--targets", "synth3",
                "--out", outputs]
        needle = "weights_only loading does not allow"
    else:  # a corrupt training image, found by a DataLoader worker in the middle of a retrain
        root = tmp_path / "data"
        base = _market(root / "market1501", n_ids=4, per_id=3)
        victim = sorted((base / "bounding_box_train").iterdir())[0]
        victim.write_bytes(_jpeg()[:100])
        args = ["retrain", "--genotype", "osnet", "--sources", "market1501", "--data-root", root, "--out",
                tmp_path / "rt"] + [x for s in TINY[:-2] + ["data.workers=2", "data.sampler=pk", "train.epochs=1",
                                                            "train.steps_per_epoch=3"] for x in ("--set", s)]
        needle = [victim.name, "cannot decode image"]
    before = snapshot(outputs)
    r = _subprocess(args, tmp_path)
    assert_one_line_error(r.returncode, r.stderr if category != "dataset" else _drop_log_lines(r.stderr), needle)
    assert snapshot(outputs) == before
    if category == "dataset":  # the run folder keeps its start files, no checkpoint appears
        assert not (tmp_path / "rt" / "checkpoint.pth").exists()


def _drop_log_lines(err: str) -> str:
    """A retrain logs its start ("HH:MM:SS retrain ...") before the bad image is met."""
    import re

    return "\n".join(ln for ln in err.splitlines() if not re.match(r"^\d\d:\d\d:\d\d ", ln))
