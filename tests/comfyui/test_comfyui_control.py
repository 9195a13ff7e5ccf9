"""Stock nodes that add to the UNet's blocks, on FlashFace Apply's MODEL in a real server (every
ComfyUI version the tests know): ControlNet through ComfyUI's own ControlNetLoader and Apply
ControlNet (Advanced), FreeU and PatchModelAddDownscale; attention patches are refused by name."""

from __future__ import annotations

import pytest
import torch

from comfy_workflows import (
    PHOTO,
    cheap_model_workflow,
    expect_node_error,
    level_difference,
    node_id,
    run_to_levels,
    with_model_node,
)
from tiny_flashface_models import ADAPTER_UNET, CONTROLNET_UNET, TINY_CONTROLNETS, TINY_MODELS, TINY_T2I_ADAPTERS


@pytest.fixture(scope="module")
def server(comfyui_tiny):
    return comfyui_tiny


def prompt_with(*controlnets: tuple[str, float, float, float], unet: str = CONTROLNET_UNET) -> dict:
    """The bundled KSampler workflow on the tiny models with `unet`, and each (ControlNet file,
    strength, start, end) applied in a chain by Apply ControlNet (Advanced) to the sampler's
    positive and negative, the example photo as the hint."""
    prompt = cheap_model_workflow("flashface_ksampler", 64, steps=3, seed=9)
    prompt[node_id(prompt, "FlashFace_LoadModel")]["inputs"]["unet_name"] = unet
    sampler = prompt[node_id(prompt, "KSampler")]["inputs"]
    prompt["70"] = {"class_type": "LoadImage", "inputs": {"image": PHOTO}}
    for number, (name, strength, start, end) in enumerate(controlnets):
        loader, apply = str(71 + 2 * number), str(72 + 2 * number)
        prompt[loader] = {"class_type": "ControlNetLoader", "inputs": {"control_net_name": name}}
        prompt[apply] = {
            "class_type": "ControlNetApplyAdvanced",
            "inputs": {
                "positive": sampler["positive"],
                "negative": sampler["negative"],
                "control_net": [loader, 0],
                "image": ["70", 0],
                "strength": strength,
                "start_percent": start,
                "end_percent": end,
            },
        }
        sampler["positive"], sampler["negative"] = [apply, 0], [apply, 1]
    return prompt


@pytest.fixture(scope="module")
def plain(server) -> torch.Tensor:
    return run_to_levels(server, prompt_with())


def test_a_controlnet_with_zero_output_convolutions_changes_nothing(server, plain):
    zero = run_to_levels(server, prompt_with((TINY_CONTROLNETS["zero"], 1.0, 0.0, 1.0)))
    print(f"\nzero ControlNet vs none: {level_difference(zero, plain)}")
    assert (zero - plain).abs().max() <= 1  # rows are computed one by one with control: fp32 rounding only


def test_a_controlnet_steers_the_image_within_its_steps_and_strength(server, plain):
    steered = run_to_levels(server, prompt_with((TINY_CONTROLNETS["random"], 1.0, 0.0, 1.0)))
    weaker = run_to_levels(server, prompt_with((TINY_CONTROLNETS["random"], 0.3, 0.0, 1.0)))
    never = run_to_levels(server, prompt_with((TINY_CONTROLNETS["random"], 1.0, 1.0, 1.0)))  # its window holds no step
    half = (TINY_CONTROLNETS["random"], 0.5, 0.0, 1.0)
    chained = run_to_levels(server, prompt_with(half, half))
    print(
        f"\nControlNet vs none: {level_difference(steered, plain)}; strength 0.3: {level_difference(weaker, plain)}; "
        f"two chained at 0.5: {level_difference(chained, plain)} "
        f"(vs one at 1.0: {level_difference(chained, steered)}); "
        f"empty window: {level_difference(never, plain)}"
    )
    assert (steered - plain).abs().float().mean() > 2
    assert (weaker - plain).abs().float().mean() < (steered - plain).abs().float().mean()
    assert (never - plain).abs().max() <= 1
    # two ControlNets at half strength add the same residuals as one at full strength
    assert (chained - steered).abs().max() <= 1


def test_a_t2i_adapter_steers_the_image_at_its_four_levels(server):
    """ComfyUI's T2I-Adapter gives residuals after input blocks 2, 5, 8 and 11 of SD1.5's layout
    (ControlNetLoader loads it; one hint image serves every row of every step, also once the
    third branch joins)."""
    plain = run_to_levels(server, prompt_with(unet=ADAPTER_UNET))
    zero = run_to_levels(server, prompt_with((TINY_T2I_ADAPTERS["zero"], 1.0, 0.0, 1.0), unet=ADAPTER_UNET))
    steered = run_to_levels(server, prompt_with((TINY_T2I_ADAPTERS["random"], 1.0, 0.0, 1.0), unet=ADAPTER_UNET))
    weaker = run_to_levels(server, prompt_with((TINY_T2I_ADAPTERS["random"], 0.3, 0.0, 1.0), unet=ADAPTER_UNET))
    print(
        f"\nT2I-Adapter vs none: {level_difference(steered, plain)}; strength 0.3: "
        f"{level_difference(weaker, plain)}; all-zero adapter: {level_difference(zero, plain)}"
    )
    assert (zero - plain).abs().max() <= 1
    assert (steered - plain).abs().float().mean() > 2
    assert 0 < (weaker - plain).abs().float().mean() < (steered - plain).abs().float().mean()


def test_freeu_and_downscale_patches_are_applied(server, plain):
    freeu = run_to_levels(server, with_model_node(prompt_with(), "FreeU_V2", b1=1.3, b2=1.4, s1=0.9, s2=0.2))
    downscaled = run_to_levels(
        server,
        with_model_node(
            prompt_with(),
            "PatchModelAddDownscale",
            block_number=1,
            downscale_factor=2.0,
            start_percent=0.0,
            end_percent=1.0,
            downscale_after_skip=True,
            downscale_method="bicubic",
            upscale_method="bicubic",
        ),
    )
    print(
        f"\nFreeU_V2 vs none: {level_difference(freeu, plain)}; "
        f"PatchModelAddDownscale vs none: {level_difference(downscaled, plain)}"
    )
    assert (freeu - plain).abs().float().mean() > 1
    assert (downscaled - plain).abs().float().mean() > 1


@pytest.mark.parametrize(
    ("node", "widgets", "named"),
    [
        ("SelfAttentionGuidance", {"scale": 0.5, "blur_sigma": 2.0}, "Self-Attention Guidance"),
        # PAG's attention replacement lives in its post-CFG function: that is what is refused first
        ("PerturbedAttentionGuidance", {"scale": 3.0}, "Perturbed-Attention Guidance"),
    ],
)
def test_an_attention_patch_is_refused_by_name_not_ignored(server, node, widgets, named):
    expect_node_error(server, with_model_node(prompt_with(), node, **widgets), "KSampler", named, "remove that node")


def test_a_cfg_function_is_refused_by_name_not_ignored(server):
    expect_node_error(
        server,
        with_model_node(prompt_with(), "RescaleCFG", multiplier=0.7),
        "KSampler",
        "CFG function",
        "RescaleCFG",
        "remove that node",
    )


def test_another_pre_cfg_function_is_refused_by_name_not_ignored(server):
    expect_node_error(
        server,
        with_model_node(prompt_with(), "APG", eta=1.0, norm_threshold=5.0, momentum=-0.5),
        "KSampler",
        "pre-CFG function",
        "APG",
        "remove that node",
    )


def test_changed_model_sampling_is_refused(server):
    prompt = with_model_node(prompt_with(), "ModelSamplingDiscrete", sampling="v_prediction", zsnr=False)
    expect_node_error(server, prompt, "KSampler", "ModelSamplingDiscrete", "remove that node")
    same = with_model_node(
        prompt_with(unet=TINY_MODELS["unet_name"]), "ModelSamplingDiscrete", sampling="eps", zsnr=False
    )
    unchanged = run_to_levels(server, prompt_with(unet=TINY_MODELS["unet_name"]))
    assert torch.equal(run_to_levels(server, same), unchanged)  # eps on SD1.5's schedule is what FlashFace is


def test_a_guider_that_is_not_positive_negative_is_refused(server):
    """DualCFGGuider evaluates three conditionings through its own calls, which FlashFace would
    read as its own branches."""
    prompt = prompt_with()
    sampler = prompt.pop(node_id(prompt, "KSampler"))["inputs"]
    decode = prompt[node_id(prompt, "FlashFace_VAEDecode")]["inputs"]
    prompt.update(
        {
            "50": {
                "class_type": "DualCFGGuider",
                "inputs": {
                    "model": sampler["model"],
                    "cond1": sampler["positive"],
                    "cond2": sampler["positive"],
                    "negative": sampler["negative"],
                    "cfg_conds": 7.5,
                    "cfg_cond2_negative": 3.0,
                    "style": "regular",
                },
            },
            "51": {"class_type": "KSamplerSelect", "inputs": {"sampler_name": "euler"}},
            "52": {
                "class_type": "BasicScheduler",
                "inputs": {"model": sampler["model"], "scheduler": "normal", "steps": 2, "denoise": 1.0},
            },
            "53": {"class_type": "RandomNoise", "inputs": {"noise_seed": 1}},
            "54": {
                "class_type": "SamplerCustomAdvanced",
                "inputs": {
                    "noise": ["53", 0],
                    "guider": ["50", 0],
                    "sampler": ["51", 0],
                    "sigmas": ["52", 0],
                    "latent_image": sampler["latent_image"],
                },
            },
        }
    )
    decode["samples"] = ["54", 0]
    expect_node_error(server, prompt, "SamplerCustomAdvanced", "DualCFGGuider", "CFGGuider")
