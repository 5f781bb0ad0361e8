"""The code's layers (docs/architecture.md) hold: no import circle, no import upwards.

Every import counts, the ones inside functions too (the commands import Ray and JAX
lazily, so a circle hidden in a function would still be one).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("tuner", "nfnet", "search_spaces")
COMMANDS = ("sweep", "lr_search", "promote", "report", "lr_audit", "ledger", "cluster_config")

# Lowest first; a module may import its own layer and the ones below it.
LAYERS = (
    ("errors", ("tuner.errors",)),
    ("trainer and presets", ("nfnet", "search_spaces")),
    ("records", ("tuner.records",)),
    ("study, placement, cluster files", ("tuner.study", "tuner.placement", "tuner.clusterfiles")),
    ("Ray side", ("tuner.raytune",)),
    ("jobs and rendering", ("tuner.jobs", "tuner.rendering")),
    ("commands", ("tuner.cli", *(f"tuner.{c}" for c in COMMANDS))),
)


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def modules() -> dict[str, Path]:
    return {module_name(p): p for pkg in PACKAGES for p in (ROOT / pkg).rglob("*.py")}


def imports_of(path: Path, known: set[str]) -> set[str]:
    """The project modules `path` imports, anywhere in the file."""
    found = set()
    package = module_name(path) if path.name == "__init__.py" else module_name(path).rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                up = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                base = ".".join([*up, base]) if base else ".".join(up)
            # `from pkg import module` imports pkg.module when that is a module.
            names = [f"{base}.{a.name}" if f"{base}.{a.name}" in known else base for a in node.names]
        else:
            continue
        for name in names:
            while name and name not in known:
                name = name.rpartition(".")[0]
            if name:
                found.add(name)
    return found


def graph() -> dict[str, set[str]]:
    mods = modules()
    known = set(mods)
    return {m: imports_of(p, known) - {m} for m, p in mods.items()}


def layer_of(module: str) -> int:
    for index, (_, prefixes) in enumerate(LAYERS):
        if any(module == p or module.startswith(p + ".") for p in prefixes):
            return index
    raise AssertionError(f"{module} is in no layer of tests/test_architecture.py; add it (and to docs/architecture.md)")


def test_every_module_has_a_layer():
    for module in modules():
        if module not in PACKAGES:
            layer_of(module)


def test_no_import_goes_up_a_layer():
    upward = []
    for module, deps in graph().items():
        if module in PACKAGES:
            continue
        for dep in deps:
            if dep in PACKAGES:
                continue
            if layer_of(dep) > layer_of(module):
                upward.append(f"{module} ({LAYERS[layer_of(module)][0]}) imports {dep} ({LAYERS[layer_of(dep)][0]})")
    assert not upward, "\n".join(sorted(upward))


def find_cycle(g: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for dep in sorted(g.get(node, ())):
            if state.get(dep) == 1:
                return stack[stack.index(dep):] + [dep]
            if dep not in state:
                found = visit(dep)
                if found:
                    return found
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(g):
        if node not in state:
            found = visit(node)
            if found:
                return found
    return None


def test_no_import_circle():
    cycle = find_cycle(graph())
    assert cycle is None, "import circle: " + " -> ".join(cycle)


def test_find_cycle_sees_a_circle():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


@pytest.mark.parametrize("command", COMMANDS)
def test_commands_stay_where_users_call_them(command):
    path = ROOT / "tuner" / f"{command}.py"
    tree = ast.parse(path.read_text())
    names = {n.name for n in tree.body if isinstance(n, ast.FunctionDef)}
    assert {"build_parser", "main"} <= names
    assert 'if __name__ == "__main__"' in path.read_text()


def test_no_grab_bag_modules():
    bad = [m for m in modules() if m.rpartition(".")[2] in {"utils", "util", "misc", "helpers", "common"}]
    assert not bad


def test_study_and_records_load_without_ray_or_jax():
    """The planner, the audit's replay and the fits run on ledger rows: importing them starts neither."""
    import subprocess
    import sys

    names = sorted(m for m in modules() if m.startswith(("tuner.study", "tuner.records")))
    code = "; ".join(f"import {m}" for m in names) + "; import sys; print(sorted({m.split('.')[0] for m in sys.modules} & {'ray', 'jax', 'flax', 'optax'}))"
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
