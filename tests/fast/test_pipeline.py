"""FlashFacePipeline with tiny seeded models: shapes, seeds, presets, reference padding, encoded
prompts, progress and cancellation, dtypes, and clear errors."""

from __future__ import annotations

import random
from typing import Any

import pytest
import torch
from PIL import Image

from flashface.errors import GenerationCancelled, InvalidInputError
from flashface.models.clip_text import encode_texts
from flashface.models.unet_loading import load_unet
from flashface.models.vae import LATENT_SCALE
from flashface.people import padded_indices
from flashface.pipeline import FlashFacePipeline
from flashface.prompts import (
    NEGATIVE_POSTFIX,
    POSITIVE_POSTFIX,
    encode_prompt,
    official_negative,
    official_positive,
)
from flashface.settings import GenerationSettings

SIZE = 64
QUICK: dict[str, Any] = dict(steps=2, width=SIZE, height=SIZE)


def random_faces(count: int, seed: int = 0) -> list[Image.Image]:
    generator = torch.Generator().manual_seed(seed)
    pixels = torch.randint(0, 256, (count, 224, 224, 3), generator=generator, dtype=torch.uint8)
    return [Image.fromarray(face.numpy()) for face in pixels]


def test_generate_returns_images_and_latents_of_the_requested_size(pipeline):
    result = pipeline.generate(
        random_faces(2), "a portrait", "", GenerationSettings(seed=1, batch_size=3, steps=2, width=80, height=64)
    )
    assert result.images.shape == (3, 64, 80, 3)
    assert result.images.dtype == torch.float32 and 0 <= result.images.min() <= result.images.max() <= 1
    assert result.latents.shape == (3, 4, 8, 10)
    assert len(result.to_pil()) == 3 and result.to_pil()[0].size == (80, 64)
    assert result.model_timesteps == [999, 499]  # trailing timesteps for 2 steps


def test_images_are_the_decoded_latents_in_the_official_8_bit_levels(pipeline):
    result = pipeline.generate(random_faces(1), "a portrait", "", GenerationSettings(seed=2, **QUICK))
    with torch.no_grad():
        decoded = pipeline.vae.decode(result.latents / LATENT_SCALE)
    official = (decoded.permute(0, 2, 3, 1).numpy() * 127.5 + 127.5).clip(0, 255).astype("uint8")
    assert torch.equal(result.images, torch.from_numpy(official).float() / 255)
    assert [image.tobytes() for image in result.to_pil()] == [image.tobytes() for image in official]


def test_same_seed_same_images_and_another_seed_differs(pipeline):
    faces = random_faces(2)
    first = pipeline.generate(faces, "a portrait", "", GenerationSettings(seed=5, **QUICK))
    again = pipeline.generate(faces, "a portrait", "", GenerationSettings(seed=5, **QUICK))
    other = pipeline.generate(faces, "a portrait", "", GenerationSettings(seed=6, **QUICK))
    assert torch.equal(first.latents, again.latents)
    assert not torch.allclose(first.latents, other.latents)


@pytest.mark.parametrize("solver", ["euler_ancestral", "dpmpp_2m_sde"])
def test_stochastic_solvers_are_reproducible_per_seed(pipeline, solver):
    faces = random_faces(1)
    runs = [
        pipeline.generate(faces, "a portrait", "", GenerationSettings(seed=9, solver=solver, **QUICK)).latents
        for _ in range(2)
    ]
    assert torch.equal(*runs)


def test_the_references_change_the_result(pipeline):
    one = pipeline.generate(random_faces(1, seed=1), "a portrait", "", GenerationSettings(seed=3, **QUICK))
    other = pipeline.generate(random_faces(1, seed=2), "a portrait", "", GenerationSettings(seed=3, **QUICK))
    assert not torch.allclose(one.latents, other.latents)


def test_faces_as_images_or_prepared_tensors_agree(pipeline):
    from flashface.face import prepare_reference

    faces = random_faces(2)
    as_images = pipeline.generate(faces, "a portrait", "", GenerationSettings(seed=4, **QUICK))
    as_tensor = pipeline.generate(
        torch.stack([prepare_reference(f) for f in faces]), "a portrait", "", GenerationSettings(seed=4, **QUICK)
    )
    assert torch.equal(as_images.latents, as_tensor.latents)


def test_encoded_prompts_give_the_same_images_as_text(pipeline):
    faces = random_faces(1)
    encoded_only = FlashFacePipeline(pipeline.unet, pipeline.vae, text_encoder=None, device="cpu")
    from_text = pipeline.generate(faces, "a portrait", "blurry", GenerationSettings(seed=8, **QUICK))
    positive, negative = (encode_prompt(pipeline.text_encoder, text, "cpu") for text in ("a portrait", "blurry"))
    from_encoded = encoded_only.generate(faces, positive, negative, GenerationSettings(seed=8, **QUICK))
    torch.testing.assert_close(from_text.latents, from_encoded.latents)

    as_written = pipeline.generate(
        faces, "a portrait", "blurry", GenerationSettings(seed=8, prompt_postfixes=False, **QUICK)
    )
    with torch.no_grad():
        embeddings = encode_texts(pipeline.text_encoder, ["a portrait", "blurry"], "cpu").split(1)
    from_embeddings = encoded_only.generate(
        faces, *embeddings, GenerationSettings(seed=8, prompt_postfixes=False, **QUICK)
    )
    torch.testing.assert_close(as_written.latents, from_embeddings.latents)
    assert not torch.allclose(as_written.latents, from_text.latents)
    with pytest.raises(InvalidInputError, match="text encoder"):
        encoded_only.generate(faces, "a portrait", negative, GenerationSettings(seed=8, **QUICK))


def test_official_postfixes_are_joined_like_the_demo():
    assert official_positive("a man") == f"a man, {POSITIVE_POSTFIX}"
    assert official_positive("") == f", {POSITIVE_POSTFIX}"
    assert official_negative("") == NEGATIVE_POSTFIX
    assert official_negative("hat") == f"hat, {NEGATIVE_POSTFIX}"
    assert POSITIVE_POSTFIX.startswith("best quality, masterpiece,ultra") and NEGATIVE_POSTFIX.startswith(
        "blurry, ugly"
    )


def test_an_encoded_prompt_gets_the_words_of_the_side_it_is_used_on(pipeline):
    encoded = encode_prompt(pipeline.text_encoder, "a hat", "cpu")
    with torch.no_grad():
        expected = encode_texts(
            pipeline.text_encoder, ["a hat", official_positive("a hat"), official_negative("a hat")], "cpu"
        )
    torch.testing.assert_close(torch.cat([encoded.as_written, encoded.as_positive, encoded.as_negative]), expected)
    positive, negative = pipeline.encode_prompts(encoded, encoded, batch=2)
    assert torch.equal(positive, encoded.as_positive.expand(2, -1, -1))
    assert torch.equal(negative, encoded.as_negative.expand(2, -1, -1))
    positive, negative = pipeline.encode_prompts(encoded, encoded, batch=1, prompt_postfixes=False)
    assert torch.equal(positive, encoded.as_written) and torch.equal(negative, encoded.as_written)


def test_defaults_are_the_official_demo(pipeline):
    """Padding to four and the official prompt words are what `generate` does unless told otherwise."""
    faces = random_faces(2)
    default = pipeline.generate(faces, "a portrait", "hat", GenerationSettings(seed=12, **QUICK))
    spelled_out = pipeline.generate(
        [faces[i] for i in padded_indices(2, random.Random(12))],
        official_positive("a portrait"),
        official_negative("hat"),
        GenerationSettings(seed=12, pad_references=False, prompt_postfixes=False, **QUICK),
    )
    # the padded faces are attended to once each with their counts, the spelled-out ones as copies: the
    # same softmax, equal within float rounding
    torch.testing.assert_close(default.latents, spelled_out.latents, atol=1e-4, rtol=1e-4)
    assert (default.images - spelled_out.images).abs().max() <= 1 / 255


def test_padding_to_four_references_is_seeded_and_keeps_every_face():
    indices = padded_indices(2, random.Random(7))
    assert indices[:2] == [0, 1] and len(indices) == 4 and set(indices) <= {0, 1}
    assert padded_indices(2, random.Random(7)) == indices
    assert padded_indices(5, random.Random(7)) == [0, 1, 2, 3, 4]


def test_padding_is_an_option_that_changes_the_references(pipeline):
    faces = random_faces(2)
    # a seed whose padding weighs the faces unequally (a balanced [0, 1, 0, 1] attends alike)
    seed = next(s for s in range(100) if sorted(padded_indices(2, random.Random(s))) != [0, 0, 1, 1])
    indices = padded_indices(2, random.Random(seed))
    plain = pipeline.generate(faces, "a portrait", "", GenerationSettings(seed=seed, pad_references=False, **QUICK))
    padded = pipeline.generate(faces, "a portrait", "", GenerationSettings(seed=seed, **QUICK))
    explicit = pipeline.generate(
        [faces[i] for i in indices], "a portrait", "", GenerationSettings(seed=seed, pad_references=False, **QUICK)
    )
    torch.testing.assert_close(padded.latents, explicit.latents, atol=1e-4, rtol=1e-4)
    assert not torch.allclose(plain.latents, padded.latents, atol=1e-3)
    four = random_faces(4)
    assert torch.equal(
        pipeline.generate(four, "a portrait", "", GenerationSettings(seed=seed, **QUICK)).latents,
        pipeline.generate(four, "a portrait", "", GenerationSettings(seed=seed, pad_references=False, **QUICK)).latents,
    )


def test_preset_changes_the_result(pipeline):
    faces = random_faces(1)
    plain = pipeline.generate(faces, "a portrait", "", GenerationSettings(seed=4, **QUICK))
    aged = pipeline.generate(faces, "a portrait", "", GenerationSettings(seed=4, **QUICK).with_preset("age_change"))
    assert not torch.allclose(plain.latents, aged.latents)


def test_progress_reports_every_step_and_cancel_stops_between_steps(pipeline):
    seen = []
    pipeline.generate(
        random_faces(1),
        "a portrait",
        "",
        GenerationSettings(seed=0, steps=3, width=SIZE, height=SIZE),
        progress=lambda step, total, x0: seen.append((step, total, tuple(x0.shape))),
    )
    assert seen == [(0, 3, (1, 4, 8, 8)), (1, 3, (1, 4, 8, 8)), (2, 3, (1, 4, 8, 8))]

    calls = []

    def cancel_after_two_checks():
        calls.append(1)
        return len(calls) > 2

    with pytest.raises(GenerationCancelled, match="step 3 of 5"):
        pipeline.generate(
            random_faces(1),
            "a portrait",
            "",
            GenerationSettings(seed=0, steps=5, width=SIZE, height=SIZE),
            should_cancel=cancel_after_two_checks,
        )


def test_face_mask_replaces_the_box(pipeline):
    faces = random_faces(1)
    box = pipeline.generate(
        faces, "a portrait", "", GenerationSettings(seed=4, face_box=(0.25, 0.25, 0.75, 0.75), **QUICK)
    )
    mask = torch.zeros(32, 32)
    mask[8:24, 8:24] = 1
    masked = pipeline.generate(faces, "a portrait", "", GenerationSettings(seed=4, **QUICK), face_mask=mask)
    torch.testing.assert_close(box.latents, masked.latents)
    no_hint = pipeline.generate(faces, "a portrait", "", GenerationSettings(seed=4, face_box=(0, 0, 0, 0), **QUICK))
    assert not torch.allclose(box.latents, no_hint.latents)


@pytest.mark.parametrize(
    ("dtype", "tolerance"),
    [(torch.bfloat16, 0.1), (torch.float16, 0.1), (torch.float8_e4m3fn, 0.3), (torch.float8_e5m2, 0.5)],
)
def test_lower_precision_unet_runs_close_to_fp32(tiny_model_files, pipeline, dtype, tolerance):
    half = FlashFacePipeline(
        load_unet(tiny_model_files["unet_name"], dtype=dtype), pipeline.vae, pipeline.text_encoder, device="cpu"
    )
    faces = random_faces(1)
    reference = pipeline.generate(faces, "a portrait", "", GenerationSettings(seed=4, **QUICK))
    result = half.generate(faces, "a portrait", "", GenerationSettings(seed=4, **QUICK))
    assert result.latents.dtype == torch.float32 and torch.isfinite(result.latents).all()
    deviation = float((result.latents - reference.latents).abs().max() / reference.latents.abs().max())
    print(f"\n{dtype}: latents off by {deviation:.3f} of their largest value")
    assert deviation < tolerance


def test_a_size_that_is_no_multiple_of_eight_is_explained(pipeline):
    with pytest.raises(InvalidInputError, match="multiple of 8"):
        pipeline.generate(random_faces(1), "a portrait", "", GenerationSettings(**{**QUICK, "width": 100}))


def test_a_negative_prompt_given_as_embeddings_cannot_take_the_official_words(pipeline):
    with pytest.raises(InvalidInputError, match="negative prompt is given as embeddings"):
        pipeline.generate(random_faces(1), "a portrait", torch.zeros(1, 77, 32), GenerationSettings(**QUICK))


def test_settings_must_be_a_settings_object(pipeline):
    with pytest.raises(InvalidInputError, match="GenerationSettings"):
        pipeline.generate(random_faces(1), "a portrait", "", dict(QUICK))


def test_more_references_than_a_generation_takes_are_refused(pipeline):
    with pytest.raises(InvalidInputError, match="17 reference faces were given; FlashFace takes at most 16"):
        pipeline.generate(random_faces(17), "a portrait", "", GenerationSettings(**QUICK))


def test_no_reference_face_is_explained(pipeline):
    with pytest.raises(InvalidInputError, match="at least one reference face"):
        pipeline.generate([], "a portrait", "", GenerationSettings(**QUICK))


class RunsOutOfMemory(torch.nn.Module):
    """The pipeline's VAE on a device with little memory: it raises the allocator's error for a
    decode of more than `max_cells` latent cells."""

    def __init__(self, vae, max_cells: int):
        super().__init__()
        self.vae, self.max_cells, self.calls = vae, max_cells, []

    def encode(self, images):
        self.calls.append(("encode", images.shape[0]))
        return self.vae.encode(images)

    def decode(self, latents, should_cancel=None):
        self.calls.append(("decode", tuple(latents.shape)))
        if latents[0, 0].numel() * latents.shape[0] > self.max_cells:
            raise RuntimeError("MPS backend out of memory (MPS allocated: 17.00 GB)")
        return self.vae.decode(latents, should_cancel)

    def decode_tiled(self, latents, should_cancel=None):
        return type(self.vae).decode_tiled(self, latents, tile=4, overlap=2, should_cancel=should_cancel)

    @property
    def scale_factor(self):
        return self.vae.scale_factor


@pytest.mark.parametrize("max_cells, expected", [(64, "each image whole"), (16, "in tiles")])
def test_the_vae_works_image_by_image_and_out_of_memory_decodes_in_tiles(pipeline, max_cells, expected):
    faces = random_faces(2)
    whole = pipeline.generate(faces, "a portrait", "", GenerationSettings(seed=3, batch_size=2, **QUICK))
    small = RunsOutOfMemory(pipeline.vae, max_cells)
    constrained = FlashFacePipeline(pipeline.unet, small, pipeline.text_encoder, device="cpu")
    result = constrained.generate(faces, "a portrait", "", GenerationSettings(seed=3, batch_size=2, **QUICK))
    torch.testing.assert_close(result.latents, whole.latents, atol=0, rtol=0)
    # the 2 faces (padded to 4 references by counts: each encoded once)
    assert [call for call in small.calls if call[0] == "encode"] == [("encode", 1)] * 2
    decodes = [shape for kind, shape in small.calls if kind == "decode"]
    assert decodes[0] == (1, 4, 8, 8)
    unscaled = result.latents / LATENT_SCALE
    with torch.no_grad():
        if expected == "each image whole":
            assert decodes == [(1, 4, 8, 8)] * 2
            decoded = torch.cat([pipeline.vae.decode(z[None]) for z in unscaled])
        else:
            whole_tries = [shape for shape in decodes if shape[-2:] != (4, 4)]
            assert whole_tries == [(1, 4, 8, 8)] * 2 and len(decodes) > 2  # each image tried whole, then tiled
            decoded = torch.cat([small.decode_tiled(z[None]) for z in unscaled])
    levels = (decoded.permute(0, 2, 3, 1) * 127.5 + 127.5).clamp(0, 255).to(torch.uint8)
    assert torch.equal(result.images, levels.float() / 255)


def test_decoding_stops_between_images_blocks_and_tiles_when_cancelled(pipeline):
    latents = torch.randn(3, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    asked = []

    def cancel_on_second_question():
        asked.append(True)
        return len(asked) == 2

    blocks = len(pipeline.vae.decoder.upsamples)
    with pytest.raises(GenerationCancelled, match="before image 2 of 3"):  # image 1, its blocks, then image 2
        pipeline.codec.decode(latents, lambda: bool(asked.append(True)) or len(asked) == 2 + blocks)
    asked.clear()
    with pytest.raises(GenerationCancelled, match="inside an image"):
        pipeline.codec.decode(latents, cancel_on_second_question)
    tiling = FlashFacePipeline(pipeline.unet, RunsOutOfMemory(pipeline.vae, 16), pipeline.text_encoder, device="cpu")
    asked.clear()
    with pytest.raises(GenerationCancelled, match="between two tiles"):
        tiling.codec.decode(latents, cancel_on_second_question)  # image 1 asked, then its first tile


def test_a_latent_that_decodes_to_no_numbers_is_refused(pipeline):
    latents = torch.zeros(2, 4, 8, 8)
    latents[1, 0, 0, 0] = 1e30
    with pytest.raises(InvalidInputError, match="Latent 2 of 2 decodes to values that are not numbers"):
        pipeline.codec.decode(latents)


def test_an_error_that_is_not_out_of_memory_is_not_retried(pipeline):
    class Broken(RunsOutOfMemory):
        def decode(self, latents, should_cancel=None):
            raise RuntimeError("cuDNN error: CUDNN_STATUS_EXECUTION_FAILED")

    broken = FlashFacePipeline(pipeline.unet, Broken(pipeline.vae, 0), pipeline.text_encoder, device="cpu")
    with pytest.raises(RuntimeError, match="CUDNN_STATUS"):
        broken.generate(random_faces(1), "a portrait", "", GenerationSettings(seed=3, **QUICK))
