"""The ComfyUI web UI in headless Debian Chromium, driven by Playwright (no `playwright install`).

`ComfyPage` opens the UI of a `ComfyServer`, collects console errors, page errors and failed
loopback requests, aborts every request to another host (there is no internet here), and offers
what the browser test and `build_workflows.py` need: load a UI-format workflow exactly like
opening a file, list node types the frontend does not know, read visible dialogs, export the
graph to API format with the frontend's own `graphToPrompt`, search nodes in the search box, read
node rectangles, pan to a node, drag the mouse and type into a widget as a user does, screenshots.
"""

from __future__ import annotations

import importlib.util
import re
import shutil
import tempfile
import urllib.parse
from dataclasses import dataclass, field
from pathlib import Path

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
]
LOOPBACK = {"127.0.0.1", "localhost", "::1", "[::1]"}

# What a fresh, stock ComfyUI logs with no custom node at all (0.3.75 with its frontend 1.32.9; 0.8.0
# with 1.35.9 and with the newest frontend, 1.58.1): filtered by these patterns, nothing else.
STOCK_NOISE = [
    # optional user files that a fresh user directory does not have
    r"404 .*/(user\.css|api/userdata/user\.css)$",
    r"404 .*/api/userdata\?dir=(workflows|subgraphs)",
    r"404 .*/api/userdata/comfy\.templates\.json$",
    r"404 .*/api/userdata/workflows%2F",
    # --disable-api-nodes makes the server send CSP connect-src 'self'; the frontend still calls api.comfy.org
    r"Connecting to 'https?://(?!127\.0\.0\.1|localhost)[^']*' violates the following Content Security Policy",
    # the frontend sets a setting it never registered (useRenderModeSetting -> onChange)
    r"TypeError: Cannot read properties of undefined \(reading 'id'\)\s+at onChange",
    # frontend 1.58's default graph checks its model files' URLs on huggingface.co, which that CSP forbids
    r"Fetch API cannot load https?://(?!127\.0\.0\.1|localhost)\S* Refused to connect because it violates the "
    r"document's Content Security Policy",
    # frontend 1.58 on ComfyUI 0.8.0: the queue panel asks for /api/jobs, which 0.8.0's server does not have
    r"^400 GET \S*/api/jobs\?",
    r"^\[Jobs API\] Error fetching jobs: JobsApiError: Failed to fetch jobs: 400",
]

# The node search box and its results: frontend 1.32-1.35 (PrimeVue) and 1.58 (a combobox
# controlling #results-list).
SEARCH_INPUT = ".comfy-vue-node-search-container input, input[role=combobox][aria-controls=results-list]"
SEARCH_RESULTS = (
    ".comfy-vue-node-search-container ~ * [role=option], [role=listbox] [role=option], #results-list [role=option]"
)

JS_READY = """() => !!(window.app && window.app.graph && window.app.canvas && window.LiteGraph
    && document.querySelector('#graph-canvas')
    && Object.keys(window.LiteGraph.registered_node_types || {}).length > 0)"""
JS_DIALOGS = """() => Array.from(document.querySelectorAll('.p-dialog'))
    .filter(d => d.offsetParent !== null || d.getClientRects().length)
    .map(d => d.innerText.trim())"""
JS_CLOSE_DIALOGS = """() => document.querySelectorAll('.p-dialog .p-dialog-close-button, .p-dialog-header-close')
    .forEach(b => b.click())"""
JS_LOAD = """async ([workflow, name]) => {
    await window.app.loadGraphData(workflow, true, true, name);
    return window.app.graph.nodes.map(n => ({id: n.id, type: n.type,
        known: n.type in window.LiteGraph.registered_node_types}));
}"""
JS_EXPORT_API = "async () => (await window.app.graphToPrompt()).output"
JS_NODE_RECTS = """() => window.app.graph.nodes.map(n => ({id: n.id, type: n.type, title: n.title || n.type,
    rect: [n.pos[0], n.pos[1] - window.LiteGraph.NODE_TITLE_HEIGHT, n.size[0],
           n.size[1] + window.LiteGraph.NODE_TITLE_HEIGHT],
    size: Array.from(n.size), needed: n.computeSize ? Array.from(n.computeSize()) : null}))"""
JS_SHOW_AT = """([id, local, client]) => {
    const node = window.app.graph.getNodeById(id);
    const ds = window.app.canvas.ds;
    const canvas = window.app.canvas.canvas.getBoundingClientRect();
    ds.scale = 1;
    ds.offset[0] = client[0] - canvas.left - node.pos[0] - local[0];
    ds.offset[1] = client[1] - canvas.top - node.pos[1] - local[1];
    window.app.canvas.setDirty(true, true);
}"""
JS_TO_CLIENT = """([id, local]) => {
    const node = window.app.graph.getNodeById(id);
    const ds = window.app.canvas.ds;
    const canvas = window.app.canvas.canvas.getBoundingClientRect();
    return [0, 1].map(i => (i ? canvas.top : canvas.left) + (node.pos[i] + local[i] + ds.offset[i]) * ds.scale);
}"""
JS_WIDGET_ROW = """([id, name]) => {
    const node = window.app.graph.getNodeById(id);
    const widget = node.widgets.find(w => w.name === name);
    const height = widget.computedHeight ?? window.LiteGraph.NODE_WIDGET_HEIGHT;
    return [node.size[0] / 2, (widget.last_y ?? widget.y) + height / 2];
}"""
JS_SET_WIDGETS = """([type, values]) => {
    const nodes = window.app.graph.nodes.filter(n => n.type === type);
    for (const node of nodes) {
        for (const [name, value] of Object.entries(values)) {
            const widget = (node.widgets || []).find(w => w.name === name);
            if (!widget) throw new Error(type + ' has no widget ' + name);
            widget.value = value;
            if (widget.callback) widget.callback(value);
        }
    }
    window.app.graph.setDirtyCanvas(true, true);
    return nodes.length;
}"""


def browser_unavailable_reason() -> str | None:
    if importlib.util.find_spec("playwright") is None:
        return "the playwright package is missing: run `bash tests/setup.sh`"
    if not Path(CHROMIUM).is_file():
        return f"{CHROMIUM} is missing (Debian package chromium): run `bash tests/setup.sh`"
    return None


def without_meta(prompt: dict) -> dict:
    """An API-format prompt without the `_meta` titles, which the server ignores (newer frontends
    title stock nodes by their display names, older ones by their types)."""
    return {node_id: {key: value for key, value in node.items() if key != "_meta"} for node_id, node in prompt.items()}


def workflow_node_types(workflow: dict) -> set[str]:
    """Node types a UI-format workflow uses, subgraph definitions included."""
    subgraphs = (workflow.get("definitions") or {}).get("subgraphs", [])
    subgraph_ids = {s.get("id") for s in subgraphs}
    nodes = list(workflow.get("nodes", [])) + [n for s in subgraphs for n in s.get("nodes", [])]
    return {n["type"] for n in nodes if n.get("type") and n["type"] not in subgraph_ids}


@dataclass
class ConsoleEvent:
    phase: str
    kind: str
    text: str
    stock_noise: bool


@dataclass
class ComfyPage:
    """A headless Chromium page on a running ComfyServer. Use as a context manager."""

    server: object
    viewport: tuple[int, int] = (1600, 1000)
    events: list[ConsoleEvent] = field(default_factory=list)
    blocked: list[str] = field(default_factory=list)
    phase: str = "startup"

    def __enter__(self) -> ComfyPage:
        from playwright.sync_api import sync_playwright

        # A fresh user would get the templates browser over the canvas.
        self.server.post("/settings/Comfy.TutorialCompleted", True)
        self._profile = tempfile.mkdtemp(prefix="flashface-chromium-")
        self._playwright = sync_playwright().start()
        width, height = self.viewport
        self._context = self._playwright.chromium.launch_persistent_context(
            self._profile,
            executable_path=CHROMIUM,
            headless=True,
            args=CHROMIUM_ARGS,
            viewport={"width": width, "height": height},
        )
        self._context.route("**/*", self._route)
        self.page = self._context.pages[0] if self._context.pages else self._context.new_page()
        self.page.on("console", self._on_console)
        self.page.on("pageerror", lambda error: self._add("pageerror", f"{error}\n{getattr(error, 'stack', '')}"))
        self.page.on("response", self._on_response)
        self.page.goto(self.server.url + "/", wait_until="domcontentloaded", timeout=90_000)
        self.page.wait_for_function(JS_READY, timeout=90_000, polling=250)
        self.page.wait_for_timeout(1000)  # start-up dialogs and the default graph settle
        self.startup_dialogs = self.dialogs()
        self.close_dialogs()
        return self

    def __exit__(self, *exc) -> None:
        try:
            self._context.close()
            self._playwright.stop()
        finally:
            shutil.rmtree(self._profile, ignore_errors=True)

    # ------------------------------------------------------------ event collection
    def _add(self, kind: str, text: str) -> None:
        noise = any(re.search(pattern, text, re.S) for pattern in STOCK_NOISE)
        self.events.append(ConsoleEvent(self.phase, kind, text[:2000], noise))

    def _on_console(self, message) -> None:
        # "Failed to load resource" lines are reported with their URL by _on_response.
        if message.type in ("error", "assert") and not message.text.startswith("Failed to load resource"):
            self._add("console", message.text)

    def _on_response(self, response) -> None:
        if response.status >= 400:
            self._add("http", f"{response.status} {response.request.method} {response.url}")

    def _route(self, route) -> None:
        url = route.request.url
        if url.startswith(("data:", "blob:")) or urllib.parse.urlparse(url).hostname in LOOPBACK:
            route.continue_()
        else:
            self.blocked.append(url)
            route.abort()

    def errors(self) -> list[ConsoleEvent]:
        """Console/page errors and failed requests that a stock ComfyUI does not produce."""
        return [event for event in self.events if not event.stock_noise]

    # ------------------------------------------------------------ actions
    def registered_node_types(self) -> set[str]:
        return set(self.page.evaluate("() => Object.keys(window.LiteGraph.registered_node_types)"))

    def dialogs(self) -> list[str]:
        return self.page.evaluate(JS_DIALOGS)

    def close_dialogs(self) -> None:
        self.page.evaluate(JS_CLOSE_DIALOGS)

    def load_workflow(self, workflow: dict, name: str, settle_ms: int = 1500) -> list[dict]:
        """Open a UI-format workflow as the File menu does; the nodes as the frontend sees them."""
        self.phase = name
        self.close_dialogs()
        nodes = self.page.evaluate(JS_LOAD, [workflow, name])
        self.page.wait_for_timeout(settle_ms)
        return nodes

    def export_api(self) -> dict:
        """The current graph in API format, by the frontend's own converter (menu: Export (API)),
        without `_meta` (see `without_meta`)."""
        return without_meta(self.page.evaluate(JS_EXPORT_API))

    def node_rects(self) -> list[dict]:
        """Every node's rectangle on the canvas, title bar included ([x, y, width, height]), its size
        and the size its widgets need (`computeSize`)."""
        return self.page.evaluate(JS_NODE_RECTS)

    def show_at(self, node_id: int, local: tuple[float, float], client: tuple[float, float]) -> None:
        """Pan the canvas at zoom 1 so that the node-local point `local` is at page point `client`,
        and let it redraw."""
        self.page.evaluate(JS_SHOW_AT, [node_id, list(local), list(client)])
        self.page.wait_for_timeout(300)

    def to_client(self, node_id: int, local: tuple[float, float]) -> tuple[float, float]:
        """The page point of a node-local point, at the canvas' current pan and zoom."""
        x, y = self.page.evaluate(JS_TO_CLIENT, [node_id, list(local)])
        return x, y

    def drag(self, start: tuple[float, float], end: tuple[float, float], steps: int = 6) -> None:
        """Press at page point `start`, move to `end` in steps, release, as a mouse does."""
        self.page.mouse.move(*start)
        self.page.mouse.down()
        self.page.mouse.move(*end, steps=steps)
        self.page.mouse.up()
        self.page.wait_for_timeout(300)

    def type_into_widget(self, node_id: int, name: str, text: str) -> None:
        """Click the middle of a number widget, type `text` into the value prompt, press Enter."""
        self.show_at(node_id, self.page.evaluate(JS_WIDGET_ROW, [node_id, name]), (400, 300))
        self.page.mouse.click(400, 300)
        prompt = self.page.locator(".graphdialog input")
        prompt.fill(text)
        prompt.press("Enter")
        self.page.wait_for_timeout(300)

    def set_widgets(self, node_type: str, **values) -> int:
        """Set widget values on every node of a type, as a user editing them; how many nodes."""
        return self.page.evaluate(JS_SET_WIDGETS, [node_type, values])

    def queue(self) -> None:
        """Press Queue: the frontend converts the graph and posts it, exactly as the button does."""
        self.page.evaluate("async () => { await window.app.queuePrompt(0, 1); }")

    def screenshot(self, path: Path, **options) -> Path:
        self.page.screenshot(path=str(path), **options)
        return path

    def search_nodes(self, query: str) -> list[str]:
        """Open the node search box (double click on the empty canvas), type `query`; the results' titles.

        Clears the graph first so that the double click cannot land on a node."""
        from playwright.sync_api import TimeoutError as PlaywrightTimeoutError

        self.page.evaluate("() => { window.app.graph.clear(); window.app.graph.setDirtyCanvas(true, true); }")
        self.page.wait_for_timeout(300)
        box = self.page.locator("#graph-canvas").bounding_box()
        search = self.page.locator(SEARCH_INPUT).first
        for attempt in range(2):  # a double click the canvas took as two clicks is given again, as a user would
            self.page.mouse.dblclick(box["x"] + box["width"] * 0.6, box["y"] + box["height"] * 0.75)
            try:
                search.wait_for(timeout=10_000)
                break
            except PlaywrightTimeoutError:
                if attempt:
                    raise
        self.page.keyboard.type(query, delay=20)
        options = self.page.locator(SEARCH_RESULTS)
        options.first.wait_for(timeout=10_000)
        self.page.wait_for_timeout(500)  # the list settles after the last keystroke
        titles = [text.split("\n")[0].replace("\xa0", " ").strip() for text in options.all_inner_texts()]
        self.page.keyboard.press("Escape")
        return titles
