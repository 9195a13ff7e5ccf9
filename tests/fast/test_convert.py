"""The compact UNet file (`python -m flashface convert`): each tensor once, one dtype, loaded by
every loader bit for bit as the published file in that dtype."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors import safe_open
from test_unet import call_model, random_call

from flashface.__main__ import main
from flashface.errors import InvalidInputError, ModelFileError
from flashface.models.compact import COMPACT_FORMAT
from flashface.models.convert import convert_unet
from flashface.models.ops import WEIGHT_DTYPES
from flashface.models.unet_loading import load_unet
from seeded_weights import save_state_dict
from tiny_unet import tiny_unet_state_dict, write_tiny_unet


@pytest.fixture(scope="module")
def published(tmp_path_factory):
    """A tiny UNet in the published layout and format (a torch.save pickle, aliases twice, ref_middle)."""
    return write_tiny_unet(tmp_path_factory.mktemp("published") / "flashface.ckpt", seed=8, num_heads=8)


@pytest.mark.parametrize("name", list(WEIGHT_DTYPES))
def test_the_compact_file_loads_bit_for_bit_as_the_published_one_in_its_dtype(published, tmp_path, name):
    dtype = WEIGHT_DTYPES[name]
    compact = convert_unet(published, tmp_path / f"unet_{name}.safetensors", dtype)
    original, converted = load_unet(published, dtype=dtype), load_unet(compact, dtype=dtype)
    assert converted.config == original.config
    for (key, a), (other, b) in zip(original.state_dict().items(), converted.state_dict().items()):
        assert key == other and a.dtype == b.dtype and torch.equal(a.view(torch.uint8), b.view(torch.uint8)), key
    call = random_call(3)
    assert torch.equal(call_model(original, call), call_model(converted, call))


def test_the_compact_file_holds_each_tensor_once_and_says_what_it_is(published, tmp_path):
    compact = convert_unet(published, tmp_path / "unet.safetensors", torch.float16)
    source = torch.load(published, weights_only=True)
    with safe_open(compact, "pt") as file:
        keys, metadata = set(file.keys()), file.metadata()
        tensors = {key: file.get_tensor(key) for key in keys}
    assert not any(key.startswith(("ori_", "ref_middle.")) for key in keys)
    assert {key for key in source if not key.startswith(("ori_", "ref_middle."))} == keys
    assert set(json.loads(metadata["aliased"])) == {key[4:] for key in source if key.startswith("ori_")}
    assert metadata["format"] == COMPACT_FORMAT and metadata["weights"] == "F16" and metadata["num_heads"] == "8"
    kept_fp32 = [key for key, tensor in tensors.items() if tensor.dtype == torch.float32]
    assert {tensor.dtype for tensor in tensors.values()} == {torch.float16, torch.float32}
    assert all(tensors[key].dim() == 1 for key in kept_fp32) and len(kept_fp32) < len(keys) / 3  # the norms
    assert compact.stat().st_size < published.stat().st_size / 2.5  # fp16, each tensor once, no ref_middle


def test_convert_never_overwrites_and_leaves_no_partial_file(published, tmp_path):
    taken = tmp_path / "taken.safetensors"
    taken.write_bytes(b"mine")
    with pytest.raises(InvalidInputError, match="already exists"):
        convert_unet(published, taken, torch.float16)
    assert taken.read_bytes() == b"mine"
    with pytest.raises(InvalidInputError, match="ending in .safetensors"):
        convert_unet(published, tmp_path / "unet.ckpt", torch.float16)
    state = tiny_unet_state_dict(seed=8)
    key = next(key for key in state if key.startswith("ori_") and state[key].dim() > 1)
    state[key] = state[key] + 1  # an alias that is no copy: not the published file
    broken = save_state_dict(state, tmp_path / "edited.ckpt")
    out = tmp_path / "from_edited.safetensors"
    with pytest.raises(ModelFileError, match="should be identical copies"):
        convert_unet(broken, out, torch.float16)
    assert not out.exists() and not list(tmp_path.glob("*.partial"))


def test_convert_from_the_command_line(published, tmp_path, capsys):
    out = tmp_path / "cli.safetensors"
    assert main(["convert", str(published), str(out), "--dtype", "fp8_e4m3fn"]) == 0
    assert capsys.readouterr().out.strip() == str(out)
    assert load_unet(out, dtype=torch.float8_e4m3fn).weight_dtype == torch.float8_e4m3fn
    assert main(["convert", str(published), str(out)]) == 1  # exists: one clear line, no traceback
    assert "already exists" in capsys.readouterr().err


def test_a_missing_output_folder_or_a_folder_as_source_is_one_line_before_anything_is_read(
    published, tmp_path, capsys, monkeypatch
):
    from flashface.models import convert

    def unread(*args, **kwargs):
        raise AssertionError("the source was read before the output folder was checked")

    with monkeypatch.context() as patched:
        patched.setattr(convert, "checkpoint_source", unread)
        assert main(["convert", str(published), str(tmp_path / "missing" / "out.safetensors")]) == 1
    error = capsys.readouterr().err
    assert error.count("\n") == 1 and "The folder" in error and "missing does not exist" in error
    assert ".partial" not in error and "Traceback" not in error
    assert main(["convert", str(tmp_path), str(tmp_path / "out.safetensors")]) == 1
    assert "is a folder, not a model file" in capsys.readouterr().err


def test_converting_a_compact_file_again_says_to_convert_the_original(published, tmp_path):
    compact = convert_unet(published, tmp_path / "fp16.safetensors", torch.float16)
    with pytest.raises(
        InvalidInputError, match="already a compact FlashFace UNet file \\(fp16, converted from"
    ) as refused:
        convert_unet(compact, tmp_path / "fp8.safetensors", torch.float8_e4m3fn)
    assert f"{published.name}): to store it in another dtype, convert that original file again" in str(refused.value)


def test_a_compact_file_loaded_in_a_wider_dtype_says_what_that_costs(published, tmp_path, caplog):
    compact = convert_unet(published, tmp_path / "fp8.safetensors", torch.float8_e4m3fn)
    load_unet(compact, dtype=torch.float32)
    (warning,) = [record.getMessage() for record in caplog.records if record.levelname == "WARNING"]
    assert "holds fp8_e4m3fn weights: loaded as fp32 they take 4 times the memory with the precision of" in warning
    caplog.clear()
    load_unet(compact, dtype=torch.float8_e4m3fn)
    assert not [record for record in caplog.records if record.levelname == "WARNING"]


@pytest.mark.parametrize(
    "prefix, joined, suffix",
    [
        ("model.diffusion_model.", True, ".safetensors"),
        ("diffusion_model.", False, ".ckpt"),
        ("", False, ".safetensors"),
    ],
)
def test_a_flashface_unet_in_comfyuis_names_loads_and_converts_as_the_published_one(
    published, tmp_path, prefix, joined, suffix
):
    """What ComfyUI's ModelSave writes (ComfyUI's names under its prefix, the input conv whole) and
    UNet-only files in those names (the input conv's mask channel apart): the same UNet."""
    expected = load_unet(published).state_dict()
    stored = {prefix + key: value.clone() for key, value in expected.items()}
    if joined:
        mask = stored.pop(prefix + "input_blocks.0.0.mask_weight")
        stored[prefix + "input_blocks.0.0.weight"] = torch.cat([stored[prefix + "input_blocks.0.0.weight"], mask], 1)
    stored["first_stage_model.decoder.conv_out.weight"] = torch.zeros(3, 4, 3, 3)  # a VAE saved beside it
    path = save_state_dict(stored, tmp_path / f"comfy_named{suffix}")
    assert all(torch.equal(value, expected[key]) for key, value in load_unet(path).state_dict().items())
    compact = convert_unet(path, tmp_path / "compact.safetensors", torch.float32)
    assert all(torch.equal(value, expected[key]) for key, value in load_unet(compact).state_dict().items())


def test_an_sd15_checkpoint_picked_as_the_flashface_unet_says_what_it_is(tmp_path):
    from tiny_sd15 import sd15_unet, write_sd15

    path = write_sd15(tmp_path / "realistic_vision.safetensors", sd15_unet(1))
    with pytest.raises(
        ModelFileError, match="is an SD1.5 checkpoint \\(a UNet without FlashFace's reference"
    ) as refused:
        load_unet(path)
    assert "FlashFace Graft Checkpoint" in str(refused.value)
