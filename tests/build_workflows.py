"""Regenerate the bundled workflows in workflows/ from the specs below, with the real ComfyUI UI.

    python tests/build_workflows.py

Each graph is built node by node in the web UI of a ComfyUI test server with the newest frontend
(so the UI-format JSON is exactly what it saves, widget order included; its widgets are the tallest,
so the layout, made here in its sizes with no node over another, fits the older frontends too),
then written as

* ``workflows/<name>.json``      UI format, what the template browser lists and a user opens;
* ``workflows/<name>.jpg``       its thumbnail for the template browser (its photos and title);
* ``workflows/api/<name>.json``  API format, exported by the frontend's own ``graphToPrompt``,
                                 which the integration tests run.

The example photos in ``workflows/input/`` are made here from scikit-image's astronaut photo
(Eileen Collins, NASA: public domain); the pack copies them into ComfyUI's ``input/`` folder when
it first starts (nodes/examples.py). The browser test checks that every committed UI workflow still exports to its
committed API copy, so edit the specs and rerun this script rather than editing the JSON.
"""

from __future__ import annotations

import json
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont, ImageOps

from comfy_browser import ComfyPage
from comfy_installs import EXAMPLE_PHOTOS, REPO_ROOT, browser_installs
from comfy_server import running_server

WORKFLOWS_DIR = REPO_ROOT / "workflows"
API_DIR = WORKFLOWS_DIR / "api"
PHOTOS_DIR = EXAMPLE_PHOTOS
PHOTO = "flashface_astronaut.jpg"
PHOTO_MIRRORED = "flashface_astronaut_mirrored.jpg"
PHOTO_CLOSEUP = "flashface_astronaut_closeup.jpg"
# The official files. They are not declared in the nodes' `properties.models`: the frontend
# (1.32) then lists them as missing on every open and refuses to download anything but
# .safetensors; FlashFace Load Model downloads them itself, verified, with progress.
MODEL_FILES = {
    "unet_name": "flashface.ckpt",
    "vae_name": "sd-v1-vae.pth",
    "clip_name": "openai-clip-vit-large-14.pth",
    "detector_name": "retinaface_resnet50.pth",
}
NEGATIVE = ""
NOTE = """## FlashFace: {title}

{what}

1. Queue. **FlashFace Load Model** downloads the four official files (12 GB, verified, resumable) into
   `ComfyUI/models/flashface/` on the first run, unless they are already there: `flashface.ckpt`,
   `sd-v1-vae.pth`, `openai-clip-vit-large-14.pth`, `retinaface_resnet50.pth`.
2. The example photos are in ComfyUI's input folder: FlashFace put them there when it first started.
   Load your own photos of one person in the Load Image nodes.
3. The green box in the face preview shows which face is used."""


def make_example_photos(folder: Path = PHOTOS_DIR) -> None:
    """Three photos of one person: the astronaut, mirrored, and a closer crop of another size."""
    from skimage.data import astronaut

    folder.mkdir(parents=True, exist_ok=True)
    photo = Image.fromarray(astronaut())
    for name, image in (
        (PHOTO, photo),
        (PHOTO_MIRRORED, ImageOps.mirror(photo)),
        (PHOTO_CLOSEUP, photo.crop((96, 0, 416, 373)).resize((384, 448), Image.Resampling.LANCZOS)),
    ):
        image.save(folder / name, quality=90)


def _model_loader(pos):
    return dict(key="model", type="FlashFace_LoadModel", pos=pos, widgets={**MODEL_FILES, "weight_dtype": "auto"})


def _faces_and_prompts(note: str, prompt: str) -> tuple[list, list]:
    """What every workflow has: a note, Load Model, Detect Face with its preview, the two prompts."""
    nodes = [
        dict(key="note", type="MarkdownNote", pos=[20, -330], size=[640, 300], widgets={"text": note}),
        _model_loader([20, 20]),
        dict(
            key="detect",
            type="FlashFace_DetectFace",
            pos=[760, 20],
            widgets={"threshold": 0.6, "several_faces": "largest"},
        ),
        dict(key="preview", type="PreviewImage", pos=[760, 260], size=[300, 300], title="Detected faces"),
        dict(
            key="positive",
            type="FlashFace_CLIPTextEncode",
            pos=[380, 620],
            size=[360, 180],
            title="Positive prompt",
            widgets={"text": prompt},
        ),
        dict(
            key="negative",
            type="FlashFace_CLIPTextEncode",
            pos=[380, 840],
            size=[360, 150],
            title="Negative prompt",
            widgets={"text": NEGATIVE},
        ),
    ]
    links = [("model", "flashface_model", user, "flashface_model") for user in ("detect", "positive", "negative")]
    links.append(("detect", "preview", "preview", "images"))
    return nodes, links


def _spec(title: str, what: str, prompt: str, generator_widgets: dict | None = None, one_photo: bool = True) -> dict:
    """The common nodes, Generator, Save Image, and (with `one_photo`) the example photo as the reference."""
    nodes, links = _faces_and_prompts(NOTE.format(title=title, what=what), prompt)
    nodes += [
        dict(
            key="generator",
            type="FlashFace_Generator",
            pos=[1100, 20],
            widgets={"seed": 42, "control_after_generate": "fixed", **(generator_widgets or {})},
        ),
        dict(key="save", type="SaveImage", pos=[1480, 20], size=[420, 460], widgets={"filename_prefix": "FlashFace"}),
    ]
    links += [
        ("model", "flashface_model", "generator", "flashface_model"),
        ("detect", "faces", "generator", "reference_faces"),
        ("positive", "conditioning", "generator", "positive"),
        ("negative", "conditioning", "generator", "negative"),
        ("generator", "images", "save", "images"),
    ]
    if one_photo:
        nodes.append(_photo("photo", PHOTO, [20, 240]))
        links.append(("photo", "IMAGE", "detect", "images"))
    return dict(title=title, nodes=nodes, links=links)


KSAMPLER_NOTE_STEPS = """\
1. Queue. **FlashFace Load Model** downloads the four official files (12 GB, verified, resumable) into
   `ComfyUI/models/flashface/` on the first run, unless they are already there.
2. **FlashFace Apply** turns the FlashFace UNet into a MODEL with the reference faces: any sampler and
   scheduler of KSampler work; KSampler's cfg is the text guidance. Connect the CLIP Text Encode
   nodes' CONDITIONING outputs (positive to positive, negative to negative and to Apply).
3. For the exact official run use the Generator, or SamplerCustom with FlashFace Sigmas and ddim."""


def _model_spec(
    title: str, what: str, prompt: str, ksampler: dict, latent_nodes: list, latent_link, latent_links: Sequence = ()
) -> dict:
    """The common nodes, the example photo, FlashFace Apply, KSampler, FlashFace VAE Decode, Save
    Image; `latent_nodes` (linked by `latent_links`) make the KSampler's latent (`latent_link` =
    (key, output))."""
    nodes, links = _faces_and_prompts(f"## FlashFace: {title}\n\n{what}\n\n{KSAMPLER_NOTE_STEPS}", prompt)
    nodes += [
        _photo("photo", PHOTO, [20, 240]),
        dict(key="apply", type="FlashFace_Apply", pos=[1100, 20]),
        dict(
            key="ksampler",
            type="KSampler",
            pos=[1480, 20],
            widgets={"seed": 42, "control_after_generate": "fixed", **ksampler},
        ),
        dict(key="decode", type="FlashFace_VAEDecode", pos=[1860, 20]),
        dict(key="save", type="SaveImage", pos=[1860, 160], size=[420, 460], widgets={"filename_prefix": "FlashFace"}),
        *latent_nodes,
    ]
    links += [
        ("model", "flashface_model", "apply", "flashface_model"),
        ("model", "flashface_model", "decode", "flashface_model"),
        ("photo", "IMAGE", "detect", "images"),
        ("detect", "faces", "apply", "reference_faces"),
        ("negative", "negative", "apply", "negative"),
        ("apply", "model", "ksampler", "model"),
        ("positive", "positive", "ksampler", "positive"),
        ("negative", "negative", "ksampler", "negative"),
        (*latent_link, "ksampler", "latent_image"),
        ("ksampler", "LATENT", "decode", "samples"),
        ("decode", "images", "save", "images"),
        *latent_links,
    ]
    return dict(title=title, nodes=nodes, links=links)


EXAMPLE_LORA = "your_sd15_lora.safetensors"  # placeholders: the user picks a file of theirs
EXAMPLE_CHECKPOINT = "your_sd15_checkpoint.safetensors"
SD15_BASE = "v1-5-pruned-emaonly.safetensors"
EXAMPLE_CONTROLNET = "control_v11p_sd15_canny.pth"


MODEL_PROMPT = "A woman astronaut smiling, portrait, on the street in the night, soft light"


def _empty_latent() -> dict:
    return dict(
        key="latent", type="EmptyLatentImage", pos=[1100, 520], widgets={"width": 768, "height": 768, "batch_size": 1}
    )


def _photo(key: str, name: str, pos) -> dict:
    return dict(key=key, type="LoadImage", pos=pos, size=[320, 360], widgets={"image": name})


def workflow_specs() -> dict[str, dict]:
    specs = {
        "flashface_one_photo": _spec(
            "one reference photo",
            "The simplest graph: one photo of a person and a prompt.",
            "A woman astronaut smiling, portrait, on the street in the night, soft light",
        )
    }

    several = specs["flashface_several_photos"] = _spec(
        "several reference photos",
        "More photos of the same person give a steadier likeness (the authors use four). Each photo goes to its "
        "own input of Detect Face, whatever its size (an input also takes a batch or a list of photos).",
        "A woman with short brown hair in a red dress, sitting in a cafe, warm light",
        one_photo=False,
    )
    several["nodes"] += [
        _photo("photo_a", PHOTO, [20, 240]),
        _photo("photo_b", PHOTO_MIRRORED, [20, 640]),
        _photo("photo_c", PHOTO_CLOSEUP, [20, 1040]),
    ]
    several["links"] += [
        ("photo_a", "IMAGE", "detect", "images"),
        ("photo_b", "IMAGE", "detect", "images_2"),
        ("photo_c", "IMAGE", "detect", "images_3"),
    ]

    specs["flashface_age_change"] = _spec(
        "age change preset",
        "The age_change preset (text guidance 8.5, reference feature strength 0.9, reference guidance 2.5) "
        "gives the prompt room to change the age while keeping the identity.",
        "An old woman with grey hair and wrinkles, portrait, in a garden, soft light",
        {"preset": "age_change"},
    )

    masked = specs["flashface_face_mask"] = _spec(
        "face position from a mask",
        "A mask says where the face goes (white = face); it replaces the face box. Here a white square on the "
        "right of a black 768x768 mask; a painted mask from Load Image works the same.",
        "A woman astronaut standing on the left of a busy market, full body, daylight",
    )
    masked["nodes"] += [
        dict(key="canvas", type="SolidMask", pos=[20, 1040], widgets={"value": 0.0, "width": 768, "height": 768}),
        dict(key="square", type="SolidMask", pos=[20, 1200], widgets={"value": 1.0, "width": 224, "height": 224}),
        dict(key="mask", type="MaskComposite", pos=[380, 1040], widgets={"x": 448, "y": 96, "operation": "add"}),
    ]
    masked["links"] += [
        ("canvas", "MASK", "mask", "destination"),
        ("square", "MASK", "mask", "source"),
        ("mask", "MASK", "generator", "face_mask"),
    ]

    own = specs["flashface_own_checkpoint"] = _spec(
        "your own SD1.5 checkpoint (experimental)",
        "FlashFace Graft Checkpoint adds what your SD1.5 checkpoint changed from SD1.5 to FlashFace's UNet (add "
        "difference, as ControlNet and inpainting models are moved between fine-tunes), so the picture takes your "
        "checkpoint's look while the network that reads the faces stays FlashFace's. Put your checkpoint and the "
        "SD1.5 it was trained from (usually v1-5-pruned-emaonly) in `ComfyUI/models/checkpoints` and pick them. "
        "Lower `strength` if the likeness weakens. Experimental: nobody has published images of this yet.",
        "A woman astronaut smiling, portrait, on the street in the night, soft light",
    )
    own["nodes"].append(
        dict(
            key="graft",
            type="FlashFace_GraftCheckpoint",
            pos=[380, 300],
            widgets={"checkpoint": EXAMPLE_CHECKPOINT, "base_checkpoint": SD15_BASE, "strength": 1.0},
        )
    )
    own["links"].remove(("model", "flashface_model", "generator", "flashface_model"))
    own["links"] += [
        ("model", "flashface_model", "graft", "flashface_model"),
        ("graft", "flashface_model", "generator", "flashface_model"),
    ]

    sampler = {"steps": 30, "cfg": 7.5, "sampler_name": "dpmpp_2m", "scheduler": "karras"}
    specs["flashface_ksampler"] = _model_spec(
        "KSampler with FlashFace Apply",
        "FlashFace as a MODEL: any KSampler sampler and scheduler, here dpmpp_2m with karras. An empty latent sets "
        "the size.",
        MODEL_PROMPT,
        {**sampler, "denoise": 1.0},
        [_empty_latent()],
        ("latent", "LATENT"),
    )
    lora = specs["flashface_lora"] = _model_spec(
        "an SD1.5 LoRA on FlashFace",
        "FlashFace Apply's MODEL takes ComfyUI's stock LoRA loaders: LoraLoaderModelOnly patches the FlashFace UNet "
        "with any SD1.5 LoRA or LoCon (kohya, diffusers/PEFT or LDM naming), here a style LoRA; put the file in "
        "`ComfyUI/models/loras` and pick it. The LoRA patches the UNet's main path (as on SD1.5); the reference "
        "network that reads the faces and FlashFace's reference attention are left as trained, so the identity "
        "stays. A LoRA's text-encoder part is not used (FlashFace's text encoder is its own).",
        MODEL_PROMPT,
        {**sampler, "denoise": 1.0},
        [
            _empty_latent(),
            dict(
                key="lora",
                type="LoraLoaderModelOnly",
                pos=[1100, 720],
                widgets={"lora_name": EXAMPLE_LORA, "strength_model": 0.8},
            ),
        ],
        ("latent", "LATENT"),
    )
    lora["links"].remove(("apply", "model", "ksampler", "model"))
    lora["links"] += [("apply", "model", "lora", "model"), ("lora", "MODEL", "ksampler", "model")]
    control = specs["flashface_controlnet"] = _model_spec(
        "ControlNet: the pose of a photo",
        "FlashFace Apply's MODEL takes ComfyUI's stock ControlNets for SD1.5: here the edges of a photo (Canny) "
        "steer the layout while the reference faces give the identity. Put an SD1.5 ControlNet (e.g. "
        "control_v11p_sd15_canny) in `ComfyUI/models/controlnet` and pick it. Apply ControlNet's positive and "
        "negative go to KSampler; FlashFace Apply keeps the plain negative.",
        MODEL_PROMPT,
        {**sampler, "denoise": 1.0},
        [
            _empty_latent(),
            _photo("pose", PHOTO_MIRRORED, [20, 1040]),
            dict(key="canny", type="Canny", pos=[380, 1040], widgets={"low_threshold": 0.4, "high_threshold": 0.8}),
            dict(
                key="controlnet",
                type="ControlNetLoader",
                pos=[380, 1240],
                widgets={"control_net_name": EXAMPLE_CONTROLNET},
            ),
            dict(
                key="control",
                type="ControlNetApplyAdvanced",
                pos=[1100, 760],
                widgets={"strength": 0.8, "start_percent": 0.0, "end_percent": 0.8},
            ),
        ],
        ("latent", "LATENT"),
    )
    control["links"].remove(("positive", "positive", "ksampler", "positive"))
    control["links"].remove(("negative", "negative", "ksampler", "negative"))
    control["links"] += [
        ("pose", "IMAGE", "canny", "image"),
        ("canny", "IMAGE", "control", "image"),
        ("controlnet", "CONTROL_NET", "control", "control_net"),
        ("positive", "positive", "control", "positive"),
        ("negative", "negative", "control", "negative"),
        ("control", "positive", "ksampler", "positive"),
        ("control", "negative", "ksampler", "negative"),
    ]
    fix = specs["flashface_face_fix"] = _model_spec(
        "face fix: redraw the face of a picture",
        "Redraws only the face of any picture (a photo, an image from another SD1.5 model) with the reference "
        "identity: a second Detect Face finds the face in the picture; its mask, grown a little, tells FlashFace Apply "
        "where the face is and limits the redraw (Set Latent Noise Mask) and the paste-back (ImageCompositeMasked). "
        "Denoise 0.55 keeps the pose and light; raise it for a stronger likeness. A batch or a list of pictures is "
        "fixed picture by picture (the second Detect Face hands each picture on with its own mask). Pictures up to "
        "about 1024 px work whole; for larger ones use Impact Pack's FaceDetailer (see the README).",
        "A woman astronaut, portrait photo, detailed face, soft light",
        {**sampler, "denoise": 0.55},
        [
            _photo("picture", PHOTO_CLOSEUP, [1100, 520]),
            dict(
                key="find",
                type="FlashFace_DetectFace",
                pos=[1100, 920],
                title="Face in the picture",
                widgets={"threshold": 0.6, "several_faces": "largest"},
            ),
            dict(key="grow", type="GrowMask", pos=[1480, 520], widgets={"expand": 24, "tapered_corners": True}),
            dict(key="encode", type="FlashFace_VAEEncode", pos=[1480, 680]),
            dict(key="noise_mask", type="SetLatentNoiseMask", pos=[1480, 820]),
            dict(
                key="paste",
                type="ImageCompositeMasked",
                pos=[2240, 20],
                widgets={"x": 0, "y": 0, "resize_source": False},
            ),
        ],
        ("noise_mask", "LATENT"),
        [
            ("model", "flashface_model", "find", "flashface_model"),
            ("picture", "IMAGE", "find", "images"),
            ("find", "face_masks", "grow", "mask"),
            ("grow", "MASK", "apply", "face_mask"),
            ("model", "flashface_model", "encode", "flashface_model"),
            ("find", "photos", "encode", "pixels"),  # each picture of a batch with its own face mask
            ("encode", "latent", "noise_mask", "samples"),
            ("grow", "MASK", "noise_mask", "mask"),
            ("find", "photos", "paste", "destination"),
            ("decode", "images", "paste", "source"),
            ("grow", "MASK", "paste", "mask"),
        ],
    )
    fix["links"].remove(("decode", "images", "save", "images"))
    fix["links"].append(("paste", "IMAGE", "save", "images"))
    specs["flashface_img2img"] = _model_spec(
        "img2img from a photo",
        "A photo encoded with FlashFace VAE Encode is the start of KSampler; denoise 0.6 keeps its layout and colours "
        "and repaints the rest with the reference identity.",
        "A woman astronaut, oil painting, thick brush strokes",
        {**sampler, "denoise": 0.6},
        [_photo("start", PHOTO, [1100, 520]), dict(key="encode", type="FlashFace_VAEEncode", pos=[1100, 920])],
        ("encode", "latent"),
        [("model", "flashface_model", "encode", "flashface_model"), ("start", "IMAGE", "encode", "pixels")],
    )
    two = specs["flashface_two_people"] = _spec(
        "two people in one picture (experimental)",
        "Each FlashFace Person node holds one person's faces and face box; chained, they go to the Generator's "
        "people input (its own face box is then not used). Each part of the picture takes the likeness of the "
        "person whose face box is nearest; a mask on a Person node marks that person's part instead. "
        "Experimental: the published FlashFace weights were trained with one person per image, so likenesses may "
        "blend. Here the example photo and its mirror image stand for two people: load a photo of each person.",
        "Two women astronauts standing side by side, smiling, portrait, on a street at night, soft light",
        {"width": 768, "height": 512},
        one_photo=False,
    )
    two["nodes"] += [
        _photo("photo_a", PHOTO, [20, 240]),
        _photo("photo_b", PHOTO_MIRRORED, [20, 640]),
        dict(
            key="detect_b",
            type="FlashFace_DetectFace",
            pos=[760, 600],
            title="FlashFace Detect Face (person 2)",
            widgets={"threshold": 0.6, "several_faces": "largest"},
        ),
        dict(key="preview_b", type="PreviewImage", pos=[760, 840], size=[300, 300], title="Detected faces (person 2)"),
        dict(
            key="person_a",
            type="FlashFace_Person",
            pos=[1100, 620],
            title="Person 1 (left)",
            widgets={"face_x1": 0.12, "face_y1": 0.15, "face_x2": 0.37, "face_y2": 0.52},
        ),
        dict(
            key="person_b",
            type="FlashFace_Person",
            pos=[1100, 900],
            title="Person 2 (right)",
            widgets={"face_x1": 0.63, "face_y1": 0.15, "face_x2": 0.88, "face_y2": 0.52},
        ),
    ]
    two["links"].remove(("detect", "faces", "generator", "reference_faces"))
    two["links"] += [
        ("photo_a", "IMAGE", "detect", "images"),
        ("photo_b", "IMAGE", "detect_b", "images"),
        ("model", "flashface_model", "detect_b", "flashface_model"),
        ("detect_b", "preview", "preview_b", "images"),
        ("detect", "faces", "person_a", "reference_faces"),
        ("detect_b", "faces", "person_b", "reference_faces"),
        ("person_a", "people", "person_b", "people"),
        ("person_b", "people", "generator", "people"),
    ]
    two["nodes"][0]["widgets"]["text"] = two["nodes"][0]["widgets"]["text"].replace(
        "Load your own photos of one person in the Load Image nodes.",
        "Load photos of each person in their Load Image node (one person per Detect Face).",
    )
    return specs


JS_BUILD = """async (spec) => {
    const graph = window.app.graph;
    graph.clear();
    const byKey = {};
    for (const n of spec.nodes) {
        const node = LiteGraph.createNode(n.type);
        if (!node) throw new Error('unknown node type ' + n.type);
        node.pos = n.pos;
        if (n.title) node.title = n.title;
        graph.add(node);
        for (const [name, value] of Object.entries(n.widgets || {})) {
            const widget = (node.widgets || []).find(w => w.name === name);
            if (!widget) throw new Error(n.type + ' has no widget ' + name);
            widget.value = value;
        }
        const needed = node.computeSize();
        const size = n.size || node.size;
        node.setSize([Math.max(size[0], needed[0]), Math.max(size[1], needed[1])]);
        byKey[n.key] = node;
    }
    // Columns by the specs' x, each as wide as its widest node, nodes stacked in the specs' order of
    // y with no overlap (title bars included), in this frontend's sizes; notes stay where placed.
    const title = LiteGraph.NODE_TITLE_HEIGHT, gap = 30;
    const laid = spec.nodes.filter(n => !n.type.endsWith('Note')).map(n => byKey[n.key]);
    const columns = [...new Set(laid.map(node => node.pos[0]))].sort((a, b) => a - b);
    let left = columns[0];
    for (const column of columns) {
        const members = laid.filter(node => node.pos[0] === column).sort((a, b) => a.pos[1] - b.pos[1]);
        let bottom = -Infinity;
        for (const node of members) {
            const top = Math.max(node.pos[1], bottom + gap + title);
            node.pos = [left, top];
            bottom = top + node.size[1];
        }
        left += Math.max(...members.map(node => node.size[0])) + gap;
    }
    for (const [from, output, to, input] of spec.links) {
        const a = byKey[from], b = byKey[to];
        const out = a.findOutputSlot(output), inp = b.findInputSlot(input);
        if (out < 0 || inp < 0) throw new Error(`no slot ${from}.${output} -> ${to}.${input}`);
        a.connect(out, b, inp);
    }
    window.app.canvas.ds.offset = [40, 380];
    window.app.canvas.ds.scale = 0.8;
    window.app.graph.setDirtyCanvas(true, true);
    return {ui: graph.serialize(), api: (await window.app.graphToPrompt()).output};
}"""


def make_thumbnail(spec: dict, size=(480, 300)) -> Image.Image:
    """The workflow's reference photos side by side, its title below."""
    thumbnail = Image.new("RGB", size, (32, 32, 36))
    photos = [Image.open(PHOTOS_DIR / n["widgets"]["image"]) for n in spec["nodes"] if n["type"] == "LoadImage"]
    slot = (size[0] - 20) // len(photos)
    for index, photo in enumerate(photos):
        photo = ImageOps.contain(photo, (slot - 10, size[1] - 80))
        thumbnail.paste(photo, (10 + index * slot + (slot - photo.width) // 2, 12))
    draw = ImageDraw.Draw(thumbnail)
    draw.text((14, size[1] - 58), "FlashFace", fill=(255, 196, 0), font=ImageFont.load_default(22))
    draw.text((14, size[1] - 30), spec["title"], fill=(235, 235, 235), font=ImageFont.load_default(18))
    return thumbnail


def without_nulls(value):
    """The frontend serializes every unset slot property as null; drop them for readable files."""
    if isinstance(value, dict):
        return {k: without_nulls(v) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return [without_nulls(v) for v in value]
    return value


def write_json(path: Path, data) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n")


def main() -> int:
    make_example_photos()
    API_DIR.mkdir(parents=True, exist_ok=True)
    newest = browser_installs()[-1]  # built where widgets are tallest: older frontends then fit too
    if newest.missing:
        print(f"cannot build: {newest.missing}", file=sys.stderr)
        return 1
    with (
        tempfile.TemporaryDirectory(prefix="flashface-build-") as workdir,
        running_server(Path(workdir), newest) as server,
        ComfyPage(server) as ui,
    ):
        for name, spec in workflow_specs().items():
            built = ui.page.evaluate(JS_BUILD, spec)
            ui.page.wait_for_timeout(800)
            write_json(WORKFLOWS_DIR / f"{name}.json", without_nulls(built["ui"]))
            write_json(API_DIR / f"{name}.json", built["api"])
            make_thumbnail(spec).save(WORKFLOWS_DIR / f"{name}.jpg", quality=85)
            print(f"wrote {name}: {len(built['ui']['nodes'])} nodes, {len(built['api'])} API nodes")
        errors = ui.errors()
    for event in errors:
        print(f"console error while building ({event.phase}): {event.text[:300]}", file=sys.stderr)
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
