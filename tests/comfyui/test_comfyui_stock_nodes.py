"""Every stock node that takes a MODEL, on FlashFace Apply's MODEL in a real server (every ComfyUI
version the tests know; the nodes that version has): it works and is shown to act (the image changes
where its widgets ask for a change and is the one without it where they ask for none; merges merge a
second, different FlashFace model), or stops with its message, as stock_model_nodes.py says, and
README.md's table says the same."""

from __future__ import annotations

import pytest
import torch

from comfy_installs import REPO_ROOT
from comfy_server import PromptRejected
from comfy_workflows import PHOTO, cheap_model_workflow, level_difference, node_id, saved_levels
from stock_model_nodes import STOCK_MODEL_NODES, readme_table
from tiny_flashface_models import CONTROLNET_UNET, TEXT_WIDTH, TINY_CONTROLNETS, TINY_HYPERNETWORK, TINY_LORA
from tiny_unet import write_tiny_unet

FILE_WIDGETS = {
    "hypernetwork_name": TINY_HYPERNETWORK,
    "control_net_name": TINY_CONTROLNETS["random"],
    "lora_name": TINY_LORA,
}
# ComfyUI's own failures, not FlashFace's: (version, node) -> what happens
OWN_FAILURES = {
    ("0.3.75", "TrainLoraNode"): "ComfyUI 0.3.75's Train LoRA fails on its own (UnboundLocalError: "
    "multi_res) before it samples"
}
UNET_FOR_WIDGET = {"control_net_name": CONTROLNET_UNET}  # the tiny ControlNet steers the width-64 UNet
SECOND_UNET = "tiny_unet_for_merges.safetensors"  # what model2 of a merge loads: another tiny UNet
# where an input of these types comes from: (node, its widgets, output index), MODEL-fed where it asks
SOURCES = {
    "SAMPLER": ("KSamplerSelect", {"sampler_name": "euler"}, 0),
    "SIGMAS": ("BasicScheduler", {"scheduler": "normal", "steps": 3, "denoise": 1.0}, 0),
    "NOISE": ("RandomNoise", {"noise_seed": 1}, 0),
    "LATENT_OPERATION": ("LatentOperationTonemapReinhard", {"multiplier": 1.0}, 0),
}


@pytest.fixture(scope="module")
def server(comfyui_tiny):
    """The session's server with a second tiny UNet (another seed) for the merges' model2."""
    write_tiny_unet(comfyui_tiny.models_dir / "flashface" / SECOND_UNET, seed=1, context_dim=TEXT_WIDTH)
    return comfyui_tiny


@pytest.fixture(scope="module")
def object_info(server) -> dict:
    return server.get("/object_info")


def _widget(name: str, spec: list):
    options = spec[0] if isinstance(spec[0], list) else (spec[1].get("options") if spec[0] == "COMBO" else None)
    extra = spec[1] if len(spec) > 1 and isinstance(spec[1], dict) else {}
    if name in FILE_WIDGETS:
        return FILE_WIDGETS[name]
    if options is not None:
        return extra.get("default", options[0] if options else None)
    return extra.get("default", "flashface_test" if spec[0] == "STRING" else 0)


class Wiring:
    """The KSampler workflow on the tiny models, with nodes added around its MODEL."""

    def __init__(self, object_info: dict):
        self.object_info = object_info
        self.prompt = cheap_model_workflow("flashface_ksampler", 64, steps=3, seed=9)
        self.sampler = self.prompt[node_id(self.prompt, "KSampler")]["inputs"]
        self.decode = self.prompt[node_id(self.prompt, "FlashFace_VAEDecode")]["inputs"]
        self.prompt["70"] = {"class_type": "LoadImage", "inputs": {"image": PHOTO}}
        self.next_id = 100

    def add(self, class_type: str, widgets: dict | None = None, links: dict | None = None) -> str:
        """Add a node: inputs in `links` linked as given, its MODEL, CONDITIONING, LATENT and IMAGE
        inputs from the workflow, inputs of SOURCES' types from new nodes, widgets from `widgets`,
        else its defaults. Raises LookupError for an input of any other type."""
        info = self.object_info[class_type]
        inputs = dict(links or {})
        optional = {key: spec for key, spec in info["input"].get("optional", {}).items() if spec[0] == "MODEL"}
        for key, spec in {**info["input"].get("required", {}), **optional}.items():
            kind = spec[0]
            if key in inputs:
                continue
            if isinstance(kind, list) or kind in ("COMBO", "INT", "FLOAT", "BOOLEAN", "STRING"):
                inputs[key] = (widgets or {}).get(key, _widget(key, spec))
                if key in UNET_FOR_WIDGET:
                    self.prompt[node_id(self.prompt, "FlashFace_LoadModel")]["inputs"]["unet_name"] = UNET_FOR_WIDGET[
                        key
                    ]
            elif kind == "MODEL":
                inputs[key] = self.second_model() if key == "model2" else self.sampler["model"]
            elif kind == "CONDITIONING":
                inputs[key] = self.sampler["negative" if "negative" in key else "positive"]
            elif kind == "LATENT":
                inputs[key] = self.sampler["latent_image"]
            elif kind == "IMAGE":
                inputs[key] = ["70", 0]
            elif kind in SOURCES:
                source, source_widgets, output = SOURCES[kind]
                inputs[key] = [self.add(source, source_widgets), output]
            else:
                raise LookupError(kind)
        self.next_id += 1
        self.prompt[str(self.next_id)] = {"class_type": class_type, "inputs": inputs}
        return str(self.next_id)

    def second_model(self) -> list:
        """A FlashFace Apply MODEL like the workflow's, on another UNet (a merge's model2)."""
        loader = self.prompt[node_id(self.prompt, "FlashFace_LoadModel")]
        apply = self.prompt[node_id(self.prompt, "FlashFace_Apply")]
        self.prompt["80"] = {
            "class_type": "FlashFace_LoadModel",
            "inputs": {**loader["inputs"], "unet_name": SECOND_UNET},
        }
        self.prompt["81"] = {
            "class_type": "FlashFace_Apply",
            "inputs": {**apply["inputs"], "flashface_model": ["80", 0]},
        }
        return ["81", 0]

    def sample_with(self, class_type: str, widgets: dict) -> str:
        """Put the node where its output goes, so that the image depends on it; the node that
        samples."""
        added = self.add(class_type, widgets)
        outputs = self.object_info[class_type]["output"]
        kind = outputs[0] if outputs else None
        if kind == "MODEL":
            self.sampler["model"] = [added, 0]
        elif kind == "LATENT":
            self.decode["samples"] = [added, 0]
            return class_type
        elif kind == "FLOAT":
            self.sampler["cfg"] = [added, 0]
        elif kind == "CONTROL_NET":
            apply = self.add(
                "ControlNetApplyAdvanced",
                {"strength": 1.0, "start_percent": 0.0, "end_percent": 1.0},
                {"control_net": [added, 0]},
            )
            self.sampler["positive"], self.sampler["negative"] = [apply, 0], [apply, 1]
        elif kind in ("GUIDER", "SIGMAS", "SAMPLER"):
            custom = "SamplerCustomAdvanced" if kind == "GUIDER" else "SamplerCustom"
            slot = {"GUIDER": "guider", "SIGMAS": "sigmas", "SAMPLER": "sampler"}[kind]
            sampler = self.add(custom, {"noise_seed": 1, "cfg": 7.5, "add_noise": True}, {slot: [added, 0]})
            self.decode["samples"] = [sampler, 0]
            return custom
        return "KSampler"


@pytest.fixture(scope="module")
def plain(server, object_info) -> torch.Tensor:
    wiring = Wiring(object_info)
    run = server.run(wiring.prompt)
    assert run.status == "success", run.error_text()
    return saved_levels(server, run, node_id(wiring.prompt, "SaveImage")).int()


@pytest.mark.parametrize("class_type", sorted(STOCK_MODEL_NODES))
def test_a_stock_node_on_a_flashface_model_works_or_says_why(server, object_info, plain, class_type):
    if class_type not in object_info:
        pytest.skip(f"ComfyUI {server.install.version} has no {class_type}")
    if (server.install.version, class_type) in OWN_FAILURES:
        pytest.skip(OWN_FAILURES[server.install.version, class_type])
    verdict = STOCK_MODEL_NODES[class_type]
    if verdict.kind == "needs":
        with pytest.raises(LookupError, match=verdict.needs):
            Wiring(object_info).add(class_type)
        return
    if verdict.kind == "refused":
        wiring = Wiring(object_info)
        sampling_node = wiring.sample_with(class_type, dict(verdict.widgets))
        run = _run(server, wiring, class_type)
        assert run.status == "error", f"{class_type} should be refused, it ran"
        assert run.error["node_type"] in (sampling_node, class_type), run.error_text()  # Train LoRA samples itself
        assert verdict.phrase in run.error["exception_message"], run.error_text()
        assert "InvalidInputError" in run.error["exception_type"], run.error_text()
        return
    assert verdict.change is not None or verdict.plain, f"{class_type}: a works row must be shown to act"
    same = _image(server, object_info, class_type, dict(verdict.same or ()))
    if verdict.plain:  # at `same` (or its defaults) it asks for nothing: the image without it
        assert (same - plain).abs().max() <= 1, f"{class_type}: {level_difference(same, plain)} from without it"
    if verdict.change is not None:  # what it asks for is applied, not dropped
        changed = _image(server, object_info, class_type, dict(verdict.change))
        against = same if verdict.same is not None else plain
        print(f"\n{class_type} {dict(verdict.change)}: {level_difference(changed, against)}")
        assert (changed - against).abs().float().mean() > 0.5, f"{class_type} changed nothing"


def _run(server, wiring: Wiring, class_type: str):
    try:
        return server.run(wiring.prompt, timeout=300)
    except PromptRejected as rejected:
        pytest.fail(f"{class_type}: prompt rejected: {rejected}")


def _image(server, object_info: dict, class_type: str, widgets: dict) -> torch.Tensor:
    """The image of the workflow with the node (at `widgets`, else its defaults) where its output goes."""
    wiring = Wiring(object_info)
    wiring.sample_with(class_type, widgets)
    run = _run(server, wiring, class_type)
    assert run.status == "success", run.error_text() or server.log_tail()
    levels = saved_levels(server, run, node_id(wiring.prompt, "SaveImage")).int()
    assert levels.float().std() > 1, f"{class_type}: a flat image"  # not black, not one colour
    return levels


def test_the_table_holds_every_stock_node_that_takes_a_model(object_info, server):
    """The newest version the tests know decides: its nodes that take a MODEL are the table's."""
    if server.install.version != "0.8.0":
        pytest.skip("the table is of ComfyUI 0.8.0")
    taking_a_model = {
        name
        for name, info in object_info.items()
        if not str(info.get("python_module", "")).startswith("comfy_api_nodes")
        and not info.get("api_node")
        and not str(info.get("python_module", "")).startswith("custom_nodes")
        and any(
            spec[0] == "MODEL"
            for spec in {**info["input"].get("required", {}), **info["input"].get("optional", {})}.values()
        )
    }
    assert taking_a_model == set(STOCK_MODEL_NODES)


def test_the_readme_table_says_what_the_tests_check():
    assert readme_table() in (REPO_ROOT / "README.md").read_text()
