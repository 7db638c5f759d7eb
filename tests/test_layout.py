"""The package layout: each stage is found by its verb, layers import only downward, no cycle,
and the built-in search spaces ship inside the package (the checkout's search_spaces/ is them)."""

import ast
from pathlib import Path

import osnas

PKG = Path(osnas.__file__).resolve().parent
REPO = PKG.parent

# bottom to top; a module may import its own layer's modules or lower ones, never higher
LAYERS = [
    {"errors"},
    {"utils"},
    {"rundir", "config"},
    {"data"},
    {"models"},
    {"losses", "metrics", "rerank", "distributed"},
    {"training"},
    {"session"},
    {"search", "derive", "retrain", "evaluate", "plot", "profile", "analyze"},
    {"demo"},
    {"cli", "__main__", "__init__"},
]
LAYER = {name: i for i, names in enumerate(LAYERS) for name in names}
STAGES = {"search": "run_search", "derive": "run_derive", "retrain": "run_retrain", "evaluate": "run_eval_crossdomain",
          "plot": "run_plot", "profile": "run_profile", "analyze": "run_analyze"}


def _modules():
    for path in sorted(PKG.rglob("*.py")):
        yield ".".join(("osnas",) + path.relative_to(PKG).with_suffix("").parts).removesuffix(".__init__"), path


def _imports(path: Path):
    """Every osnas module a file imports, at any depth (function-level imports included)."""
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("osnas"):
            if node.module != "osnas":  # `from osnas import distributed` imports that module alone
                yield node.module
            for a in node.names:  # `from osnas.models import relax` imports a module too
                yield f"{node.module}.{a.name}"
        elif isinstance(node, ast.Import):
            yield from (a.name for a in node.names if a.name.startswith("osnas"))


def _top(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def test_every_module_has_a_layer():
    assert {_top(m) for m, _ in _modules()} <= set(LAYER)


def test_layers_import_only_downward():
    bad = []
    for mod, path in _modules():
        for imp in _imports(path):
            src, dst = _top(mod), _top(imp)
            if dst in LAYER and LAYER[dst] > LAYER[src]:
                bad.append(f"{mod} -> {imp}")
    assert not bad, bad


def test_no_import_cycle_between_files():
    known = {m for m, _ in _modules()}
    graph = {m: {i for i in _imports(p) if i in known and i != m} for m, p in _modules()}
    # a package's __init__ re-exporting its own modules is not a cycle of the layout
    graph = {m: {i for i in deps if not (m == i.rsplit(".", 1)[0])} for m, deps in graph.items()}
    state, cycle = {}, []

    def visit(m, stack):
        state[m] = 1
        for n in sorted(graph[m]):
            if state.get(n) == 1:
                cycle.append(stack[stack.index(n):] + [n])
            elif n not in state:
                visit(n, stack + [n])
        state[m] = 2

    for m in sorted(graph):
        if m not in state:
            visit(m, [m])
    assert not cycle, cycle[0]


def test_each_stage_is_found_by_its_verb():
    import importlib

    for stage, entry in STAGES.items():
        assert callable(getattr(importlib.import_module(f"osnas.{stage}"), entry))
    cli = (PKG / "cli.py").read_text()
    for stage, entry in STAGES.items():
        assert f"from osnas.{stage} import {entry}" in cli


def test_builtin_spaces_ship_inside_the_package():
    from osnas.models.space import SPACES_DIR, list_spaces

    assert SPACES_DIR.resolve() == (PKG / "search_spaces").resolve()
    assert {"osnet_ain_blocks", "norm_sites"} <= set(list_spaces())
    # the project's top-level search_spaces/ is the packaged folder itself, so they never differ
    top = REPO / "search_spaces"
    if top.exists():  # (a checkout; an installed package has no such folder)
        assert sorted(p.name for p in top.glob("*.yaml")) == sorted(p.name for p in SPACES_DIR.glob("*.yaml"))
        for p in top.glob("*.yaml"):
            assert p.read_bytes() == (SPACES_DIR / p.name).read_bytes()
    setup = (REPO / "setup.cfg").read_text() if (REPO / "setup.cfg").exists() else ""
    assert "search_spaces/*.yaml" in setup or not setup
