"""Your own SD1.5 checkpoint on FlashFace in a real server (every ComfyUI version the tests know): the
bundled `flashface_own_checkpoint` workflow draws the image of the UNet grafted by hand, strength 0
draws today's image, FlashFace Apply + KSampler take the grafted model, and the stock route (Load
Diffusion Model twice, ModelMergeSubtract, ModelMergeAdd onto Apply's MODEL) draws what the node
draws. The tiny SD1.5 checkpoints are in models/checkpoints (`write_tiny_sd15_checkpoints`)."""

from __future__ import annotations

import pytest
import torch

from comfy_workflows import api_workflow, cheap_model_workflow, level_difference, node_id, run_to_levels, set_inputs
from flashface.models.unet_loading import official_key
from seeded_weights import save_state_dict
from tiny_flashface_models import TEXT_WIDTH, TINY_SD15, tiny_sd15_pair
from tiny_sd15 import write_sd15
from tiny_unet import tiny_unet_state_dict

STRENGTH = 0.8
HAND_GRAFTED = "tiny_unet_grafted_by_hand.safetensors"


@pytest.fixture(scope="module")
def server(comfyui_tiny):
    """The session's server with the tiny UNet grafted by hand in models/flashface, and the tiny SD1.5
    pair as UNet-only files in models/unet (for Load Diffusion Model)."""
    custom, base = tiny_sd15_pair()
    published = tiny_unet_state_dict(0, context_dim=TEXT_WIDTH)
    for key in custom:  # by hand: W + s * (custom - base), each aliased copy alike
        file_key = official_key(key)
        for name in (file_key, "ori_" + file_key):
            if name in published:
                latent = (slice(None), slice(0, custom[key].shape[1])) if custom[key].dim() > 1 else (slice(None),)
                published[name][latent] += STRENGTH * (custom[key] - base[key])
    save_state_dict(published, comfyui_tiny.models_dir / "flashface" / HAND_GRAFTED, {"num_heads": "8"})
    for name, unet in zip(TINY_SD15.values(), (custom, base)):
        write_sd15(comfyui_tiny.models_dir / "unet" / name, unet, prefix="")  # as Load Diffusion Model reads them
    return comfyui_tiny


def own_checkpoint_prompt(strength: float = STRENGTH) -> dict:
    prompt = api_workflow("flashface_own_checkpoint")
    set_inputs(prompt, "FlashFace_GraftCheckpoint", strength=strength)
    return set_inputs(prompt, "FlashFace_Generator", steps=3, width=64, height=64, seed=4)


def without_graft(prompt: dict, unet_name: str | None = None) -> dict:
    """`prompt` with its Graft Checkpoint taken out (its users take Load Model's output), on `unet_name`."""
    graft = node_id(prompt, "FlashFace_GraftCheckpoint")
    loader = prompt[graft]["inputs"]["flashface_model"]
    del prompt[graft]
    for node in prompt.values():
        node["inputs"].update({k: loader for k, v in node["inputs"].items() if v == [graft, 0]})
    if unet_name is not None:
        set_inputs(prompt, "FlashFace_LoadModel", unet_name=unet_name)
    return prompt


def test_the_bundled_workflow_draws_the_image_of_the_unet_grafted_by_hand(server):
    grafted = run_to_levels(server, own_checkpoint_prompt())
    by_hand = run_to_levels(server, without_graft(own_checkpoint_prompt(), HAND_GRAFTED))
    plain = run_to_levels(server, without_graft(own_checkpoint_prompt()))
    print(f"\nGraft node vs by hand: {level_difference(grafted, by_hand)}")
    print(f"Graft node vs FlashFace alone: {level_difference(grafted, plain)}")
    assert torch.equal(grafted, by_hand)
    assert (grafted - plain).abs().float().mean() > 1  # the graft is not ignored
    assert torch.equal(run_to_levels(server, own_checkpoint_prompt(0.0)), plain)


def model_path_prompt(graft: bool) -> dict:
    """The bundled KSampler workflow, FlashFace Apply taking a grafted model where `graft`."""
    prompt = cheap_model_workflow("flashface_ksampler", 64, steps=3, seed=6)
    if graft:
        apply = node_id(prompt, "FlashFace_Apply")
        prompt["70"] = {
            "class_type": "FlashFace_GraftCheckpoint",
            "inputs": {
                "flashface_model": prompt[apply]["inputs"]["flashface_model"],
                **TINY_SD15,
                "strength": STRENGTH,
            },
        }
        prompt[apply]["inputs"]["flashface_model"] = ["70", 0]
    return prompt


def test_apply_takes_the_grafted_model_and_the_stock_merge_route_draws_the_same(server):
    """Load Diffusion Model (the fine-tune and its base) -> ModelMergeSubtract (multiplier = strength)
    -> ModelMergeAdd with FlashFace Apply's MODEL as model1: ComfyUI's own merge of the same
    difference, against the Graft node on Apply's input."""
    node = run_to_levels(server, model_path_prompt(graft=True))
    plain_prompt = model_path_prompt(graft=False)
    plain = run_to_levels(server, plain_prompt)
    sampler = plain_prompt[node_id(plain_prompt, "KSampler")]["inputs"]
    plain_prompt.update(
        {
            "71": {
                "class_type": "UNETLoader",
                "inputs": {"unet_name": TINY_SD15["checkpoint"], "weight_dtype": "default"},
            },
            "72": {
                "class_type": "UNETLoader",
                "inputs": {"unet_name": TINY_SD15["base_checkpoint"], "weight_dtype": "default"},
            },
            "73": {
                "class_type": "ModelMergeSubtract",
                "inputs": {"model1": ["71", 0], "model2": ["72", 0], "multiplier": STRENGTH},
            },
            "74": {"class_type": "ModelMergeAdd", "inputs": {"model1": sampler["model"], "model2": ["73", 0]}},
        }
    )
    sampler["model"] = ["74", 0]
    stock = run_to_levels(server, plain_prompt)
    print(f"\nstock merge route vs Graft node: {level_difference(stock, node)}")
    print(f"Graft node vs FlashFace alone: {level_difference(node, plain)}")
    assert (stock - node).abs().max() <= 1  # ComfyUI computes s*custom - s*base, the node s*(custom - base)
    assert (node - plain).abs().float().mean() > 1
