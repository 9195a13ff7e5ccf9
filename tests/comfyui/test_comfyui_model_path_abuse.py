"""The MODEL path and the VAE nodes under hostile input, in a real server (every ComfyUI version the
tests know): values stock nodes or other packs' nodes send (the test-only TestValueSource node of
conftest.py stands in for the latter) stop with a clear message in the node that got them, never an
all-black image reported as success or a raw exception; Cancel stops a long decode."""

from __future__ import annotations

import math
import time

import pytest

from comfy_workflows import (
    TEXT_AS_MODEL,
    assert_server_healthy,
    cheap_model_workflow,
    expect_node_error,
    node_id,
    quick_prompt,
    set_inputs,
)
from tiny_flashface_models import TEXT_WIDTH, TINY_MODELS

SOURCE = "99"  # the TestValueSource node's id in these prompts
MASK, LATENT, CONDITIONING, SIGMAS = range(4)  # its outputs


@pytest.fixture(scope="module")
def server(comfyui_tiny):
    return comfyui_tiny


def model_prompt(case: str | None = None, **ksampler) -> dict:
    prompt = cheap_model_workflow("flashface_ksampler", 64, steps=3, seed=5, **ksampler)
    if case is not None:
        prompt[SOURCE] = {"class_type": "TestValueSource", "inputs": {"case": case}}
    return prompt


def link(prompt: dict, class_type: str, input_name: str, output: int) -> dict:
    prompt[node_id(prompt, class_type)]["inputs"][input_name] = [SOURCE, output]
    return prompt


def test_a_cfg_that_is_not_a_number_is_refused(server):
    expect_node_error(server, model_prompt(cfg=math.nan), "KSampler", "cfg is nan", "finite number")


def test_a_latent_that_is_not_numbers_is_refused_at_the_first_step(server):
    prompt = link(model_prompt("latent of NaN", denoise=0.5), "KSampler", "latent_image", LATENT)
    expect_node_error(
        server, prompt, "KSampler", "latent entering the step", "not numbers", "LATENT given to the sampler"
    )


def test_a_latent_of_another_model_is_refused_at_the_first_step(server):
    prompt = link(model_prompt("latent of 16 channels", denoise=0.5), "KSampler", "latent_image", LATENT)
    expect_node_error(
        server, prompt, "KSampler", "latent has shape [1, 16, 8, 8]", "[batch, 4, height/8, width/8]", "Empty Latent"
    )


@pytest.mark.parametrize(
    ("case", "phrases"),
    [
        ("conditioning of NaN", ["negative conditioning has values that are not numbers"]),
        ("SDXL conditioning", ["2048 wide", f"reads prompts {TEXT_WIDTH} wide", "FlashFace CLIP Text Encode"]),
    ],
)
def test_conditioning_flashface_cannot_read_is_refused_by_apply(server, case, phrases):
    expect_node_error(
        server, link(model_prompt(case), "FlashFace_Apply", "negative", CONDITIONING), "FlashFace_Apply", *phrases
    )


def test_sdxl_conditioning_given_to_the_sampler_is_refused(server):
    prompt = link(model_prompt("SDXL conditioning"), "KSampler", "positive", CONDITIONING)
    expect_node_error(server, prompt, "KSampler", "sampler's positive conditioning is 2048 wide")


@pytest.mark.parametrize(
    ("case", "phrases"),
    [
        ("latent of NaN", ["samples latent has values that are not numbers"]),
        ("latent of 1e30", ["decodes to values that are not numbers", "1e+30"]),
        ("empty latent batch", ["at least one latent"]),
    ],
)
def test_a_latent_no_vae_can_decode_is_refused(server, case, phrases):
    prompt = link(model_prompt(case), "FlashFace_VAEDecode", "samples", LATENT)
    expect_node_error(server, prompt, "FlashFace_VAEDecode", *phrases)


def test_an_empty_mask_batch_is_refused_by_apply_and_the_generator(server):
    expect_node_error(
        server,
        link(model_prompt("empty mask batch"), "FlashFace_Apply", "face_mask", MASK),
        "FlashFace_Apply",
        "face_mask input got a tensor of shape [0, 64, 64]",
        "at least one mask",
    )
    generator = quick_prompt(seed=41)
    generator[SOURCE] = {"class_type": "TestValueSource", "inputs": {"case": "empty mask batch"}}
    expect_node_error(
        server, link(generator, "FlashFace_Generator", "face_mask", MASK), "FlashFace_Generator", "at least one mask"
    )


def test_area_conditioning_is_refused_rather_than_placing_the_face_in_the_area(server):
    prompt = model_prompt()
    set_inputs(prompt, "EmptyLatentImage", width=128, height=64)
    sampler = prompt[node_id(prompt, "KSampler")]["inputs"]
    prompt["95"] = {
        "class_type": "ConditioningSetArea",
        "inputs": {"conditioning": sampler["positive"], "width": 64, "height": 64, "x": 64, "y": 0, "strength": 1.0},
    }
    prompt["96"] = {
        "class_type": "ConditioningCombine",
        "inputs": {"conditioning_1": sampler["positive"], "conditioning_2": ["95", 0]},
    }
    sampler["positive"] = ["96", 0]
    expect_node_error(
        server, prompt, "KSampler", "limited to an area or a mask", "ConditioningSetArea", "face box or face_mask"
    )


@pytest.mark.parametrize("side", ["positive", "negative"])
def test_a_prompt_that_stops_halfway_is_refused_before_the_first_step(server, side):
    """ConditioningSetTimestepRange limiting one side to the first half: refused before any step runs
    (the ranges are known before the first step), not when sampling reaches the second half."""
    prompt = model_prompt()
    ksampler = node_id(prompt, "KSampler")
    sampler = prompt[ksampler]["inputs"]
    prompt["93"] = {
        "class_type": "ConditioningSetTimestepRange",
        "inputs": {"conditioning": sampler[side], "start": 0.0, "end": 0.5},
    }
    sampler[side] = ["93", 0]
    run = server.run(prompt)
    assert run.status == "error" and run.error["node_type"] == "KSampler", run.error_text()
    message = run.error["exception_message"]
    assert f"no part of the sampler's {side} conditioning is active" in message, message
    assert "ConditioningSetTimestepRange" in message
    assert not [m for m in run.of_type("progress") if m.get("node") == ksampler], "a step ran before the refusal"
    assert_server_healthy(server)


def test_prompts_scheduled_over_the_steps_still_work(server):
    prompt = model_prompt()
    sampler = prompt[node_id(prompt, "KSampler")]["inputs"]
    for key, (start, end) in (("91", (0.0, 0.5)), ("92", (0.5, 1.0))):
        prompt[key] = {
            "class_type": "ConditioningSetTimestepRange",
            "inputs": {"conditioning": sampler["negative"], "start": start, "end": end},
        }
    prompt["93"] = {
        "class_type": "ConditioningCombine",
        "inputs": {"conditioning_1": ["91", 0], "conditioning_2": ["92", 0]},
    }
    sampler["negative"] = ["93", 0]
    run = server.run(prompt)
    assert run.status == "success", run.error_text()


def test_apply_takes_as_many_reference_faces_as_the_generator(server):
    prompt = model_prompt()
    apply = prompt[node_id(prompt, "FlashFace_Apply")]["inputs"]
    prompt["97"] = {"class_type": "RepeatImageBatch", "inputs": {"image": apply["reference_faces"], "amount": 32}}
    apply["reference_faces"] = ["97", 0]
    expect_node_error(server, prompt, "FlashFace_Apply", "32 reference faces were given", "at most 16")


def test_sigmas_that_are_not_numbers_are_named_as_such(server):
    prompt = model_prompt("sigmas with NaN")
    sampler = prompt.pop(node_id(prompt, "KSampler"))["inputs"]
    prompt["98"] = {"class_type": "KSamplerSelect", "inputs": {"sampler_name": "euler"}}
    prompt["94"] = {
        "class_type": "SamplerCustom",
        "inputs": {
            "model": sampler["model"],
            "add_noise": True,
            "noise_seed": 1,
            "cfg": 7.5,
            "positive": sampler["positive"],
            "negative": sampler["negative"],
            "sampler": ["98", 0],
            "sigmas": [SOURCE, SIGMAS],
            "latent_image": sampler["latent_image"],
        },
    }
    prompt[node_id(prompt, "FlashFace_VAEDecode")]["inputs"]["samples"] = ["94", 0]
    run = expect_node_error(server, prompt, "SamplerCustom", "noise level (sigma) of nan", "finite")
    assert "one sigma" not in run.error["exception_message"]


def test_a_text_file_picked_as_a_model_is_called_what_it_is(server):
    prompt = set_inputs(quick_prompt(seed=42), "FlashFace_LoadModel", detector_name=TEXT_AS_MODEL)
    run = server.run(prompt)
    assert run.status == "error", "a text file was loaded as a detector"
    message = run.error["exception_message"]
    assert "is not a model file" in message and "looks like text" in message, message
    assert "weights_only" not in message and "incompletely downloaded" not in message, message
    assert_server_healthy(server)


def test_cancel_stops_a_long_decode_between_images(server):
    prompt = {
        "1": {"class_type": "FlashFace_LoadModel", "inputs": {**TINY_MODELS, "weight_dtype": "auto"}},
        "2": {"class_type": "EmptyLatentImage", "inputs": {"width": 512, "height": 512, "batch_size": 64}},
        "3": {"class_type": "FlashFace_VAEDecode", "inputs": {"flashface_model": ["1", 0], "samples": ["2", 0]}},
        "4": {"class_type": "PreviewImage", "inputs": {"images": ["3", 0]}},
    }
    sent = []

    def cancel_once_decoding(message, srv):
        if message["type"] == "executing" and message["data"].get("node") == "3" and not sent:
            time.sleep(0.5)
            sent.append(time.monotonic())
            srv.interrupt()

    run = server.run(prompt, on_message=cancel_once_decoding)
    stopped_after = time.monotonic() - sent[0]
    print(f"\n64 latents at 512 px: decode stopped {stopped_after:.2f} s after the cancel")
    assert run.status == "interrupted", run.error_text()
    assert stopped_after < 2
    assert_server_healthy(server)
