"""The package layout is the pipeline: the lower subpackages never import the upper ones, and
no library module imports a command (`wm_jax/<command>.py`, the thin `python -m` modules)."""

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src" / "wm_jax"
COMMANDS = {"experiment", "evaluate", "play", "sweep", "iterative", "agents"}
# What each subpackage may import from wm_jax (besides itself); pipeline may import anything.
ALLOWED = {
    "core": set(),
    "models": {"core"},
    "train": {"core", "models", "data"},
    "data": {"core", "models", "train", "envs"},
    "envs": {"core", "models", "data"},
    "dream": {"core", "models", "envs"},
    "es": {"core", "models", "train", "dream", "envs"},
}


def _imports(path: Path) -> set[str]:
    """Every wm_jax module a file imports, at module level or inside functions."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("wm_jax"):
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
        elif isinstance(node, ast.Import):
            names.update(a.name for a in node.names if a.name.startswith("wm_jax"))
    return names


def _subpackage(module: str) -> str | None:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else None


@pytest.mark.parametrize("package", sorted(ALLOWED))
def test_lower_subpackages_never_import_upper_ones(package):
    found = {}
    for path in (SRC / package).rglob("*.py"):
        for module in _imports(path):
            target = _subpackage(module)
            if target in ALLOWED.keys() | {"pipeline"} and target not in ALLOWED[package] | {
                package
            }:
                found.setdefault(path.name, set()).add(module)
    assert found == {}


def test_no_library_module_imports_a_command():
    for path in SRC.rglob("*.py"):
        if path.parent == SRC and path.stem in COMMANDS:
            continue
        commands = {m for m in _imports(path) if m in {f"wm_jax.{c}" for c in COMMANDS}}
        assert commands == set(), path


def test_every_command_is_a_thin_module_over_pipeline():
    for command in COMMANDS:
        text = (SRC / f"{command}.py").read_text()
        assert f"from wm_jax.pipeline.{command} import main" in text
        assert len(text.splitlines()) < 12


SCRIPTS = sorted((SRC.parents[1] / "experiments").glob("*.py"))
SCRIPTS += sorted((SRC.parents[1] / "benchmarks").glob("*.py"))


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda path: f"{path.parent.name}/{path.name}")
def test_scripts_import_what_the_library_has(script: Path):
    """experiments/ and benchmarks/ scripts name modules that exist (a move renames them)."""
    import importlib

    for name in _imports(script):
        try:
            importlib.import_module(name)
        except ModuleNotFoundError:
            parent, _, attribute = name.rpartition(".")
            assert hasattr(importlib.import_module(parent), attribute), f"{script.name}: {name}"
