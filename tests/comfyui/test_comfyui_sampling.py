"""FlashFace as a ComfyUI MODEL in a real server (every ComfyUI version the tests know): SamplerCustom
with the official sigmas and DDIM gives the Generator's image (and the official demo's); KSampler
with other samplers and schedulers, batches, img2img, inpainting with Set Latent Noise Mask,
interrupt, memory over many runs, and no state kept between runs."""

from __future__ import annotations

import pytest
import torch
from test_comfyui_demo_parity import case_prompt

from comfy_workflows import (
    assert_server_healthy,
    cheap_model_workflow,
    node_id,
    run_to_levels,
    saved_levels,
    set_inputs,
)
from demo_cases import DemoCase, demo_cases

KSAMPLER_WORKFLOW = "flashface_ksampler"
IMG2IMG_WORKFLOW = "flashface_img2img"
SIZE = 64


@pytest.fixture(scope="module")
def server(comfyui_tiny):
    return comfyui_tiny


def ksampler_prompt(workflow: str = KSAMPLER_WORKFLOW, **ksampler) -> dict:
    return cheap_model_workflow(workflow, SIZE, **ksampler)


# ------------------------------------------------------------------ exact: the official run
@pytest.mark.parametrize("case", demo_cases())
def test_sampler_custom_with_the_official_sigmas_and_ddim_is_the_generator(comfyui, case):
    """The case's bundled Generator workflow, and beside it the same inputs through FlashFace Apply,
    SamplerCustom (ddim, FlashFace Sigmas, cfg = text guidance) and FlashFace VAE Decode."""
    demo = DemoCase(case)
    config = demo.config
    files = demo.model_files(comfyui.models_dir / "flashface")
    photos = demo.copy_photos(comfyui.input_dir)
    prompt = case_prompt(demo, files, photos)
    generator = prompt[node_id(prompt, "FlashFace_Generator")]["inputs"]
    model, detect = generator["flashface_model"], generator["reference_faces"]
    positive, negative = generator["positive"][0], generator["negative"][0]
    generator_save = node_id(prompt, "SaveImage")
    x1, y1, x2, y2 = config["face_bbox"]
    prompt.update(
        {
            "100": {
                "class_type": "FlashFace_Apply",
                "inputs": {
                    "flashface_model": model,
                    "reference_faces": detect,
                    "negative": [negative, 2],
                    "reference_feature_strength": config["reference_feature_strength"],
                    "reference_feature_strength_before_launch": config["reference_feature_strength_before_launch"],
                    "reference_guidance_strength": config["reference_guidance"],
                    "launch_timestep": config["launch_timestep"],
                    "face_x1": x1,
                    "face_y1": y1,
                    "face_x2": x2,
                    "face_y2": y2,
                    "pad_references": True,
                    "padding_seed": config["seed"],
                },
            },
            "101": {
                "class_type": "FlashFace_Sigmas",
                "inputs": {"steps": config["steps"], "discretization": "trailing", "sigma_spacing": "timesteps"},
            },
            "102": {"class_type": "KSamplerSelect", "inputs": {"sampler_name": "ddim"}},
            "103": {
                "class_type": "EmptyLatentImage",
                "inputs": {"width": config["width"], "height": config["height"], "batch_size": config["num_samples"]},
            },
            "104": {
                "class_type": "SamplerCustom",
                "inputs": {
                    "model": ["100", 0],
                    "add_noise": True,
                    "noise_seed": config["seed"],
                    "cfg": config["text_guidance"],
                    "positive": [positive, 1],
                    "negative": [negative, 2],
                    "sampler": ["102", 0],
                    "sigmas": ["101", 0],
                    "latent_image": ["103", 0],
                },
            },
            "105": {"class_type": "FlashFace_VAEDecode", "inputs": {"flashface_model": model, "samples": ["104", 0]}},
            "106": {"class_type": "SaveImage", "inputs": {"images": ["105", 0], "filename_prefix": "sampler_custom"}},
        }
    )
    run = comfyui.run(prompt, timeout=900)
    assert run.status == "success", run.error_text() or comfyui.log_tail()
    generator_images = saved_levels(comfyui, run, generator_save)
    sampler_images = saved_levels(comfyui, run, "106")
    between = (sampler_images.int() - generator_images.int()).abs()
    official = demo.difference(sampler_images)
    print(
        f"\n{demo.name}: SamplerCustom vs Generator max {int(between.max())}, mean {float(between.float().mean()):.2e}"
        f" levels; vs the official image: {official}"
    )
    assert official.within(demo.image_tolerance), official
    assert int(between.max()) <= demo.image_tolerance["max_abs"]
    assert float(between.float().mean()) <= demo.image_tolerance["mean_abs"]


# ------------------------------------------------------------------ KSampler, open path
@pytest.mark.parametrize("sampler, scheduler", [("euler", "normal"), ("dpmpp_2m", "karras"), ("uni_pc", "simple")])
def test_ksampler_runs_with_comfyuis_samplers_and_reports_progress(server, sampler, scheduler):
    prompt = ksampler_prompt(sampler_name=sampler, scheduler=scheduler)
    set_inputs(prompt, "EmptyLatentImage", batch_size=2)
    run = server.run(prompt, timeout=600)
    assert run.status == "success", run.error_text() or server.log_tail()
    images = saved_levels(server, run, node_id(prompt, "SaveImage"))
    assert images.shape == (2, SIZE, SIZE, 3)
    assert images.float().std() > 1  # a picture, not a flat fill
    assert not torch.equal(images[0], images[1])  # two samples, two noises
    ksampler = node_id(prompt, "KSampler")
    steps = [m for m in run.of_type("progress") if m.get("node") == ksampler]
    assert [m["value"] for m in steps][-1] == 4 and all(m["max"] == 4 for m in steps)
    assert run.previews >= 4  # ComfyUI's latent previews (latent2rgb), one a step


def test_img2img_denoise_keeps_more_of_the_photo_at_a_lower_strength(server):
    def decoded(denoise):
        prompt = ksampler_prompt(IMG2IMG_WORKFLOW, denoise=denoise, seed=5)
        return run_to_levels(server, prompt).float()

    photo_prompt = ksampler_prompt(IMG2IMG_WORKFLOW)
    encoder = node_id(photo_prompt, "FlashFace_VAEEncode")
    decoder = node_id(photo_prompt, "FlashFace_VAEDecode")
    photo_prompt[decoder]["inputs"]["samples"] = [encoder, 0]  # the photo through the VAE alone
    del photo_prompt[node_id(photo_prompt, "KSampler")]
    photo = run_to_levels(server, photo_prompt).float()
    half, full = (decoded(denoise) for denoise in (0.5, 1.0))
    change_half, change_full = (float((image - photo).abs().mean()) for image in (half, full))
    print(f"\nmean change from the photo: denoise 0.5 {change_half:.1f}, 1.0 {change_full:.1f} levels")
    assert change_half < change_full


def saved_latents(server, run, node: str) -> torch.Tensor:
    """The samples a SaveLatent node wrote."""
    from safetensors.torch import load

    (saved,) = run.outputs[node]["latents"]
    return load(server.view(saved))["latent_tensor"]


def test_set_latent_noise_mask_keeps_the_unmasked_region(server):
    """Inpainting the top-left quarter of an encoded photo: the latent cells outside the mask come
    out as they went in. (Compared as latents: the tiny random VAE's mid-block attention is global,
    so after decoding every pixel depends on every cell, 62 levels on average here.)"""
    prompt = ksampler_prompt(IMG2IMG_WORKFLOW, denoise=1.0, seed=6)
    encoder = node_id(prompt, "FlashFace_VAEEncode")
    prompt.update(
        {
            "91": {"class_type": "SolidMask", "inputs": {"value": 0.0, "width": SIZE, "height": SIZE}},
            "92": {"class_type": "SolidMask", "inputs": {"value": 1.0, "width": SIZE // 2, "height": SIZE // 2}},
            "93": {
                "class_type": "MaskComposite",
                "inputs": {"destination": ["91", 0], "source": ["92", 0], "x": 0, "y": 0, "operation": "add"},
            },
            "94": {"class_type": "SetLatentNoiseMask", "inputs": {"samples": [encoder, 0], "mask": ["93", 0]}},
            "95": {"class_type": "SaveLatent", "inputs": {"samples": [encoder, 0], "filename_prefix": "photo"}},
            "96": {
                "class_type": "SaveLatent",
                "inputs": {"samples": [node_id(prompt, "KSampler"), 0], "filename_prefix": "inpainted"},
            },
        }
    )
    prompt[node_id(prompt, "KSampler")]["inputs"]["latent_image"] = ["94", 0]
    run = server.run(prompt, timeout=600)
    assert run.status == "success", run.error_text() or server.log_tail()
    change = (saved_latents(server, run, "96") - saved_latents(server, run, "95")).abs()
    cells = SIZE // 8 // 2
    inside, outside = change[..., :cells, :cells], change.clone()
    outside[..., :cells, :cells] = 0
    print(
        f"\ninpainting: largest change outside the mask {float(outside.max()):.1e}, mean inside "
        f"{float(inside.mean()):.2f}"
    )
    assert float(outside.max()) <= 1e-5 and float(inside.mean()) > 0.1


def test_no_state_stays_between_runs(server):
    """Runs with other references, another face box and another size in between do not change a result."""
    first = run_to_levels(server, ksampler_prompt(seed=7))
    other = ksampler_prompt(seed=8)
    set_inputs(other, "FlashFace_Apply", face_x1=0.0, face_y1=0.0, face_x2=0.5, face_y2=0.5, pad_references=False)
    set_inputs(other, "EmptyLatentImage", width=96, height=64)
    run_to_levels(server, other)
    assert torch.equal(run_to_levels(server, ksampler_prompt(seed=7)), first)


def test_interrupt_during_ksampler_then_a_clean_run(server):
    sent = []

    def interrupt_at_the_first_step(message, srv):
        if message["type"] == "progress" and not sent:
            sent.append(True)
            srv.interrupt()

    run = server.run(ksampler_prompt(steps=40, seed=9), on_message=interrupt_at_the_first_step)
    assert sent and run.status == "interrupted", run.error_text()
    assert_server_healthy(server)
    assert run_to_levels(server, ksampler_prompt(seed=9)).shape == (1, SIZE, SIZE, 3)


def test_ten_ksampler_runs_keep_server_memory_flat(server):
    for index in range(2):
        run_to_levels(server, ksampler_prompt(seed=100 + index))
    before = server.rss_bytes()
    for index in range(2, 12):
        run_to_levels(server, ksampler_prompt(seed=100 + index))
    after = server.rss_bytes()
    print(f"\nserver RSS before 10 KSampler runs {before / 2**20:.0f} MiB, after {after / 2**20:.0f} MiB")
    assert after - before < 100 * 2**20
