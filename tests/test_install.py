"""install.py (run by ComfyUI-Manager) and the pack's dependency rules."""

import ast
import re
import subprocess
import sys
from pathlib import Path

import pytest

import install
from comfy_process import child_command, result_of

REPO = Path(__file__).resolve().parent.parent


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


@pytest.mark.slow
def test_dry_run_after_setup_has_nothing_to_install():
    result = subprocess.run(
        [sys.executable, str(REPO / "install.py"), "--dry-run"], capture_output=True, text=True, check=True, cwd=REPO
    )
    assert "would install" not in result.stdout, result.stdout
    assert "OpenCV: not used by FlashFace" in result.stdout


def test_requirements_pin_no_torch_and_no_opencv():
    for line in install.requirement_lines(REPO / "requirements.txt"):
        name = install.Requirement(line).name.lower()
        assert not name.startswith("torch"), line
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


@pytest.mark.slow
def test_modules_the_nodes_import_leave_open_clip_unimported():
    """ComfyUI imports the pack at every start; open_clip (with timm, 0.7 s) loads on first use."""
    modules = sorted(
        {
            f"flashface.{m.group(1)}"
            for path in (REPO / "nodes").glob("*.py")
            for m in re.finditer(r"from \.\.flashface\.([\w.]+) import", path.read_text())
        }
    )
    assert "flashface.models.clip_text" in modules
    command = child_command("process_scenarios:modules_imported_by", modules=modules, families=["open_clip", "timm"])
    result = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result_of(result.stdout) == []


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

    from comfy_server import comfy_installs

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
