"""The library's shape: `flashface/` imports nothing of ComfyUI and its modules form no import cycle."""

from __future__ import annotations

import ast
from graphlib import CycleError, TopologicalSorter
from pathlib import Path

LIBRARY = Path(__file__).resolve().parents[2] / "flashface"


def module_name(path: Path) -> str:
    parts = list(path.relative_to(LIBRARY.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported_modules(path: Path, known: set[str]) -> tuple[set[str], set[str]]:
    """(library modules `path` imports anywhere in its code, top-level packages of its absolute imports)."""
    name = module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    inside, outside = set(), set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            outside.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0:
            outside.add((node.module or "").split(".")[0])
        elif isinstance(node, ast.ImportFrom):
            base = package.split(".")[: len(package.split(".")) - node.level + 1]
            target = ".".join([*base, *([node.module] if node.module else [])])
            inside.update(t for t in (target, *(f"{target}.{a.name}" for a in node.names)) if t in known)
    inside.discard(name)
    return inside, outside


def library_graph() -> tuple[dict[str, set[str]], dict[str, set[str]]]:
    paths = {module_name(path): path for path in LIBRARY.rglob("*.py")}
    found = {name: imported_modules(path, set(paths)) for name, path in paths.items()}
    return {name: inside for name, (inside, _) in found.items()}, {name: out for name, (_, out) in found.items()}


def test_the_library_imports_nothing_of_comfyui():
    _, outside = library_graph()
    assert len(outside) > 30
    for name, packages in outside.items():
        assert not packages & {"comfy", "comfy_extras", "comfy_execution", "folder_paths", "nodes", "server"}, name


def test_library_modules_form_no_import_cycle():
    """A cycle (even through an import inside a function) means a concept lives in the wrong module."""
    inside, _ = library_graph()
    assert inside["flashface.models.convert"] >= {"flashface.models.compact", "flashface.models.graft"}
    try:
        TopologicalSorter(inside).prepare()
    except CycleError as error:
        raise AssertionError(f"import cycle: {' -> '.join(error.args[1])}") from None
