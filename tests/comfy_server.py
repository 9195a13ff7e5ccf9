"""Real ComfyUI servers on 127.0.0.1 for the integration and browser tests, of the installs
`comfy_installs` knows.

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
import json
import os
import shutil
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from comfy_installs import EXAMPLE_PHOTOS, PACK_FOLDER_NAME, REPO_ROOT, ComfyInstall, default_install


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
