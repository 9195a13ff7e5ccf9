"""The pack in ComfyUI's real web UI (headless Debian Chromium): every bundled workflow opens with no
missing node, no node over another and no console error, exports to its committed API copy, the
nodes are found by the node search, and the face box drawn on the nodes that place a face follows
the mouse and the widgets (web/flashface_face_box.js)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from comfy_browser import ComfyPage, browser_unavailable_reason, without_meta, workflow_node_types
from comfy_installs import REPO_ROOT
from flashface.sampling.mask import face_square
from tiny_flashface_models import use_tiny_models

WORKFLOWS_DIR = REPO_ROOT / "workflows"
UI_WORKFLOWS = sorted(WORKFLOWS_DIR.glob("*.json"))
# UI workflows as an earlier version of the pack saved them (v0.1: bundled on 2026-11-30).
SAVED_WORKFLOWS = sorted((REPO_ROOT / "tests" / "data" / "saved_workflows").glob("*.json"))
PACK_NODES = [
    "FlashFace Load Model",
    "FlashFace Detect Face",
    "FlashFace CLIP Text Encode",
    "FlashFace Generator",
    "FlashFace Apply (MODEL for KSampler)",
    "FlashFace Sigmas",
    "FlashFace VAE Encode",
    "FlashFace VAE Decode",
    "FlashFace Person (experimental)",
    "FlashFace Graft Checkpoint (experimental)",
]
FACE_BOX = ("face_x1", "face_y1", "face_x2", "face_y2")
JS_WIDGET_VALUES = """([id, names]) => {
    const node = window.app.graph.getNodeById(id);
    return names.map(n => node.widgets.find(w => w.name === n).value);
}"""
JS_FACE_BOX = """(id) => {
    const node = window.app.graph.getNodeById(id);
    const preview = (node.widgets || []).find(w => w.name === 'face_box_preview');
    return preview ? preview.geometry : null;
}"""
JS_SERIALIZED = "() => window.app.graph.serialize()"


@pytest.fixture(scope="module")
def ui(comfyui_for_browser):
    reason = browser_unavailable_reason()
    if reason:
        pytest.skip(reason)
    with ComfyPage(comfyui_for_browser) as page:
        yield page


@pytest.fixture
def shots(request, tmp_path_factory) -> Path:
    """Where a test keeps its screenshots: <pytest's base temp>/screenshots-<ComfyUI>/<test>/ (each
    path is printed; `--basetemp DIR` keeps them in DIR)."""
    folder = (
        tmp_path_factory.getbasetemp() / f"screenshots-{request.node.callspec.params['comfyui_for_browser'].version}"
    )
    folder = folder / request.node.originalname
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def test_workflows_folder_has_what_the_template_browser_needs():
    api_copies = {path.stem for path in (WORKFLOWS_DIR / "api").glob("*.json")}
    assert {workflow.stem for workflow in UI_WORKFLOWS} == api_copies and len(api_copies) >= 10
    for workflow in UI_WORKFLOWS:
        assert workflow.with_suffix(".jpg").is_file(), f"{workflow.name} has no thumbnail"
        assert (WORKFLOWS_DIR / "api" / workflow.name).is_file(), f"{workflow.name} has no API copy"
        assert isinstance(json.loads(workflow.read_text()).get("nodes"), list), f"{workflow.name} is not UI format"


def test_the_server_lists_the_pack_templates(comfyui_for_browser):
    templates = comfyui_for_browser.get("/workflow_templates")
    (listed,) = templates.values()
    assert sorted(listed) == sorted(workflow.stem for workflow in UI_WORKFLOWS)


@pytest.mark.parametrize("workflow", SAVED_WORKFLOWS, ids=lambda path: path.stem)
def test_workflow_saved_by_an_earlier_version_loads_and_runs(ui, comfyui_for_browser, workflow, tiny_model_files):
    """ComfyUI stores widget values by position: inputs added since then take their defaults, an
    input removed since then (CLIP Text Encode's quality_postfix) is dropped, the graph runs."""
    data = json.loads(workflow.read_text())
    nodes = ui.load_workflow(data, workflow.name)
    assert all(node["known"] for node in nodes)
    exported = ui.export_api()
    current = WORKFLOWS_DIR / "api" / workflow.name.split("_", 1)[1]
    if workflow.stem.endswith("one_photo"):  # the graph itself did not change since
        assert exported == without_meta(json.loads(current.read_text()))
    generator = next(node["inputs"] for node in exported.values() if node["class_type"] == "FlashFace_Generator")
    assert generator["seed"] == 42 and generator["steps"] == 35 and generator["preset"] == "none"
    assert generator["prompt_postfixes"] is True and generator["pad_references"] is True
    folder = comfyui_for_browser.models_dir / "flashface"
    folder.mkdir(parents=True, exist_ok=True)
    for path in tiny_model_files.values():
        if not (folder / path.name).exists():
            (folder / path.name).symlink_to(path)
    generator.update(steps=2, width=64, height=64)
    run = comfyui_for_browser.run(use_tiny_models(exported), timeout=600)
    assert run.status == "success", run.error_text() or comfyui_for_browser.log_tail()


@pytest.mark.parametrize("workflow", UI_WORKFLOWS, ids=lambda path: path.stem)
def test_bundled_workflow_opens_with_no_missing_node(ui, workflow, shots):
    data = json.loads(workflow.read_text())
    nodes = ui.load_workflow(data, workflow.name)
    assert workflow_node_types(data) <= ui.registered_node_types()
    assert len(nodes) == len(data["nodes"]) and all(node["known"] for node in nodes)
    assert not [d for d in ui.dialogs() if "missing" in d.lower()], ui.dialogs()
    print(f"\nscreenshot: {ui.screenshot(shots / f'{workflow.stem}.png')}")
    rects = ui.node_rects()
    assert not overlapping(rects), f"nodes over one another in {workflow.name}: rerun tests/build_workflows.py"
    hidden = [
        r["title"]
        for r in rects
        if r["needed"] and (r["size"][0] < r["needed"][0] - 0.5 or r["size"][1] < r["needed"][1] - 0.5)
    ]
    assert not hidden, f"nodes too small for their widgets in {workflow.name}: {hidden}"
    exported = ui.export_api()
    committed = without_meta(json.loads((WORKFLOWS_DIR / "api" / workflow.name).read_text()))
    assert exported == committed, "the UI workflow and its API copy differ: rerun tests/build_workflows.py"


def overlapping(rects: list[dict]) -> list[tuple[str, str]]:
    """The pairs of node rectangles (title bars included) that share some area."""
    pairs = []
    for index, a in enumerate(rects):
        ax, ay, aw, ah = a["rect"]
        for b in rects[index + 1 :]:
            bx, by, bw, bh = b["rect"]
            if ax < bx + bw and bx < ax + aw and ay < by + bh and by < ay + ah:
                pairs.append((a["title"], b["title"]))
    return pairs


def open_bundled(ui, name: str) -> dict[str, int]:
    """Open a bundled workflow; its node ids by title (type where untitled)."""
    ui.load_workflow(json.loads((WORKFLOWS_DIR / name).read_text()), name)
    return {r["title"]: r["id"] for r in ui.node_rects()}


def widget_values(ui, node_id: int, *names: str) -> list:
    return ui.page.evaluate(JS_WIDGET_VALUES, [node_id, list(names)])


def face_box(ui, node_id: int) -> dict:
    """The node's four face widgets and what the preview drew, with its frame in view."""
    ui.show_at(node_id, (0, 0), (300, 100))  # drawn once: the frame's place is known
    geometry = ui.page.evaluate(JS_FACE_BOX, node_id)
    assert geometry, "the face box preview is missing or was not drawn"
    ui.show_at(node_id, geometry["frame"][:2], (300, 400))
    return {"values": widget_values(ui, node_id, *FACE_BOX), "geometry": ui.page.evaluate(JS_FACE_BOX, node_id)}


def drawn_rect(geometry: dict, values, size) -> list[float]:
    """Where the preview must draw a box of `values` on an image of `size` (node-local units)."""
    frame_x, frame_y, _, _ = geometry["frame"]
    scale = geometry["scale"]
    left, top, right, bottom = (math.floor(v * s) for v, s in zip(values, (*size, *size)))
    return [frame_x + left * scale, frame_y + top * scale, (right - left) * scale, (bottom - top) * scale]


def assert_fractions(values, expected, frame_width: float, frame_height: float) -> None:
    """Within the widgets' step (0.01, rounded) plus one screen pixel of the frame."""
    tolerances = [0.005 + 1 / frame_width, 0.005 + 1 / frame_height] * 2
    misses = [(v, e) for v, e, t in zip(values, expected, tolerances) if abs(v - e) > t + 1e-9]
    assert not misses, f"face box {values}, expected {expected}"


def test_the_generator_face_box_follows_the_mouse_and_the_widgets(ui, shots):
    generator = open_bundled(ui, "flashface_one_photo.json")["FlashFace Generator"]
    drawn = face_box(ui, generator)
    geometry = drawn["geometry"]
    width, height = widget_values(ui, generator, "width", "height")
    fx, fy, fw, fh = geometry["frame"]
    assert geometry["size"] == [width, height] and geometry["editable"]
    assert fw / fh == pytest.approx(width / height, abs=0.01)
    assert geometry["box"] == pytest.approx(drawn_rect(geometry, drawn["values"], (width, height)))
    left, top, side = face_square(drawn["values"], width, height)
    assert geometry["square"] == pytest.approx(
        [fx + left * geometry["scale"], fy + top * geometry["scale"], side * geometry["scale"]]
    )

    def client(u, v):  # a point of the frame, as fractions of the image
        return ui.to_client(generator, (fx + u * fw, fy + v * fh))

    start = drawn["values"]
    bx, by, bw, bh = geometry["box"]
    centre = ui.to_client(generator, (bx + bw / 2, by + bh / 2))
    ui.drag(centre, (centre[0] + 20, centre[1] + 10))
    moved = face_box(ui, generator)["values"]
    shift = (20 / fw, 10 / fh)
    assert_fractions(
        moved, [start[0] + shift[0], start[1] + shift[1], start[2] + shift[0], start[3] + shift[1]], fw, fh
    )
    print(f"\nscreenshot: {ui.screenshot(shots / 'moved.png')}")

    corner = face_box(ui, generator)["geometry"]["box"]
    ui.drag(ui.to_client(generator, (corner[0] + corner[2], corner[1] + corner[3])), client(0.85, 0.75))
    resized = face_box(ui, generator)["values"]
    assert_fractions(resized, [moved[0], moved[1], 0.85, 0.75], fw, fh)

    ui.drag(client(0.05, 0.9), client(0.25, 0.6))  # outside the box: a new one, corners sorted
    assert_fractions(face_box(ui, generator)["values"], [0.05, 0.6, 0.25, 0.9], fw, fh)
    print(f"screenshot: {ui.screenshot(shots / 'drawn.png')}")

    ui.type_into_widget(generator, "face_x2", "0.4")
    ui.type_into_widget(generator, "face_y1", "0.3")
    typed = face_box(ui, generator)
    assert typed["values"][1] == pytest.approx(0.3) and typed["values"][2] == pytest.approx(0.4)
    assert typed["geometry"]["box"] == pytest.approx(drawn_rect(typed["geometry"], typed["values"], (width, height)))
    print(f"screenshot: {ui.screenshot(shots / 'typed.png')}")

    exported = ui.export_api()[str(generator)]["inputs"]
    assert [exported[name] for name in FACE_BOX] == pytest.approx(typed["values"])
    saved = ui.page.evaluate(JS_SERIALIZED)
    bundled = json.loads((WORKFLOWS_DIR / "flashface_one_photo.json").read_text())

    def widget_counts(workflow):
        return {node["id"]: len(node.get("widgets_values") or []) for node in workflow["nodes"]}

    assert widget_counts(saved) == widget_counts(bundled), "the preview must not be saved with the workflow"
    ui.load_workflow(saved, "flashface_one_photo_saved.json")
    reloaded = face_box(ui, generator)
    assert reloaded["values"] == typed["values"] and reloaded["geometry"]["box"] == pytest.approx(
        typed["geometry"]["box"]
    )


def test_each_person_shows_the_people_before_it(ui, shots):
    nodes = open_bundled(ui, "flashface_two_people.json")
    first, second, generator = nodes["Person 1 (left)"], nodes["Person 2 (right)"], nodes["FlashFace Generator"]
    size = face_box(ui, generator)["geometry"]["size"]
    person_one = face_box(ui, first)
    assert person_one["geometry"]["others"] == [] and person_one["geometry"]["size"] == size
    person_two = face_box(ui, second)
    print(f"\nscreenshot: {ui.screenshot(shots / 'person_2.png')}")
    (shown,) = person_two["geometry"]["others"]
    assert shown["id"] == first and shown["colour"] != "#999999"
    assert shown["box"] == pytest.approx(drawn_rect(person_two["geometry"], person_one["values"], size))
    placed_by_people = face_box(ui, generator)["geometry"]
    assert not placed_by_people["editable"] and [p["id"] for p in placed_by_people["others"]] == [first, second]

    ui.type_into_widget(first, "face_x1", "0.02")  # Person 1's box as Person 2 draws it follows
    moved = face_box(ui, second)["geometry"]
    assert moved["others"][0]["box"][0] == pytest.approx(
        moved["frame"][0] + math.floor(0.02 * size[0]) * moved["scale"]
    )


def test_the_apply_frame_is_the_latent_it_samples(ui):
    nodes = open_bundled(ui, "flashface_ksampler.json")
    apply, latent = nodes["FlashFace Apply (MODEL for KSampler)"], nodes["Empty Latent Image"]
    assert face_box(ui, apply)["geometry"]["size"] == widget_values(ui, latent, "width", "height")
    ui.set_widgets("EmptyLatentImage", width=512, height=832)
    geometry = face_box(ui, apply)["geometry"]
    assert geometry["size"] == [512, 832] and geometry["frame"][2] / geometry["frame"][3] == pytest.approx(
        512 / 832, abs=0.01
    )


JS_CREATE_REFUSING_THE_PICTURE = """(types) => {
    // a frontend that cannot take this kind of canvas widget: its addCustomWidget throws for it
    const proto = window.LiteGraph.LGraphNode.prototype;
    const own = Object.prototype.hasOwnProperty.call(proto, 'addCustomWidget');
    const saved = proto.addCustomWidget;
    proto.addCustomWidget = function (widget) {
        if (widget && widget.type === 'flashface_face_box') throw new TypeError('unknown widget kind');
        return saved.apply(this, arguments);
    };
    try {
        return types.map(type => (window.LiteGraph.createNode(type).widgets || []).map(w => w.name));
    } finally {
        if (own) proto.addCustomWidget = saved; else delete proto.addCustomWidget;
    }
}"""


def test_a_frontend_refusing_the_picture_keeps_the_plain_widgets(ui):
    """The nodes are created with all their widgets and no error (one console warning says why)."""
    placing = ["FlashFace_Generator", "FlashFace_Apply", "FlashFace_Person"]
    for names in ui.page.evaluate(JS_CREATE_REFUSING_THE_PICTURE, placing):
        assert set(FACE_BOX) <= set(names) and "face_box_preview" not in names, names
    with_picture = ui.page.evaluate(
        "(type) => window.LiteGraph.createNode(type).widgets.map(w => w.name)", "FlashFace_Person"
    )
    assert "face_box_preview" in with_picture


def test_node_search_finds_every_pack_node(ui):
    ui.phase = "search"
    found = ui.search_nodes("FlashFace")
    assert set(PACK_NODES) <= set(found), found


def test_no_console_errors_beyond_stock_comfyui_noise(ui):
    """Runs last in this module: covers start-up, every workflow load and the search."""
    errors = [f"[{e.phase}] {e.kind}: {e.text[:300]}" for e in ui.errors()]
    assert not errors, "\n".join(errors)
