"""Another SD1.5 fine-tune grafted onto FlashFace (flashface/models/graft.py): the weights equal the
difference merged by hand, in every file format and dtype users have, through the library, `convert`
and the command line's `main`; strength 0 and a fine-tune equal to its base change nothing; files
that are not SD1.5 UNets are refused with what they look like."""

from __future__ import annotations

import json

import pytest
import torch
from PIL import Image
from safetensors import safe_open

from cli_runs import PHOTOS, quick_flags
from flashface.__main__ import main
from flashface.errors import InvalidInputError, ModelFileError
from flashface.models.graft import graft_shapes, graft_unet
from flashface.models.unet_loading import load_unet
from seeded_weights import save_state_dict
from tiny_flashface_models import TEXT_WIDTH, tiny_sd15_pair
from tiny_sd15 import FULL_CHECKPOINT, UNET_ONLY, write_sd15
from tiny_unet import write_tiny_unet

SIZES = dict(context_dim=TEXT_WIDTH)


@pytest.fixture(scope="module")
def flashface_file(tmp_path_factory):
    return write_tiny_unet(tmp_path_factory.mktemp("graft") / "flashface.safetensors", seed=0, **SIZES)


@pytest.fixture(scope="module")
def fine_tune():
    """(fine-tune, base) SD1.5 tensors of the tiny UNet's layout."""
    return tiny_sd15_pair()


def by_hand(flashface: dict[str, torch.Tensor], custom: dict, base: dict, strength: float) -> dict[str, torch.Tensor]:
    """W + strength * (custom - base) for every tensor SD1.5 has a partner for (by name), in fp32."""
    return {
        key: value + strength * (custom[key].float() - base[key].float()) if key in custom else value
        for key, value in flashface.items()
    }


def unet_state(path) -> dict[str, torch.Tensor]:
    return {key: value.clone() for key, value in load_unet(path).state_dict().items()}


@pytest.mark.parametrize(
    "suffix, prefix, dtype",
    [
        (".safetensors", FULL_CHECKPOINT, torch.float32),
        (".safetensors", FULL_CHECKPOINT, torch.float16),
        (".ckpt", FULL_CHECKPOINT, torch.bfloat16),
        (".safetensors", UNET_ONLY, torch.float16),
        (".safetensors", "", torch.float32),
        (".pth", "", torch.float32),
    ],
)
def test_the_graft_adds_the_difference_to_every_main_path_tensor_with_a_partner(
    flashface_file, fine_tune, tmp_path, suffix, prefix, dtype
):
    custom, base = fine_tune
    custom_file = write_sd15(tmp_path / f"custom{suffix}", custom, prefix, dtype)
    base_file = write_sd15(tmp_path / f"base{suffix}", base, prefix, dtype)
    before = unet_state(flashface_file)
    unet = load_unet(flashface_file)
    changed = graft_unet(unet, custom_file, base_file, strength=0.7)
    after = unet.state_dict()
    as_stored = {key: value.to(dtype) for key, value in custom.items()}, {k: v.to(dtype) for k, v in base.items()}
    expected = by_hand(before, *as_stored, strength=0.7)
    assert changed == len(custom) and set(graft_shapes(unet)) == set(custom)
    assert all(torch.equal(after[key], expected[key]) for key in after)
    untouched = [key for key in after if key not in custom]
    assert any(".reference_attn." in key for key in untouched) and "input_blocks.0.0.mask_weight" in untouched
    assert any(key.startswith("reference_input_blocks.") for key in untouched)
    assert all(torch.equal(after[key], before[key]) for key in untouched)
    assert not torch.equal(after["middle_block.0.in_layers.2.weight"], before["middle_block.0.in_layers.2.weight"])


def test_strength_zero_and_a_fine_tune_equal_to_its_base_change_nothing(flashface_file, fine_tune, tmp_path):
    custom, base = fine_tune
    custom_file, base_file = (
        write_sd15(tmp_path / "c.safetensors", custom),
        write_sd15(tmp_path / "b.safetensors", base),
    )
    same_as_base = write_sd15(tmp_path / "same.ckpt", base)
    before = unet_state(flashface_file)
    for checkpoint, strength in ((custom_file, 0.0), (same_as_base, 1.0)):
        unet = load_unet(flashface_file)
        graft_unet(unet, checkpoint, base_file, strength)
        assert all(torch.equal(value, before[key]) for key, value in unet.state_dict().items())


def test_a_grafted_model_in_fp16_is_the_fp32_sum_stored_in_fp16(flashface_file, fine_tune, tmp_path):
    custom, base = fine_tune
    custom_file, base_file = (
        write_sd15(tmp_path / "c.safetensors", custom),
        write_sd15(tmp_path / "b.safetensors", base),
    )
    unet = load_unet(flashface_file, dtype=torch.float16)
    loaded = {key: value.clone() for key, value in unet.state_dict().items()}
    graft_unet(unet, custom_file, base_file)
    expected = by_hand({key: value.float() for key, value in loaded.items()}, custom, base, 1.0)
    for key, value in unet.state_dict().items():
        assert value.dtype == loaded[key].dtype and torch.equal(value, expected[key].to(value.dtype)), key


@pytest.mark.parametrize(
    "what, message",
    [
        ("sdxl", "an SDXL checkpoint"),
        ("sd2", "an SD 2.x UNet reading 1024-wide text"),
        ("inpainting", "an inpainting UNet (9 input channels"),
        ("lora", "a LoRA, not a checkpoint"),
        ("flashface", "a FlashFace UNet file"),
        ("vae", "no SD1.5 UNet in it"),
        ("pruned", "an SD1.5 UNet without the tensor model.diffusion_model.out.2.bias"),
        ("nan", "holds values that are not numbers"),
    ],
)
def test_a_file_that_is_not_an_sd15_unet_is_refused_with_what_it_looks_like(
    flashface_file, fine_tune, tmp_path, what, message
):
    custom = dict(fine_tune[0])
    path = tmp_path / f"{what}.safetensors"
    if what == "sdxl":
        custom["label_emb.0.0.weight"] = torch.zeros(4, 4)
    elif what == "sd2":  # text read 1024 wide
        for key in [key for key in custom if key.endswith(("attn2.to_k.weight", "attn2.to_v.weight"))]:
            custom[key] = torch.zeros(custom[key].shape[0], 1024)
    elif what == "inpainting":
        custom["input_blocks.0.0.weight"] = torch.zeros(custom["input_blocks.0.0.weight"].shape[0], 9, 3, 3)
    elif what == "pruned":
        del custom["out.2.bias"]
    elif what == "nan":
        custom["out.2.bias"] = torch.full_like(custom["out.2.bias"], float("nan"))
    if what == "lora":
        save_state_dict({"lora_unet_input_blocks_1_1_proj_in.lora_down.weight": torch.zeros(4, 8)}, path)
    elif what == "flashface":
        path = flashface_file
    elif what == "vae":
        save_state_dict({"encoder.conv_in.weight": torch.zeros(8, 3, 3, 3)}, path)
    else:
        write_sd15(path, custom)
    base_file = write_sd15(tmp_path / "base.safetensors", fine_tune[1])
    with pytest.raises(ModelFileError) as refused:
        graft_unet(load_unet(flashface_file), path, base_file)
    text = str(refused.value)
    assert message in text, text
    assert str(path) in text and (what == "nan" or "(the checkpoint to graft)" in text)


def test_the_same_file_twice_and_a_strength_that_is_no_number_are_refused(flashface_file, fine_tune, tmp_path):
    base_file = write_sd15(tmp_path / "base.safetensors", fine_tune[1])
    with pytest.raises(InvalidInputError, match="are the same file"):
        graft_unet(load_unet(flashface_file), base_file, base_file)
    with pytest.raises(InvalidInputError, match="finite number"):
        graft_unet(
            load_unet(flashface_file), write_sd15(tmp_path / "c.safetensors", fine_tune[0]), base_file, float("nan")
        )


def test_convert_writes_the_grafted_file_once_and_generate_grafts_the_same_weights(
    flashface_file, fine_tune, tmp_path, model_arguments
):
    """`convert --graft` stores the fp32 sum (metadata names the files); loading it gives the weights
    grafted by hand, and `generate --graft` on the published file draws the image `generate` draws
    from the grafted file."""
    custom, base = fine_tune
    custom_file, base_file = write_sd15(tmp_path / "mine.safetensors", custom), write_sd15(tmp_path / "b.ckpt", base)
    graft = ["--graft", str(custom_file), "--graft-base", str(base_file), "--graft-strength", "0.8"]
    out = tmp_path / "grafted.safetensors"
    assert main(["convert", str(flashface_file), str(out), "--dtype", "fp32", *graft]) == 0
    expected = by_hand(unet_state(flashface_file), custom, base, 0.8)
    assert all(torch.equal(value, expected[key]) for key, value in load_unet(out).state_dict().items())
    with safe_open(str(out), "pt") as stored:
        recorded = json.loads((stored.metadata() or {})["grafted"])
    assert recorded == dict(checkpoint="mine.safetensors", base="b.ckpt", strength=0.8)

    flags = list(model_arguments)
    flags[flags.index("--unet") + 1] = str(flashface_file)
    common = ["generate", "--ref", str(PHOTOS[0]), "--prompt", "a portrait", *quick_flags(seed=2), "--dtype", "fp32"]
    assert main([*common, "--out", str(tmp_path / "grafted_on_load.png"), *flags, *graft]) == 0
    flags[flags.index("--unet") + 1] = str(out)
    assert main([*common, "--out", str(tmp_path / "from_file.png"), *flags]) == 0
    on_load, from_file = (Image.open(tmp_path / name).tobytes() for name in ("grafted_on_load.png", "from_file.png"))
    assert on_load == from_file  # and not the plain image: the published file's differs (a graft ignored fails)


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--graft", "x.safetensors"], "--graft and --graft-base go together"),
        (["--graft", "a", "--graft-base", "b"], "does not exist"),
    ],
)
def test_graft_flags_that_cannot_work_stop_before_anything_loads(flags, message, capsys):
    assert main(["generate", "--ref", "a.jpg", "--prompt", "x", "--out", "o.png", *flags]) == 1
    assert message in capsys.readouterr().err
