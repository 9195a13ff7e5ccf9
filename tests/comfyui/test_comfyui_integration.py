"""End to end inside a real ComfyUI server: model lists, the bundled workflows' values, progress,
interrupt, user errors and memory over many runs (registration and every bundled workflow to an
image: tests/smoke/test_smoke.py). Tiny seeded models stand in for the real files
(the workflows' Load Model node is pointed at them); everything else runs as shipped."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from PIL import Image

from comfy_workflows import (
    API_WORKFLOWS,
    BLANK_PHOTO,
    CORRUPT_MODEL,
    PHOTO,
    SECOND_DETECTOR,
    api_workflow,
    assert_server_healthy,
    cheap_model_workflow,
    expect_node_error,
    level_difference,
    node_id,
    quick_prompt,
    run_to_levels,
    saved_levels,
    set_inputs,
)
from tiny_flashface_models import TINY_MODELS
from tiny_retinaface import post_nms_scores, threshold_for_count

STANDARD_VAE = "seeded_sd_vae_standard_naming.safetensors"


@pytest.fixture(scope="module")
def server(comfyui_tiny):
    return comfyui_tiny


@pytest.fixture(scope="module")
def standard_vae(server):
    """A seeded full-size SD 1.x VAE in the standard naming, in models/vae (where ComfyUI's VAE
    Loader and FlashFace Load Model both look)."""
    from tiny_vae import write_tiny_vae

    write_tiny_vae(
        server.models_dir / "vae" / STANDARD_VAE,
        seed=3,
        naming="standard",
        dim=128,
        dim_mult=(1, 2, 4, 4),
        num_res_blocks=2,
    )
    return STANDARD_VAE


@pytest.fixture(scope="module")
def detector_scores(server):
    """Face scores the tiny detector gives the example photo (as the server computes them)."""
    from flashface.models.retinaface import load_face_detector

    detector = load_face_detector(server.models_dir / "flashface" / TINY_MODELS["detector_name"])
    return post_nms_scores(detector, Image.open(server.input_dir / PHOTO).convert("RGB"))


# ------------------------------------------------------------------ registration


def test_model_lists_offer_the_official_files_first_and_every_file_found(server):
    inputs = server.object_info("FlashFace_LoadModel")["FlashFace_LoadModel"]["input"]["required"]
    unet_choices = inputs["unet_name"][0]
    assert unet_choices[:2] == ["flashface.ckpt", "flashface.safetensors"]
    assert TINY_MODELS["unet_name"] in unet_choices and CORRUPT_MODEL in unet_choices
    assert inputs["detector_name"][0][0] == "retinaface_resnet50.pth"
    assert "sd-v1-vae.pth" not in unet_choices  # another kind's official file is not offered as a UNet
    # nor another network's file found beside it (models/flashface holds all four kinds)
    assert TINY_MODELS["vae_name"] not in unet_choices and TINY_MODELS["clip_name"] not in unet_choices
    assert TINY_MODELS["unet_name"] not in inputs["vae_name"][0] and TINY_MODELS["vae_name"] in inputs["vae_name"][0]
    assert TINY_MODELS["detector_name"] in unet_choices  # a pickle's names cost a load: listed, refused when picked


# ------------------------------------------------------------------ the bundled workflows


@pytest.mark.parametrize("workflow", API_WORKFLOWS, ids=lambda path: path.stem)
def test_bundled_workflow_values_are_valid_for_the_server(server, workflow):
    """Every widget value the workflow ships (its own size and step count included) is one the
    server's /object_info allows: a listed choice, or a number within min/max on the step grid."""
    prompt = api_workflow(workflow.stem)
    checked = 0
    for node in prompt.values():
        info = server.object_info(node["class_type"])[node["class_type"]]["input"]
        specs = {**info["required"], **info.get("optional", {})}
        for name, value in node["inputs"].items():
            if isinstance(value, list):  # a link to another node's output
                continue
            kind, options = specs[name][0], specs[name][1] if len(specs[name]) > 1 else {}
            where = f"{workflow.stem}: {node['class_type']}.{name} = {value!r}"
            if isinstance(kind, list) or kind == "COMBO":  # older and newer spellings of a choice list
                assert value in (kind if isinstance(kind, list) else options["options"]), where
            elif kind in ("INT", "FLOAT"):
                assert options.get("min", value) <= value <= options.get("max", value), where
                if kind == "INT" and options.get("step", 1) > 1:
                    assert (value - options.get("min", 0)) % options["step"] == 0, where
            checked += 1
    assert checked > 10


def test_progress_and_latent_previews_arrive_on_the_websocket(server):
    prompt = quick_prompt(seed=7, steps=4)
    run = server.run(prompt)
    assert run.status == "success", run.error_text()
    generator = node_id(prompt, "FlashFace_Generator")
    steps = [m for m in run.of_type("progress") if m.get("node") == generator]
    assert [m["value"] for m in steps] == [1, 2, 3, 4]
    assert all(m["max"] == 4 for m in steps)
    assert run.previews >= 4  # one latent preview per step (--preview-method latent2rgb)


def test_loads_are_cached_between_runs(server):
    first = server.run(quick_prompt(seed=11))
    second = server.run(quick_prompt(seed=12))
    assert first.status == second.status == "success"
    cached = [node for m in second.of_type("execution_cached") for node in m["nodes"]]
    assert node_id(quick_prompt(), "FlashFace_LoadModel") in cached


@pytest.mark.parametrize("weight_dtype", ["fp8_e4m3fn", "fp8_e5m2"])
def test_fp8_weights_run_the_generator_and_the_model_path(server, weight_dtype):
    """UNet weights stored in fp8 (computing in fp32 on the CPU): both routes make an image near the
    fp32 one, not equal to it."""
    for prompt in (quick_prompt(seed=21), cheap_model_workflow("flashface_ksampler", 64, steps=3, seed=21)):
        full = run_to_levels(server, set_inputs(prompt, "FlashFace_LoadModel", weight_dtype="fp32"))
        fp8 = run_to_levels(server, set_inputs(prompt, "FlashFace_LoadModel", weight_dtype=weight_dtype))
        print(f"\n{weight_dtype} vs fp32: {level_difference(fp8, full)}")
        assert not torch.equal(fp8, full)
        assert (fp8 - full).abs().float().mean() < 40


def test_latent_output_decodes_to_the_image_as_stock_vae_decode_expects(server):
    """LATENT carries unscaled latents (ComfyUI's convention): decoding them as they are gives the image."""
    import torch
    from safetensors.torch import load_file

    from flashface.models.vae import load_vae

    prompt = quick_prompt(seed=3)
    generator = node_id(prompt, "FlashFace_Generator")
    prompt["90"] = {
        "class_type": "LatentUpscaleBy",
        "inputs": {"samples": [generator, 1], "upscale_method": "nearest-exact", "scale_by": 1.0},
    }
    prompt["91"] = {"class_type": "SaveLatent", "inputs": {"samples": ["90", 0], "filename_prefix": "flashface"}}
    run = server.run(prompt)
    assert run.status == "success", run.error_text()

    (latent_file,) = run.outputs["91"]["latents"]
    samples = load_file(server.instance / "output" / latent_file["subfolder"] / latent_file["filename"])[
        "latent_tensor"
    ]
    assert samples.shape == (1, 4, 8, 8)
    vae = load_vae(server.models_dir / "flashface" / TINY_MODELS["vae_name"], device="cpu", dtype=torch.float32)
    with torch.no_grad():
        decoded = ((vae.decode(samples) + 1) / 2).clamp(0, 1)[0].permute(1, 2, 0)
    (saved,) = run.outputs[node_id(prompt, "SaveImage")]["images"]
    image = torch.from_numpy(np.asarray(Image.open(io.BytesIO(server.view(saved))).convert("RGB"), dtype=np.float32))
    assert (decoded * 255 - image).abs().max() <= 1.0


def test_stock_vae_decode_of_the_latent_equals_the_standard_vae_attention(server, standard_vae):
    """ComfyUI's own VAE Loader + VAE Decode on our LATENT give what Load Model's `standard` VAE
    attention gives (same weights; a full-size SD VAE, the only size ComfyUI's loader builds).
    That the official attention differs is shown in test_vae.py."""
    prompt = set_inputs(quick_prompt(seed=5), "FlashFace_LoadModel", vae_name=standard_vae, vae_attention="standard")
    generator, save = node_id(prompt, "FlashFace_Generator"), node_id(prompt, "SaveImage")
    prompt["90"] = {"class_type": "VAELoader", "inputs": {"vae_name": standard_vae}}
    prompt["91"] = {"class_type": "VAEDecode", "inputs": {"samples": [generator, 1], "vae": ["90", 0]}}
    prompt["92"] = {"class_type": "SaveImage", "inputs": {"images": ["91", 0], "filename_prefix": "stock"}}
    run = server.run(prompt, timeout=600)
    assert run.status == "success", run.error_text() or server.log_tail()
    ours, stock = (saved_levels(server, run, node).to(torch.int16) for node in (save, "92"))
    assert ours.float().std() > 20  # a picture, not a flat or saturated fill
    assert (ours - stock).abs().max() <= 1


# ------------------------------------------------------------------ interrupt
def test_interrupt_during_sampling_stops_the_run_and_the_next_run_succeeds(server):
    prompt = quick_prompt(seed=21, steps=40, width=256, height=256)
    generator = node_id(prompt, "FlashFace_Generator")
    asked = []

    def interrupt_after_first_step(message, srv):
        if message["type"] == "progress" and message["data"].get("node") == generator and not asked:
            asked.append(message["data"]["value"])
            srv.interrupt()

    run = server.run(prompt, on_message=interrupt_after_first_step)
    assert asked, "no progress message arrived before the run ended"
    assert run.status == "interrupted", run.error_text()
    done = [m["value"] for m in run.of_type("progress") if m.get("node") == generator]
    assert max(done) < 40
    assert_server_healthy(server)
    after = server.run(quick_prompt(seed=22))
    assert after.status == "success", after.error_text()


# ------------------------------------------------------------------ user errors
def test_photo_without_a_face_names_the_photo(server, detector_scores):
    assert detector_scores[0] < 0.99
    prompt = set_inputs(quick_prompt(), "LoadImage", image=BLANK_PHOTO)
    set_inputs(prompt, "FlashFace_DetectFace", threshold=0.99)
    run = expect_node_error(server, prompt, "FlashFace_DetectFace", "No face found in photo 1 of 1", "320x240")
    assert run.error["exception_type"].endswith("FaceDetectionError")


def test_photo_with_two_faces_is_refused_when_asked(server, detector_scores):
    prompt = set_inputs(
        quick_prompt(), "FlashFace_DetectFace", several_faces="error", threshold=threshold_for_count(detector_scores, 2)
    )
    expect_node_error(server, prompt, "FlashFace_DetectFace", "2 faces found in photo 1 of 1", "several_faces")


def test_size_not_multiple_of_eight_is_explained(server):
    prompt = quick_prompt(width=100)
    expect_node_error(server, prompt, "FlashFace_Generator", "multiple of 8", "96 or 104")


def test_no_references_connected_is_explained(server):
    """reference_faces is optional (people may take its place): with neither connected the Generator
    stops before sampling and says what to connect."""
    prompt = quick_prompt()
    del prompt[node_id(prompt, "FlashFace_Generator")]["inputs"]["reference_faces"]
    expect_node_error(server, prompt, "FlashFace_Generator", "Connect reference_faces", "FlashFace Person")


def test_missing_official_model_file_says_where_to_put_it(server):
    # The server runs offline (HF_HUB_OFFLINE=1), so the missing official file cannot be downloaded.
    prompt = set_inputs(quick_prompt(), "FlashFace_LoadModel", unet_name="flashface.ckpt")
    run = expect_node_error(server, prompt, "FlashFace_LoadModel", "flashface.ckpt")
    assert str(server.models_dir / "flashface") in run.error["exception_message"]


def test_corrupt_model_file_is_reported(server):
    prompt = set_inputs(quick_prompt(), "FlashFace_LoadModel", unet_name=CORRUPT_MODEL)
    run = expect_node_error(server, prompt, "FlashFace_LoadModel", CORRUPT_MODEL)
    assert run.error["exception_type"].endswith("ModelFileError")


# ------------------------------------------------------------------ memory
def test_twenty_runs_keep_server_memory_flat(server):
    """Every run reloads the 110 MB detector (two files alternate) and samples with new references
    features and masks; none of it may stay behind."""

    def run(index):
        prompt = quick_prompt(seed=1000 + index, width=128, height=128)
        set_inputs(
            prompt, "FlashFace_LoadModel", detector_name=SECOND_DETECTOR if index % 2 else TINY_MODELS["detector_name"]
        )
        result = server.run(prompt)
        assert result.status == "success", result.error_text()

    for index in range(2):
        run(index)
    before = server.rss_bytes()
    for index in range(2, 22):
        run(index)
    after = server.rss_bytes()
    print(
        f"\nComfyUI server RSS before 20 runs: {before / 2**20:.0f} MiB, after: {after / 2**20:.0f} MiB "
        f"({(after - before) / 2**20:+.0f} MiB)"
    )
    assert after - before < 200 * 2**20
