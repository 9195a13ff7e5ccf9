"""The documents say what the tree holds: TECHNICAL.md's layout lists every module of the pack and
the library, and nothing that is not there."""

from __future__ import annotations

import re

from comfy_server import REPO_ROOT

INDENT = 2


def layout_paths() -> set[str]:
    """The paths TECHNICAL.md's layout block names, from its indentation (two spaces a level)."""
    text = (REPO_ROOT / "TECHNICAL.md").read_text()
    block = re.search(r"## Layout\n\n```\n(.*?)\n```", text, re.S).group(1)
    parents: list[str] = []
    paths = set()
    for line in block.splitlines():
        match = re.match(r"( *)(\S+\.py|\S+/)(?:\s|$)", line)
        if not match:
            continue
        depth = len(match.group(1)) // INDENT
        parents = parents[:depth]
        path = "".join(parents) + match.group(2)
        paths.add(path)
        if path.endswith("/"):
            parents.append(match.group(2))
    return paths


def test_technical_layout_lists_every_module_of_the_pack_and_the_library():
    listed = layout_paths()
    modules = {
        path.relative_to(REPO_ROOT).as_posix()
        for folder in ("nodes", "flashface")
        for path in (REPO_ROOT / folder).rglob("*.py")
        if path.name != "__init__.py" and "__pycache__" not in path.parts
    }
    assert modules - listed == set(), "modules TECHNICAL.md's layout does not list"
    named = {path for path in listed if path.endswith(".py") and path.split("/")[0] in ("nodes", "flashface")}
    assert named - modules - {"__init__.py"} == set(), "TECHNICAL.md's layout lists modules that do not exist"
