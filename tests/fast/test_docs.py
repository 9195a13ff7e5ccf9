"""The documents say what the tree holds: TECHNICAL.md's layout lists every module of the pack and
the library, and nothing that is not there."""

from __future__ import annotations

import re

from comfy_installs import REPO_ROOT

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


def test_readme_states_the_limits_and_places_the_code_has():
    """The reference-face limit, every folder a detector is looked for in, and the settings the
    Generator node has no input for (the node's inputs are what the smoke test sees registered)."""
    import dataclasses

    from comfy_workflows import NODE_INPUTS
    from flashface.models.model_registry import DETECTOR_FOLDERS
    from flashface.people import MAX_REFERENCES
    from flashface.settings import GenerationSettings

    readme = " ".join((REPO_ROOT / "README.md").read_text().split())
    assert f"up to {MAX_REFERENCES} reference faces in all" in readme
    detector_row = next(line for line in readme.split("|") if "models/flashface`, `models/detection" in line)
    assert all(f"`models/{folder}`" in detector_row for folder in DETECTOR_FOLDERS), detector_row
    settings = {item.name for item in dataclasses.fields(GenerationSettings)} - {"face_box"}  # four corner widgets
    without_input = " and ".join(f"`{name}`" for name in sorted(settings - NODE_INPUTS["FlashFace_Generator"]))
    assert f"(the Generator has no input for {without_input}," in readme
