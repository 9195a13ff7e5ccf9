"""The nodes run in a process with ComfyUI's own modules (no server), for what a CPU-only server
cannot show or a 0.3.75 graph cannot send:

* they compute on the device ComfyUI's model management loads a network to, also when it loads
  the UNet only partly (--lowvram, or a small GPU): ComfyUI then keeps the smallest modules, such
  as the time embedding, on the CPU and casts their weights per call. With no GPU here the meta
  device stands in for one: whatever computes on the CPU by mistake meets meta weights and fails;
* a value of the wrong type on any input is explained (a Switch node passes any type through);
* the model lists are not walked again while the folders are unchanged."""

from __future__ import annotations

import pytest
import torch

from comfy_process import run_with_comfyui, tiny_paths


def test_generator_runs_on_the_load_device_of_a_partially_loaded_unet(comfy_install, tiny_model_files, tmp_path):
    from tiny_flashface_models import TEXT_WIDTH

    result = run_with_comfyui(
        comfy_install,
        "partial_load",
        tmp_path,
        unet=str(tiny_model_files["unet_name"]),
        vae=str(tiny_model_files["vae_name"]),
        width=TEXT_WIDTH,
    )
    assert result["lowvram"] and result["on_gpu"] > 0
    assert "diffusion_model.time_embed.0.weight" in result["on_cpu"]  # the case that used to send all to the CPU
    assert result["images"] == ["meta", [2, 64, 64, 3]]
    assert result["latent"] == ["meta", [2, 4, 8, 8]]


def test_a_value_of_the_wrong_type_on_any_input_is_explained(comfy_install, tmp_path):
    messages = run_with_comfyui(comfy_install, "wrong_types", tmp_path)
    expected = {
        "generator positive text": "The positive input got text; connect FlashFace CLIP Text Encode",
        "generator negative conditioning": "The negative input got a list (a ComfyUI CONDITIONING is one)",
        "generator model tensor": "The flashface_model input got a tensor of shape [1, 64, 64, 3]; connect FlashFace "
        "Load Model",
        "generator faces text": "The reference_faces input got text",
        "generator mask image": "The face_mask input got a tensor of shape [1, 8, 8, 3, 2]",
        "detect photos text": "The images input got text",
        "detect photos nan": "The images input has pixel values that are not numbers",
        "detect model text": "The flashface_model input got text; connect FlashFace Load Model",
        "encode model none": "The flashface_model input got a NoneType",
    }
    for name, phrase in expected.items():
        assert phrase in messages[name], f"{name}: {messages[name]}"


def test_model_lists_are_listed_again_only_when_a_folder_changed(comfy_install, tmp_path):
    listed = run_with_comfyui(comfy_install, "listing", tmp_path, folder=str(tmp_path / "models" / "flashface"))
    assert "deep/er/first.safetensors" in listed["first"] and listed["second"] == listed["first"]
    assert listed["walked_first"] > 0 and listed["walked_second"] == 0
    assert "deep/er/second.safetensors" in listed["third"] and listed["walked_third"] > 0


def test_models_use_comfyuis_patcher_class_and_report_their_cast_dtype(comfy_install, tiny_model_files, tmp_path):
    """Newer ComfyUI builds models with CoreModelPatcher (its dynamic-VRAM patcher once enabled)
    and reads manual_cast_dtype for its memory estimates; older ones have neither."""
    result = run_with_comfyui(
        comfy_install,
        "patchers",
        tmp_path,
        unet=str(tiny_model_files["unet_name"]),
        vae=str(tiny_model_files["vae_name"]),
    )
    assert result["default"] == [result["expected_default"]] * 2
    assert result["swapped"] == ["DynamicStandIn"] * 2
    assert result["weight_dtype"] == result["unet_weights"] == "torch.float16"
    assert result["manual_cast_dtype"] == result["expected_cast"] == "torch.float32"  # fp16 weights, CPU computes fp32
    for name, aliases in result["aliases"].items():
        assert aliases and all(isinstance(alias, str) and alias == alias.lower() for alias in aliases), name


def test_fp8_weights_halve_the_size_comfyui_accounts_for(comfy_install, tiny_model_files, tmp_path):
    """ComfyUI's memory management (partial loading, eviction) reads the patcher's model size: fp8
    storage halves it against fp16, apart from the norms kept in fp32 (and ComfyUI's own buffers); layers are ComfyUI's
    manual-cast ones computing in fp32 on the CPU."""
    result = run_with_comfyui(comfy_install, "fp8_storage", tmp_path, unet=str(tiny_model_files["unet_name"]))
    sizes, kept = result["sizes"], result["kept_bytes"]
    for name in ("fp8_e4m3fn", "fp8_e5m2"):
        assert sizes[name] - kept == (sizes["fp16"] - kept) // 2, sizes
        assert result["dtypes"][name] == dict(
            stored=f"torch.float8_{name[4:]}", compute="torch.float32", layer="comfy.ops"
        ), result["dtypes"]


def test_load_model_takes_the_compact_file_in_place_of_the_published_one(comfy_install, tiny_model_files, tmp_path):
    from flashface.models.convert import convert_unet

    compact = convert_unet(tiny_model_files["unet_name"], tmp_path / "compact_fp16.safetensors", torch.float16)
    result = run_with_comfyui(
        comfy_install, "compact_file", tmp_path, published=str(tiny_model_files["unet_name"]), compact=str(compact)
    )
    assert result == dict(same_keys=True, equal=True)


@pytest.mark.parametrize(
    "layout", ["base directory", "extra_model_paths.yaml", "legacy folders", "same name in a legacy folder"]
)
def test_model_files_in_comfyuis_installation_layouts(comfy_install, tmp_path, layout):
    """The registry's fourth scenario with ComfyUI's own folder_paths and extra_model_paths.yaml
    loader: where files are found, where downloads go, and that ComfyUI lists what was downloaded.
    An entry's url is pointed at a local server, as a developer adding it would."""
    import hashlib

    from http_fixture_server import FixtureServer
    from http_fixture_server import model_file as payload

    base, yaml_path = tmp_path / "base", None
    data = payload()
    with FixtureServer() as server:
        url = server.add("/resolve/main/sd-v1-vae.pth", data, hf="redirect")
        entries = [("vae", {"size": len(data), "url": url})]
        expected = [base / "models" / "flashface" / "sd-v1-vae.pth"]
        if layout == "extra_model_paths.yaml":  # a default shared folder for FlashFace, and an old one
            yaml_path = tmp_path / "extra_model_paths.yaml"
            yaml_path.write_text(
                "shared:\n  base_path: nas\n  is_default: true\n  flashface: flashface-models\n"
                "old:\n  base_path: old-disk\n  flashface: ff\n"
            )
            expected = [tmp_path / "nas" / "flashface-models" / "sd-v1-vae.pth"]
            kept = tmp_path / "old-disk" / "ff" / "openai-clip-vit-large-14.pth"
            clip = payload(seed=2, size=3000)
            kept.parent.mkdir(parents=True)
            kept.write_bytes(clip)
            entries.append(("clip", {"size": len(clip), "md5": hashlib.md5(clip).hexdigest()}))
            expected.append(kept)
        if layout == "legacy folders":  # earlier ports' files, one of them in an extra text_encoders folder
            files = {
                ("clip", tmp_path / "old-install" / "models" / "clip" / "openai-clip-vit-large-14.pth"): 3,
                ("retinaface", base / "models" / "face_detection" / "retinaface_resnet50.pth"): 4,
                ("retinaface_facexlib", base / "models" / "detection" / "detection_Resnet50_Final.pth"): 5,
                ("vae", base / "models" / "vae" / "sd-v1-vae.pth"): 6,
            }
            yaml_path = tmp_path / "extra_model_paths.yaml"
            yaml_path.write_text("old:\n  base_path: old-install\n  clip: models/clip\n")
            entries, expected = [], []
            for (name, path), seed in files.items():
                content = payload(seed=seed, size=2000 + seed)
                path.parent.mkdir(parents=True)
                path.write_bytes(content)
                entries.append(
                    (
                        name,
                        {
                            "size": len(content),
                            "md5": hashlib.md5(content).hexdigest(),
                            "url": "http://127.0.0.1:9/unreachable",
                        },
                    )
                )
                expected.append(path)
        theirs = base / "models" / "vae" / "sd-v1-vae.pth"
        if layout == "same name in a legacy folder":  # someone else's sd-v1-vae.pth: left alone
            theirs.parent.mkdir(parents=True)
            theirs.write_bytes(b"another file with the same name")
        result = run_with_comfyui(
            comfy_install,
            "layout",
            tmp_path,
            entries=entries,
            arguments={"base_directory": str(base)},
            extra_model_paths=yaml_path,
        )
        requests = list(server.requests)
    assert result["paths"] == [str(path) for path in expected]
    assert ".ckpt" in result["extensions"] and ".safetensors" in result["extensions"]
    if layout == "legacy folders":
        assert requests == []
    else:
        assert "sd-v1-vae.pth" in result["listed"] and expected[0].read_bytes() == data  # ComfyUI lists it
    if layout == "same name in a legacy folder":
        assert theirs.read_bytes() == b"another file with the same name"


def test_the_model_path_estimates_its_memory_and_runs_partially_loaded(comfy_install, tiny_model_files, tmp_path):
    """KSampler batches by `memory_required`: the references' tokens count (more faces, more memory,
    more than plain SD1.5); a UNet ComfyUI loads only in part gives the same samples."""
    result = run_with_comfyui(
        comfy_install,
        "model_path",
        tmp_path,
        **tiny_paths(tiny_model_files),
    )
    estimates = result["estimates"]
    assert estimates["four"] > estimates["one"] > estimates["sd15"] > 0
    assert result["lowvram"] and result["cast_layers"] > 0
    assert result["difference"] < 1e-5


def test_the_main_path_has_the_names_and_shapes_of_comfyuis_sd_unet(comfy_install, tiny_model_files, tmp_path):
    """ComfyUI's own SD UNet (openaimodel.UNetModel) built with the FlashFace MODEL's unet_config
    has exactly the FlashFace main path's tensors, name for name and shape for shape: what SD1.5
    LoRAs, merges and ControlNets address is there. FlashFace's own tensors: the input conv's mask
    channel, the reference attention, the reference network."""
    result = run_with_comfyui(comfy_install, "sd15_keys", tmp_path, unet=str(tiny_model_files["unet_name"]))
    sd15, ours = result["sd15"], result["ours"]
    own = {
        key
        for key in ours
        if key == "input_blocks.0.0.mask_weight"
        or ".reference_attn." in key
        or key.startswith(("reference_input_blocks.", "reference_output_blocks."))
    }
    assert {key: ours[key] for key in ours if key not in own} == sd15
    assert result["grafted"] == sd15  # the graft changes exactly the tensors an SD1.5 UNet has
    assert set(sd15) <= set(result["diffusers"])  # diffusers-named LoRAs reach every one of them
    assert len(own) > 100 and sd15["input_blocks.0.0.weight"][1] == 4


def test_dpmpp_2m_sde_draws_comfyuis_noise_for_a_seed(comfy_install, tmp_path):
    """The Generator's dpmpp_2m_sde and ComfyUI's sampler of that name give the same result for the
    same seed and levels (the same Brownian tree), and another for another seed."""
    result = run_with_comfyui(comfy_install, "dpmpp_2m_sde_against_comfyui", tmp_path, seed=12, other_seed=13)
    print(f"\ndpmpp_2m_sde vs ComfyUI's: {result}")
    assert result["same_seed"] < 1e-5 * result["scale"], result
    assert result["other_seed"] > 0.05 * result["scale"], result


def test_the_pack_refuses_an_old_torch_with_a_message_comfyui_shows(comfy_install, tmp_path):
    """ComfyUI lists a pack whose import raises as failed, with the message: it names the torch
    and what to do (a torch from the minimum on imports)."""
    message = run_with_comfyui(comfy_install, "pack_import_with_torch", tmp_path, version="2.3.1+cu121")
    assert message.startswith("FlashFace needs torch 2.4 or later, and this Python has torch 2.3.1+cu121")
    assert run_with_comfyui(comfy_install, "pack_import_with_torch", tmp_path, version="2.4.0") == "imported"


def test_graft_checkpoint_patches_the_difference_and_a_lora_adds_to_it(comfy_install, tiny_model_files, tmp_path):
    """The node's UNet, loaded by ComfyUI, is the plain UNet + strength * (custom - base) on each of the
    SD1.5 checkpoint's tensors (bit for bit, fp32), a stock LoRA on it adds exactly its own change,
    Load Model's UNet stays as it was, and strength 0 gives the input back."""
    from seeded_weights import save_state_dict
    from tiny_flashface_models import TEXT_WIDTH, tiny_sd15_pair
    from tiny_lora import write_loras
    from tiny_sd15 import write_sd15

    custom, base = tiny_sd15_pair()
    write_sd15(tmp_path / "custom.safetensors", custom)
    write_sd15(tmp_path / "base.ckpt", base, dtype=torch.float16)
    lora, deltas = write_loras(tmp_path / "loras", context_dim=TEXT_WIDTH)["kohya"]
    lora.rename(tmp_path / "lora.safetensors")
    changes = {}
    for target, delta in deltas.items():  # each LoRA change as a whole tensor of the UNet's key
        whole = torch.zeros(base[target.ldm + ".weight"].shape)
        whole[:, target.part] = delta
        changes[target.ldm + ".weight"] = whole
    save_state_dict(changes, tmp_path / "lora_changes.safetensors")
    result = run_with_comfyui(
        comfy_install, "graft_node", tmp_path, **tiny_paths(tiny_model_files), folder=str(tmp_path), strength=0.6
    )
    print(f"\nGraft Checkpoint in ComfyUI: {result}")
    assert result["grafted"] == 0 and result["with_lora"] == 0 and result["load_model_unet"] == 0
    assert result["changed"] == result["sd15_tensors"] == len(base)
    assert result["strength_zero_is_the_input"]


def test_the_unet_computes_its_attention_with_comfyuis(comfy_install, tiny_model_files, tmp_path):
    """ComfyUI's attention (xformers, sage, PyTorch's or split, as ComfyUI was started) computes every
    self- and cross-attention of both passes of the UNet Load Model loads; FlashFace's reference
    attention, with its own logit bias, is not ComfyUI's."""
    result = run_with_comfyui(
        comfy_install, "comfyui_attention_is_used", tmp_path, unet=str(tiny_model_files["unet_name"])
    )
    print(f"\noptimized_attention calls: {result}")
    middle = 1  # the reference pass runs the main middle block
    assert result["main_pass"] == 2 * result["main_blocks"]
    assert result["reference_pass"] == 2 * (result["reference_blocks"] + middle)


def test_conditioning_the_flashface_unet_has_no_input_for_is_refused_by_name(comfy_install, tiny_model_files, tmp_path):
    found = run_with_comfyui(comfy_install, "untaken_conditioning", tmp_path, **tiny_paths(tiny_model_files))
    assert "c_concat: an image or mask joined to the latent, for inpainting" in found["c_concat"], found
    assert "y: a pooled or class embedding, for SDXL" in found["y"], found
    assert "guidance: an input of another model" in found["other"], found
    assert all("Remove that node" in found[name] for name in ("c_concat", "y", "other")), found
    # the text ControlNets read is theirs: the evaluation goes on past the check (and fails later on
    # purpose-made inputs, never with the refusal)
    assert "no input for" not in found["controlnet text"], found
    message = found["inpaint conditioning"]
    assert "positive conditioning carries concat_latent_image" in message and "InpaintModelConditioning" in message
    assert "Set Latent Noise Mask" in message, message
