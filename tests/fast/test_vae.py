"""SD 1.x VAE: parity with the official implementation (fixtures), the real file's key set,
the standard naming, the official/standard attention switch, dtypes and wrong files."""

from __future__ import annotations

import json

import pytest
import torch
from PIL import Image

from demo_cases import DemoCase, demo_cases
from flashface.errors import ModelFileError
from flashface.face import prepare_reference
from flashface.models.checkpoint import StateDictCheckpoint
from flashface.models.vae import LATENT_SCALE, load_vae
from flashface.models.vae_codec import VAECodec
from parity import ManifestCheckpoint, cases, manifest
from tiny_vae import tiny_vae_state_dict, write_tiny_vae

VAE_CASES = cases("vae")


@pytest.mark.parametrize("case", VAE_CASES, ids=lambda case: case.name)
def test_parity_with_the_official_vae(case):
    weights = [p for p in case.weights_dir().iterdir() if p.name.startswith("weights.")]
    assert weights
    architecture = case.config["architecture"]
    for path in weights:
        vae = load_vae(path)
        assert list(vae.config.dim_mult) == architecture["dim_mult"] and vae.config.dim == architecture["dim"]
        with torch.no_grad():
            mean = vae.encode(case.inputs["image"])
            decoded = vae.decode(case.inputs["latent"])
        torch.testing.assert_close(mean, case.expected["encode_mean"], atol=case.atol, rtol=case.rtol)
        torch.testing.assert_close(decoded, case.expected["decoded"], atol=case.atol, rtol=case.rtol)


@pytest.mark.parametrize("case", demo_cases())
def test_reference_latents_are_the_posterior_mean_in_the_official_latent_scale(case):
    """The whole official flow's reference latents (after padding and PadToSquare) from its crops."""
    demo = DemoCase(case)
    vae = load_vae(demo.case.weights_dir() / demo.config["weights"]["vae"])
    crops = [Image.fromarray(face.numpy()) for face in demo.expected["references_224"]]
    latents = VAECodec(vae, "cpu").encode_faces(crops)
    torch.testing.assert_close(latents, demo.expected["reference_latents"], atol=1e-4, rtol=1e-4)
    with torch.no_grad():  # the posterior mean, image by image (so Cancel is seen between images)
        mean = torch.cat([vae.encode(prepare_reference(crop)[None]) for crop in crops])
    torch.testing.assert_close(latents, mean * LATENT_SCALE, atol=0, rtol=0)


def test_the_real_file_key_set_loads_strictly_on_meta():
    path = manifest("sd_v1_vae.json")
    vae = load_vae(ManifestCheckpoint(path), device="meta")
    assert vae.config.dim == 128 and vae.config.dim_mult == (1, 2, 4, 4) and vae.config.num_res_blocks == 2
    entries = json.loads(path.read_text())["keys"]
    state = {name: torch.empty(shape, device="meta") for name, shape, _ in entries}
    assert set(state) == set(vae.state_dict())
    assert sum(p.numel() for p in vae.parameters()) == 83_653_863

    missing = dict(state)
    missing.pop("decoder.middle.1.proj.bias")
    with pytest.raises(ModelFileError, match="missing"):
        load_vae(StateDictCheckpoint(missing), device="meta")
    extra = {**state, "decoder.extra.weight": torch.empty(3, device="meta")}
    with pytest.raises(ModelFileError, match="not part of it"):
        load_vae(StateDictCheckpoint(extra), device="meta")
    wrong = {**state, "encoder.head.2.bias": torch.empty(9, device="meta")}
    with pytest.raises(ModelFileError, match="shape"):
        load_vae(StateDictCheckpoint(wrong), device="meta")


def _round_trip_inputs():
    generator = torch.Generator().manual_seed(3)
    return torch.rand(2, 3, 32, 32, generator=generator) * 2 - 1, torch.randn(2, 4, 4, 4, generator=generator)


@pytest.mark.parametrize("prefix", ["", "first_stage_model."])
def test_standard_naming_loads_the_same_weights(prefix):
    official = load_vae(StateDictCheckpoint(tiny_vae_state_dict(seed=5)))
    standard_state = {prefix + k: v for k, v in tiny_vae_state_dict(seed=5, naming="standard").items()}
    if prefix:
        standard_state["model.diffusion_model.out.0.weight"] = torch.ones(2)  # the rest of a whole checkpoint
    standard = load_vae(StateDictCheckpoint(standard_state))
    for key, value in official.state_dict().items():
        assert torch.equal(value, standard.state_dict()[key]), key
    images, latents = _round_trip_inputs()
    with torch.no_grad():
        assert torch.equal(official.encode(images), standard.encode(images))
        assert torch.equal(official.decode(latents), standard.decode(latents))


def test_standard_attention_weights_stored_as_linear_load_too():
    state = tiny_vae_state_dict(seed=5, naming="standard")
    linear = {k: (v[:, :, 0, 0] if ".attn_1." in k and v.dim() == 4 else v) for k, v in state.items()}
    a, b = load_vae(StateDictCheckpoint(state)), load_vae(StateDictCheckpoint(linear))
    assert all(torch.equal(v, b.state_dict()[k]) for k, v in a.state_dict().items())


def test_files_on_disk_in_both_formats(tmp_path):
    images, _ = _round_trip_inputs()
    outputs = []
    for name, naming in (("a.safetensors", "official"), ("b.pth", "official"), ("c.safetensors", "standard")):
        vae = load_vae(write_tiny_vae(tmp_path / name, seed=2, naming=naming))
        with torch.no_grad():
            outputs.append(vae.encode(images))
    assert outputs[0].shape == (2, 4, 4, 4)  # four levels: factor 8
    assert all(torch.equal(outputs[0], other) for other in outputs[1:])


def standard_attention(block, x):
    """Textbook single-head attention of a mid block, written out."""
    b, c, h, w = x.shape
    qkv = block.to_qkv(block.norm(x)).reshape(b, 3, c, h * w)
    q, k, v = qkv[:, 0].transpose(1, 2), qkv[:, 1], qkv[:, 2].transpose(1, 2)
    weights = torch.softmax(q @ k / c**0.5, dim=-1)
    out = (weights @ v).transpose(1, 2).reshape(b, c, h, w)
    return x + block.proj(out)


def test_attention_switch_selects_official_or_standard():
    state = tiny_vae_state_dict(seed=8)
    official = load_vae(StateDictCheckpoint(state))
    standard = load_vae(StateDictCheckpoint(state), attention="standard")
    x = torch.randn(1, 32, 4, 4, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected = standard_attention(standard.encoder.middle[1], x)
        torch.testing.assert_close(standard.encoder.middle[1](x), expected, atol=1e-5, rtol=1e-5)
        official_out = official.encoder.middle[1](x)
        assert (official_out - expected).abs().max() > 1e-2
        # the official output is the standard attention result read as [c, h, w] from [hw, c]
        block = official.encoder.middle[1]
        qkv = block.to_qkv(block.norm(x)).reshape(1, 3, 32, 16)
        attended = torch.softmax(qkv[:, 0].transpose(1, 2) @ qkv[:, 1] / 32**0.5, -1) @ qkv[:, 2].transpose(1, 2)
        torch.testing.assert_close(official_out, x + block.proj(attended.reshape(1, 32, 4, 4)), atol=1e-5, rtol=1e-5)
        images, _ = _round_trip_inputs()
        assert not torch.allclose(official.encode(images), standard.encode(images))


@pytest.mark.parametrize("dtype, tolerance", [(torch.bfloat16, 5e-2), (torch.float16, 1e-2)])
def test_half_precision_is_close_to_fp32(dtype, tolerance):
    state = tiny_vae_state_dict(seed=4)
    reference, half = load_vae(StateDictCheckpoint(state)), load_vae(StateDictCheckpoint(state), dtype=dtype)
    assert half.conv1.weight.dtype == dtype and half.encoder.head[0].weight.dtype == torch.float32
    images, latents = _round_trip_inputs()
    with torch.no_grad():
        for ours, theirs in (
            (half.encode(images), reference.encode(images)),
            (half.decode(latents), reference.decode(latents)),
        ):
            assert ours.dtype == dtype
            assert (ours.float() - theirs).abs().max() <= tolerance * theirs.abs().max()


def test_wrong_files_are_refused_with_what_was_expected():
    with pytest.raises(ModelFileError, match="encoder.conv_in.weight"):
        load_vae(StateDictCheckpoint({"model.weight": torch.ones(2)}))
    flux_like = dict(tiny_vae_state_dict(z_dim=16, naming="standard"))
    with pytest.raises(ModelFileError, match="16 latent channels"):
        load_vae(StateDictCheckpoint(flux_like))
    with pytest.raises(ModelFileError, match="VAE"):
        load_vae(ManifestCheckpoint(manifest("flashface_unet.json")), device="meta")


def test_tiled_decode_is_the_whole_decode_when_one_tile_covers_the_latent():
    vae = load_vae(StateDictCheckpoint(tiny_vae_state_dict(seed=4)))
    latents = torch.randn(2, 4, 12, 20, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        assert torch.equal(vae.decode_tiled(latents, tile=20), vae.decode(latents).float())


def test_tiled_decode_assembles_the_tiles():
    """Where one tile alone covers the image, the pixels are that tile's own decode; the seams
    blend two tiles; the image keeps its size."""
    vae = load_vae(StateDictCheckpoint(tiny_vae_state_dict(seed=4)))
    latents = torch.randn(1, 4, 24, 40, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        tiled = vae.decode_tiled(latents, tile=16, overlap=4)
        top_left = vae.decode(latents[:, :, :16, :16]).float()
        bottom_right = vae.decode(latents[:, :, -16:, -16:]).float()
    assert tiled.shape == (1, 3, 24 * 8, 40 * 8) and torch.isfinite(tiled).all()
    # tile rows start at latent rows 0 and 8, columns at 0, 12 and 24 (16 cells, 4 of overlap)
    torch.testing.assert_close(tiled[..., :64, :96], top_left[..., :64, :96])
    torch.testing.assert_close(tiled[..., -64:, -96:], bottom_right[..., -64:, -96:])
    seam = tiled[..., :64, 100:124]  # latent columns 12.5-15.5: covered by the first two tiles
    assert not torch.allclose(seam, top_left[..., :64, 100:124])
