"""The evidence in experiments/ stays followable and regenerable.

- every study with a results.py and committed JSON regenerates its RESULTS.md byte for byte
  (found generically: experiments/*/results.py and experiments/*/*/results.py, each run with
  `--out TMP/RESULTS.md` and compared with the committed file);
- every configuration file loads with osnas.config.build_config (which refuses unknown keys),
  and one with search settings passes the search's own check of them;
- the index (experiments/README.md) reaches every study folder, every figure is named by a
  README or RESULTS file in its own folder, and the links of the evidence resolve;
- no path outside the repository in the evidence this suite owns; no function over 100 lines and
  no import circle between the experiment scripts.
"""

from __future__ import annotations

import ast
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
EXP = ROOT / "experiments"
STUDIES = sorted({p.parent for p in [*EXP.glob("*/results.py"), *EXP.glob("*/*/results.py")]})
CONFIGS = sorted(EXP.rglob("*.yaml"))
# the folders whose committed evidence this suite checks for outside paths
OWNED = [EXP / "synthetic", *(EXP / d for d in ("market_to_duke", "duke_to_market", "msmt_to_market_duke",
                                                 "multisource_loo", "search_osnas", "search_reference",
                                                 "dg_protocol", "two_sources", "preregistered"))]


def _rel(p: Path) -> str:
    return str(p.relative_to(EXP))


@pytest.mark.parametrize("study", STUDIES, ids=_rel)
def test_a_study_regenerates_its_results_byte_for_byte(study, tmp_path):
    data = sorted(study.glob("*.json"))
    if not data:
        pytest.skip(f"{_rel(study)}: no results.json yet (the study has not been run): nothing to regenerate")
    committed = study / "RESULTS.md"
    assert committed.is_file(), f"{_rel(study)} has {data[0].name} but no RESULTS.md: run its results.py"
    out = tmp_path / "RESULTS.md"
    r = subprocess.run([sys.executable, str(study / "results.py"), "--out", str(out)], capture_output=True,
                       text=True, timeout=300, cwd=ROOT)
    assert r.returncode == 0, r.stderr[-2000:]
    assert out.read_bytes() == committed.read_bytes(), f"{_rel(study)}/RESULTS.md differs from its regeneration"


def test_studies_are_found_including_the_synthetic_ones():
    assert EXP / "synthetic" / "defaults" in STUDIES


@pytest.mark.parametrize("path", CONFIGS, ids=_rel)
def test_every_config_loads_with_known_keys_only(path):
    from osnas.config import build_config

    from osnas.search.bilevel import validate_search_config
    from osnas.utils import load_yaml

    cfg = build_config(str(path))  # raises on an unknown key or a wrong type
    if "search" in (load_yaml(path) or {}):  # a search configuration: its settings must go together
        validate_search_config(cfg)


def test_an_unknown_key_breaks_a_config(tmp_path):
    """What the test above relies on: build_config refuses a key it does not know."""
    from osnas.config import build_config
    from osnas.errors import OsnasError

    bad = tmp_path / "bad.yaml"
    bad.write_text("search:\n  weigth_step: sampled\n")
    with pytest.raises(OsnasError, match="weigth_step"):
        build_config(str(bad))


def _study_folders() -> list:
    """Every folder of experiments/ with a README.md (one a study or a protocol), but the index's own."""
    return sorted(p.parent for p in EXP.rglob("README.md") if p.parent != EXP)


def test_the_index_links_every_study_folder():
    index = (EXP / "README.md").read_text()
    links = set(re.findall(r"\]\(([^)#]+)", index))
    targets = {(EXP / link).resolve() for link in links}
    missing = [_rel(f) for f in _study_folders() if not any(t == f or t.parent == f for t in targets)]
    assert not missing, f"experiments/README.md does not link {missing}"


def test_every_figure_is_named_next_to_it():
    """A reader reaches a figure from its folder's README or RESULTS file (and from there its command and data)."""
    for png in EXP.rglob("*.png"):
        text = "".join(p.read_text() for p in png.parent.glob("*.md"))
        assert png.name in text, f"{_rel(png)} is not named by a .md file of its folder"


def test_no_path_outside_the_repository_in_the_evidence():
    outside = re.compile(r"(?<![\w./-])/(tmp|home|root|work|mnt|Users|var|scratch)/")
    found = [f"{_rel(p)}:{i}" for d in OWNED for p in [*d.rglob("*.md"), *d.rglob("*.json"), *d.rglob("*.yaml")]
             for i, line in enumerate(p.read_text().splitlines(), 1) if outside.search(line)]
    found += [f"README.md:{i}" for i, line in enumerate((EXP / "README.md").read_text().splitlines(), 1)
              if outside.search(line)]
    assert not found, f"paths outside the repository in {found}"


def test_the_links_of_the_evidence_resolve():
    """Every relative link of the index and of the folders this suite owns names a file that is there."""
    broken = []
    for md in [EXP / "README.md", *(p for d in OWNED for p in d.rglob("*.md"))]:
        for link in re.findall(r"\]\(([^)#\s]+)", md.read_text()):
            if "://" not in link and not (md.parent / link).exists():
                broken.append(f"{_rel(md)}: {link}")
    assert not broken, broken


def _scripts() -> list:
    return sorted(EXP.rglob("*.py"))


def test_no_function_over_100_lines():
    long = []
    for p in _scripts():
        for n in ast.walk(ast.parse(p.read_text())):
            if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef)) and n.end_lineno - n.lineno + 1 > 100:
                long.append(f"{_rel(p)}:{n.lineno} {n.name} ({n.end_lineno - n.lineno + 1} lines)")
    assert not long, long


def _imports(p: Path) -> set:
    """The sibling scripts and expkit modules a script imports."""
    names = set()
    for n in ast.walk(ast.parse(p.read_text())):
        if isinstance(n, ast.Import):
            names |= {a.name for a in n.names}
        elif isinstance(n, ast.ImportFrom) and n.module:
            names |= {n.module} | {f"{n.module}.{a.name}" for a in n.names}
    out = set()
    for name in names:
        for cand in (p.parent / f"{name}.py", EXP / (name.replace(".", "/") + ".py")):
            if cand.is_file() and cand != p:
                out.add(cand)
    return out


def test_no_import_circle_between_the_experiment_scripts():
    graph = {p: _imports(p) for p in _scripts()}

    def reach(start, seen):
        for q in graph.get(start, ()):
            if q not in seen:
                seen.add(q)
                reach(q, seen)
        return seen

    circles = [_rel(p) for p in graph if p in reach(p, set())]
    assert not circles, f"import circles through {circles}"
