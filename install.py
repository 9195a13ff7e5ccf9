"""Install the pack's Python dependencies into the Python that runs this script.

ComfyUI-Manager runs this file once after installing the pack (with ComfyUI's own Python and the
pack folder as working directory); after a `git clone`, run it yourself with ComfyUI's Python:

    python install.py            # install what is missing
    python install.py --dry-run  # only say what would be installed

What it does, line by line of requirements.txt: a requirement that is already satisfied is left
alone (nothing is upgraded), a missing or too old one is installed with
`<this python> -m pip install "<requirement>"` with the installed torch pinned (where this Python
has no pip, as in environments made by uv, with `uv pip install --python <this python>`; it says
which), and torch, torchvision, torchaudio and torchsde are never installed or upgraded, whatever
a line says: ComfyUI owns them. Running it again does nothing once everything is there.

OpenCV: FlashFace does not use OpenCV at all (face detection and cropping are torch + Pillow), so
this script never installs any `opencv-*` wheel and cannot clash with the one (python, headless
or contrib) another pack installed.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import shutil
import subprocess
import sys
import tempfile
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

try:
    from packaging.requirements import InvalidRequirement, Requirement
    from packaging.utils import canonicalize_name
except ImportError:  # packaging is vendored by pip when it is not installed on its own
    try:
        from pip._vendor.packaging.requirements import InvalidRequirement, Requirement
        from pip._vendor.packaging.utils import canonicalize_name
    except ImportError:
        sys.exit("[FlashFace install] needs the 'packaging' module (or pip): install it, then run this again")

PACK_DIR = Path(__file__).resolve().parent
sys.path.insert(0, str(PACK_DIR))
from flashface import torch_version_problem  # noqa: E402 - the library's own check, which imports no torch

REQUIREMENTS = PACK_DIR / "requirements.txt"
OWNED_BY_COMFYUI = {"torch", "torchvision", "torchaudio", "torchsde"}


def requirement_lines(path: Path) -> list[str]:
    """The requirement lines of a requirements file (comments, blanks and pip options dropped)."""
    lines = []
    for raw in path.read_text().splitlines():
        line = raw.split("#", 1)[0].strip()
        if line and not line.startswith("-"):
            lines.append(line)
    return lines


def classify(line: str) -> tuple[str, str]:
    """(action, reason) for one requirement line: action is "skip", "ok" or "install"."""
    try:
        requirement = Requirement(line)
    except InvalidRequirement as error:
        return "skip", f"not a requirement pip understands here ({str(error).splitlines()[0]})"
    name = canonicalize_name(requirement.name)
    if name in OWNED_BY_COMFYUI:
        return "skip", "ComfyUI's torch is never installed or upgraded by this pack"
    if requirement.marker is not None and not requirement.marker.evaluate():
        return "skip", "not needed on this platform"
    try:
        installed = version(name)
    except PackageNotFoundError:
        return "install", "missing"
    if requirement.specifier and not requirement.specifier.contains(installed, prereleases=True):
        return "install", f"installed {installed} does not satisfy {requirement.specifier}"
    return "ok", f"{installed} already installed"


def installed_torch_pins() -> str:
    """Constraint lines holding the installed torch family at its version, so that pip cannot
    move it while resolving another package's dependencies."""
    pins = []
    for name in sorted(OWNED_BY_COMFYUI):
        with contextlib.suppress(PackageNotFoundError):  # not installed: nothing to hold
            pins.append(f"{name}=={version(name)}")
    return "\n".join(pins) + "\n"


def installer() -> tuple[str, list[str]] | None:
    """(name, command prefix) of what installs into this Python: its pip, else uv; None if neither."""
    if importlib.util.find_spec("pip") is not None:
        return "pip", [sys.executable, "-m", "pip", "install"]
    uv = shutil.which("uv")
    if uv is not None:
        return "uv", [uv, "pip", "install", "--python", sys.executable]
    if importlib.util.find_spec("uv") is not None:
        return "uv", [sys.executable, "-m", "uv", "pip", "install", "--python", sys.executable]
    return None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--dry-run", action="store_true", help="only report what would be installed")
    parser.add_argument("--requirements", type=Path, default=REQUIREMENTS)
    args = parser.parse_args(argv)

    tool = installer()
    print(f"[FlashFace install] python: {sys.executable}; installing with: {tool[0] if tool else 'nothing found'}")
    failures = 0
    with contextlib.suppress(PackageNotFoundError):  # no torch yet: ComfyUI brings it
        if problem := torch_version_problem(version("torch")):
            failures += 1
            print(f"[FlashFace install] torch is too old: {problem}")
    for line in requirement_lines(args.requirements):
        action, reason = classify(line)
        if action != "install":
            print(f"[FlashFace install] {action:7} {line}: {reason}")
            continue
        if args.dry_run:
            print(f"[FlashFace install] would install {line}: {reason}")
            continue
        if tool is None:
            failures += 1
            print(
                f"[FlashFace install] CANNOT install {line}: this Python has no pip and uv is not on PATH; "
                f"install it with the tool that made this environment"
            )
            continue
        print(f"[FlashFace install] installing {line} with {tool[0]}: {reason}", flush=True)
        with tempfile.NamedTemporaryFile("w", suffix=".txt", delete=False) as constraints:
            constraints.write(installed_torch_pins())
        try:
            result = subprocess.run([*tool[1], line, "-c", constraints.name], check=False)
        finally:
            Path(constraints.name).unlink()
        if result.returncode != 0:
            failures += 1
            print(f"[FlashFace install] FAILED to install {line} ({tool[0]} exit code {result.returncode})")
    print("[FlashFace install] OpenCV: not used by FlashFace, left alone")
    print(f"[FlashFace install] {'done' if not failures else f'{failures} requirement(s) failed'}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
