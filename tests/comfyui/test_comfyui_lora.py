"""ComfyUI's stock LoRA loaders and model merging on FlashFace Apply's MODEL, in a real server (every
ComfyUI version the tests know): the UNet carries ComfyUI's own module names, so an SD1.5 LoRA in
kohya (LoRA + LoCon), diffusers/PEFT or LDM naming patches the main path exactly as the same LoRA
merged into the weights by hand, and ModelMergeSimple / Add / Subtract / Blocks merge every matching
weight."""

from __future__ import annotations

import pytest
import torch

from comfy_workflows import cheap_model_workflow, level_difference, node_id, run_to_levels, with_model_node
from seeded_weights import save_state_dict
from tiny_flashface_models import TEXT_WIDTH
from tiny_lora import write_loras, write_merged_unet
from tiny_unet import tiny_unet_state_dict, write_tiny_unet

SIZE = 64
MERGED_UNET = "tiny_unet_lora_merged_{}_{}.safetensors"
SECOND_UNET = "tiny_unet_seed1.safetensors"


@pytest.fixture(scope="module")
def server(comfyui_tiny):
    return comfyui_tiny


@pytest.fixture(scope="module")
def loras(server):
    return write_loras(server.models_dir / "loras", context_dim=TEXT_WIDTH)


def lora_prompt(lora: str | None = None, strength: float = 1.0, unet: str | None = None) -> dict:
    """The bundled KSampler workflow on the tiny models (`unet` instead of the tiny UNet), with the
    stock LoraLoaderModelOnly between FlashFace Apply and KSampler."""
    prompt = cheap_model_workflow("flashface_ksampler", SIZE, steps=3, seed=5)
    if unet is not None:
        prompt[node_id(prompt, "FlashFace_LoadModel")]["inputs"]["unet_name"] = unet
    if lora is not None:
        with_model_node(prompt, "LoraLoaderModelOnly", lora_name=lora, strength_model=strength)
    return prompt


@pytest.fixture(scope="module")
def without_lora(server) -> torch.Tensor:
    return run_to_levels(server, lora_prompt())


@pytest.mark.parametrize(
    ("lora_format", "strength"), [("kohya", 1.0), ("kohya", -0.7), ("diffusers", 1.0), ("ldm", 1.0)]
)
def test_a_lora_equals_the_same_lora_merged_into_the_weights(server, loras, without_lora, lora_format, strength):
    path, deltas = loras[lora_format]
    merged = MERGED_UNET.format(lora_format, strength)
    write_merged_unet(server.models_dir / "flashface" / merged, deltas, strength, context_dim=TEXT_WIDTH)
    with_lora = run_to_levels(server, lora_prompt(path.name, strength))
    by_hand = run_to_levels(server, lora_prompt(unet=merged))
    print(
        f"\n{lora_format} x{strength}: LoRA vs merged by hand {level_difference(with_lora, by_hand)}; "
        f"vs no LoRA {level_difference(with_lora, without_lora)}"
    )
    assert (with_lora - without_lora).abs().float().mean() > 1  # it does something
    assert (with_lora - by_hand).abs().max() <= 1
    loaded = [line for line in server.log_text().splitlines() if "lora key not loaded" in line]
    assert not [line for line in loaded if "lora_te_" not in line], loaded[-5:]


def test_strength_zero_is_no_lora(server, loras, without_lora):
    path, _ = loras["kohya"]
    assert torch.equal(run_to_levels(server, lora_prompt(path.name, 0.0)), without_lora)


def test_model_merging_merges_every_weight_with_a_partner(server, without_lora):
    """ModelMergeSimple / Add / Subtract / Blocks with a second FlashFace MODEL equal the weights
    merged by hand. Between two FlashFace MODELs every weight has a partner; an SD1.5 MODEL has a partner for
    every main-path weight but the input conv's mask channel (test_comfyui_in_process.py)."""
    write_tiny_unet(server.models_dir / "flashface" / SECOND_UNET, seed=1, context_dim=TEXT_WIDTH)
    first, second = tiny_unet_state_dict(0, context_dim=TEXT_WIDTH), tiny_unet_state_dict(1, context_dim=TEXT_WIDTH)
    cases = {
        "ModelMergeSimple": ({"ratio": 0.3}, lambda a, b: 0.3 * a + 0.7 * b),  # ratio is model1's share
        "ModelMergeAdd": ({}, lambda a, b: a + b),
        # ComfyUI's ModelMergeSubtract gives multiplier * (model1 - model2)
        "ModelMergeSubtract": ({"multiplier": 0.5}, lambda a, b: 0.5 * a - 0.5 * b),
        # model1's share by block; other weights (time embedding, reference network) take the first
        "ModelMergeBlocks": ({"input": 0.2, "middle": 0.5, "out": 0.8}, None),
    }
    block_share = {"encoder": 0.2, "middle": 0.5, "decoder": 0.8, "head": 0.8}
    for node, (widgets, rule) in cases.items():
        if rule is None:
            state = {}
            for key, value in first.items():
                share = block_share.get(key.removeprefix("ori_").split(".")[0], 0.2)
                state[key] = share * value + (1 - share) * second[key]
        else:
            state = {key: rule(value, second[key]) for key, value in first.items()}
        by_hand_name = f"tiny_unet_{node}.safetensors"
        save_state_dict(state, server.models_dir / "flashface" / by_hand_name, {"num_heads": "8"})
        prompt = lora_prompt()
        sampler = prompt[node_id(prompt, "KSampler")]["inputs"]
        loader = prompt[node_id(prompt, "FlashFace_LoadModel")]
        prompt["80"] = {"class_type": "FlashFace_LoadModel", "inputs": {**loader["inputs"], "unet_name": SECOND_UNET}}
        prompt["81"] = {
            "class_type": "FlashFace_Apply",
            "inputs": {**prompt[sampler["model"][0]]["inputs"], "flashface_model": ["80", 0]},
        }
        prompt["82"] = {"class_type": node, "inputs": {"model1": sampler["model"], "model2": ["81", 0], **widgets}}
        sampler["model"] = ["82", 0]
        merged = run_to_levels(server, prompt)
        by_hand = run_to_levels(server, lora_prompt(unet=by_hand_name))
        print(
            f"\n{node}: merged by ComfyUI vs by hand {level_difference(merged, by_hand)}; vs unmerged "
            f"{level_difference(merged, without_lora)}"
        )
        assert (merged - by_hand).abs().max() <= 1
        assert (merged - without_lora).abs().float().mean() > 1


def test_model_save_writes_a_file_load_model_takes_and_stock_loaders_refuse(server, loras, tmp_path):
    """ComfyUI's ModelSave of FlashFace Apply's MODEL with a LoRA: the file (ComfyUI's names, LoRA
    applied) picked in FlashFace Load Model draws the image the saved MODEL drew; ComfyUI's own
    Load Checkpoint does not sample it as a plain SD1.5 UNet (it stops with an error)."""
    import shutil

    path, _ = loras["kohya"]
    prompt = lora_prompt(path.name, 0.8)
    lora = node_id(prompt, "LoraLoaderModelOnly")
    prompt["95"] = {
        "class_type": "ModelSave",
        "inputs": {"model": [lora, 0], "filename_prefix": "checkpoints/ff_saved"},
    }
    saved_run = run_to_levels(server, prompt)
    (saved,) = sorted((server.models_dir.parent / "output" / "checkpoints").glob("ff_saved*.safetensors"))
    shutil.copy(saved, server.models_dir / "flashface" / "saved_by_modelsave.safetensors")
    reloaded = run_to_levels(server, lora_prompt(unet="saved_by_modelsave.safetensors"))
    print(f"\nModelSave file in Load Model vs the saved MODEL: {level_difference(reloaded, saved_run)}")
    assert (reloaded - saved_run).abs().max() <= 1

    shutil.copy(saved, server.models_dir / "checkpoints" / "saved_by_modelsave.safetensors")
    stock = cheap_model_workflow("flashface_ksampler", SIZE, steps=3, seed=5)
    sampler = stock[node_id(stock, "KSampler")]["inputs"]
    stock["96"] = {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "saved_by_modelsave.safetensors"}}
    sampler["model"] = ["96", 0]
    run = server.run(stock, timeout=600)
    assert run.status == "error", "ComfyUI's Load Checkpoint sampled a FlashFace file as a plain SD1.5 UNet"
    print(f"Load Checkpoint on it: {run.error['node_type']}: {run.error['exception_message'][:200]}")
