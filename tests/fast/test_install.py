"""install.py (run by ComfyUI-Manager) and the pack's dependency rules."""

import ast
import re
import sys
from importlib.metadata import version

import pytest

import install
from comfy_installs import REPO_ROOT as REPO
from flashface import MINIMUM_TORCH, torch_version_problem


def test_torch_family_is_never_installed():
    for line in ("torch", "torch>=2.0", "torchvision==0.1", "torchaudio", "torchsde"):
        assert install.classify(line)[0] == "skip", line


def test_satisfied_requirement_is_left_alone_and_unsatisfied_one_is_installed():
    assert install.classify("pytest")[0] == "ok"
    assert install.classify("pytest>=1")[0] == "ok"
    action, reason = install.classify("pytest>=9999")
    assert action == "install" and "does not satisfy" in reason
    assert install.classify("surely-not-an-installed-package-xyz")[0] == "install"


def test_platform_markers_and_options_are_respected(tmp_path):
    assert install.classify('pytest>=9999 ; python_version < "3"')[0] == "skip"
    requirements = tmp_path / "requirements.txt"
    requirements.write_text("# comment\n\n-c constraints.txt\nnumpy  # trailing comment\n")
    assert install.requirement_lines(requirements) == ["numpy"]


def test_requirements_pin_no_torch_and_no_opencv():
    for line in install.requirement_lines(REPO / "requirements.txt"):
        requirement = install.Requirement(line)
        name = requirement.name.lower()
        assert name not in ("torch", "torchvision", "torchaudio"), line
        assert name not in install.OWNED_BY_COMFYUI or not requirement.specifier, f"{line}: ComfyUI pins its own"
        assert "opencv" not in name, line


def test_no_pack_code_imports_opencv():
    sources = [
        REPO / "__init__.py",
        REPO / "install.py",
        *(REPO / "flashface").rglob("*.py"),
        *(REPO / "nodes").rglob("*.py"),
    ]
    for path in sources:
        if not path.exists():
            continue
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            names = (
                [a.name for a in node.names]
                if isinstance(node, ast.Import)
                else [node.module or ""]
                if isinstance(node, ast.ImportFrom)
                else []
            )
            assert not any(n.split(".")[0] == "cv2" for n in names), f"{path} imports cv2"


def test_without_pip_it_installs_with_uv_and_says_so(tmp_path, monkeypatch, capsys):
    """ComfyUI-Manager falls back to uv where the Python has no pip (an environment uv made)."""
    calls = tmp_path / "uv-calls.txt"
    fake_uv = tmp_path / "uv"
    fake_uv.write_text(f'#!/bin/sh\necho "$@" >> {calls}\n')
    fake_uv.chmod(0o755)
    real_find_spec = install.importlib.util.find_spec
    monkeypatch.setattr(
        install.importlib.util, "find_spec", lambda name, *args: None if name == "pip" else real_find_spec(name, *args)
    )
    monkeypatch.setattr(install.shutil, "which", lambda name: str(fake_uv) if name == "uv" else None)
    requirements = tmp_path / "requirements.txt"
    requirements.write_text("surely-not-an-installed-package-xyz\npytest\ntorch>=99\n")
    assert install.main(["--requirements", str(requirements)]) == 0
    output = capsys.readouterr().out
    assert "installing with: uv" in output and "installing surely-not-an-installed-package-xyz with uv" in output
    (call,) = calls.read_text().splitlines()
    assert call.startswith(f"pip install --python {sys.executable} surely-not-an-installed-package-xyz -c ")


def test_with_neither_pip_nor_uv_it_says_what_to_do(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(install, "installer", lambda: None)
    requirements = tmp_path / "requirements.txt"
    requirements.write_text("surely-not-an-installed-package-xyz\n")
    assert install.main(["--requirements", str(requirements)]) == 1
    assert "no pip and uv is not on PATH" in capsys.readouterr().out


def test_registry_metadata_is_complete_and_cannot_collide():
    import tomllib

    from comfy_installs import comfy_installs

    project = tomllib.loads((REPO / "pyproject.toml").read_text())
    name = project["project"]["name"]
    assert "comfyui" not in name.lower() and re.fullmatch(r"[A-Za-z][\w.-]{0,99}", name)
    comfy = project["tool"]["comfy"]
    assert comfy["PublisherId"] and comfy["DisplayName"]
    repository_file = (
        "https://raw.githubusercontent.com/"
        + project["project"]["urls"]["Repository"].split("github.com/")[1]
        + "/main/"
    )
    assert comfy["Icon"].startswith(repository_file) and (REPO / comfy["Icon"][len(repository_file) :]).is_file()
    oldest_tested = comfy_installs()[0].version
    assert comfy["requires-comfyui"] == f">={oldest_tested}"
    assert project["project"]["dependencies"] == install.requirement_lines(REPO / "requirements.txt")
    assert project["project"]["urls"]["Repository"].startswith("https://")
    ignored = [
        line.strip()
        for line in (REPO / ".comfyignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    assert {"tests/", "bench/", ".ci/"} <= set(ignored)
    shipped = ("__init__.py", "nodes/", "flashface/", "workflows/", "requirements.txt", "install.py", "LICENSE")
    assert not [path for path in shipped if any(path.startswith(pattern) for pattern in ignored)]


@pytest.mark.parametrize(
    "installed, refused", [("2.1.2+cu121", True), ("2.3.1", True), ("2.4.0", False), ("2.14.1+cu130", False)]
)
def test_a_torch_older_than_the_minimum_is_named_with_what_to_do(installed, refused):
    problem = torch_version_problem(installed)
    assert (problem is not None) == refused
    if problem:
        assert installed in problem and "2.4 or later" in problem and "Update the torch" in problem


def test_the_minimum_torch_is_stated_once_in_each_place_a_user_reads(monkeypatch, capsys):
    """pyproject's extra for the command line and README state flashface.MINIMUM_TORCH; install.py
    (what ComfyUI-Manager runs) reports an older torch and fails."""
    import tomllib

    floor = ".".join(str(n) for n in MINIMUM_TORCH)
    extras = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    assert f"torch>={floor}" in extras["cli"]
    assert f"torch {floor} or later" in (REPO / "README.md").read_text()
    monkeypatch.setattr(install, "version", lambda name: "2.1.2" if name == "torch" else version(name))
    assert install.main(["--dry-run"]) == 1
    assert "torch is too old: FlashFace needs torch" in capsys.readouterr().out
