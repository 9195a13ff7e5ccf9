"""The nodes' helpers that import no ComfyUI, in this process: the widgets declared from the settings,
the checks of what arrives on a link, IMAGE <-> PIL, and the Person node's chaining. (The nodes that
need ComfyUI run in tests/smoke and tests/comfyui; ComfyUI's modules cannot be imported here, so
importing these modules at all shows they need none.)"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from PIL import Image

from pack_modules import node_module, pack_module

declare = node_module("declare")
inputs = node_module("inputs")
images = node_module("images")
people = node_module("people")
errors = pack_module("flashface.errors")
settings = pack_module("flashface.settings")


@pytest.mark.parametrize("name", [item.name for item in dataclasses.fields(settings.GenerationSettings)])
def test_each_setting_widget_has_the_settings_default_range_and_help(name):
    if name == "face_box":  # four widgets, one per corner
        corners = declare.box_inputs()
        assert [spec[1]["default"] for spec in corners.values()] == list(settings.default("face_box"))
        assert all(spec[1]["min"] == 0.0 and spec[1]["max"] == 1.0 and spec[1]["tooltip"] for spec in corners.values())
        return
    kind, spec = declare.setting_input(name)
    info = settings.setting_info(name)
    assert spec["default"] == settings.default(name)
    assert spec["tooltip"].startswith(info.help) and f"Official: {settings.default(name)}." in spec["tooltip"]
    if info.choices is not None:
        assert kind == list(info.choices)
    else:
        assert kind == {int: "INT", float: "FLOAT", bool: "BOOLEAN"}[info.kind]
        assert (spec.get("min"), spec.get("max")) == (info.low, info.high)


def test_widget_values_become_settings_and_a_bad_value_is_refused_by_name():
    built = declare.settings_from_inputs(
        dict(seed=3, steps=9, face_x1=0.1, face_y1=0.2, face_x2=0.5, face_y2=0.6, text_guidance=6.0)
    )
    assert built == settings.GenerationSettings(seed=3, steps=9, face_box=(0.1, 0.2, 0.5, 0.6), text_guidance=6.0)
    assert declare.settings_from_inputs({}) == settings.GenerationSettings()
    with pytest.raises(errors.InvalidInputError, match="steps must be a whole number at least 1"):
        declare.settings_from_inputs(dict(steps=0))


def test_a_node_declares_its_docstring_and_outputs():
    class Example(declare.FlashFaceNode):
        """Line one
        and two."""

    assert Example.DESCRIPTION == "Line one and two." and Example.CATEGORY == "FlashFace"
    assert declare.outputs(("a", "IMAGE", "tip a"), ("b", "INT", "tip b")) == (
        ("IMAGE", "INT"),
        ("a", "b"),
        ("tip a", "tip b"),
    )


@pytest.mark.parametrize(
    "value, message",
    [
        ("text", "got text; connect an IMAGE"),
        (torch.zeros(2, 8, 8), "got a tensor of shape [2, 8, 8]; an IMAGE is"),
        (torch.zeros(1, 0, 8, 3), "an IMAGE is"),
        (torch.full((1, 4, 4, 3), float("nan")), "not numbers"),
        ([[torch.zeros(1)]], "a list (a ComfyUI CONDITIONING is one)"),
    ],
)
def test_what_is_not_an_image_is_refused_naming_the_input(value, message):
    with pytest.raises(errors.InvalidInputError, match="photos") as refused:
        inputs.expect_image(value, "photos")
    assert message in str(refused.value)


def test_masks_latents_and_conditioning_are_checked():
    assert inputs.expect_mask(torch.ones(3, 3), "face_mask").shape == (3, 3)
    with pytest.raises(errors.InvalidInputError, match="at least one mask"):
        inputs.expect_mask(torch.zeros(0, 8, 8), "face_mask")
    with pytest.raises(errors.InvalidInputError, match="4 channels"):
        inputs.expect_latent({"samples": torch.zeros(1, 16, 8, 8)}, "samples")
    with pytest.raises(errors.InvalidInputError, match="not numbers"):
        inputs.expect_latent({"samples": torch.full((1, 4, 8, 8), float("inf"))}, "samples")
    embedding = torch.zeros(1, 77, 768)
    assert inputs.expect_conditioning([[embedding, {}]], "positive", 768) is not None
    with pytest.raises(errors.InvalidInputError, match="2048 wide, but the FlashFace UNet reads prompts 768"):
        inputs.expect_conditioning([[torch.zeros(1, 77, 2048), {}]], "positive", 768)
    with pytest.raises(errors.InvalidInputError, match="connect a CONDITIONING"):
        inputs.expect_conditioning("a prompt", "positive", 768)


def test_images_convert_to_pil_and_back_exactly():
    pixels = np.random.default_rng(0).integers(0, 256, (5, 7, 3), dtype=np.uint8)
    photo = Image.fromarray(pixels, "RGB")
    batch = images.pil_to_batch([photo, photo])
    assert batch.shape == (2, 5, 7, 3) and batch.dtype == torch.float32
    back = images.image_batches_to_pil([batch, images.pil_to_image(photo)[0]], "images")
    assert len(back) == 3 and all(np.array_equal(np.asarray(image), pixels) for image in back)
    gray = images.image_batches_to_pil([torch.full((1, 2, 2, 1), 0.5)], "images")[0]
    assert gray.mode == "RGB" and gray.getpixel((0, 0)) == (128, 128, 128)


def test_person_nodes_chain_in_order_and_a_link_of_another_kind_is_explained():
    faces = torch.rand(2, 224, 224, 3, generator=torch.Generator().manual_seed(0))
    node = people.FlashFacePerson()
    (first,) = node.person(faces, face_x1=0.05, face_y1=0.2, face_x2=0.35, face_y2=0.5)
    (both,) = node.person(faces[:1], people=first, face_x1=0.6, face_y1=0.2, face_x2=0.9, face_y2=0.5)
    assert [len(person.faces) for person in both] == [2, 1]
    assert [person.face_box for person in both] == [(0.05, 0.2, 0.35, 0.5), (0.6, 0.2, 0.9, 0.5)]
    assert people.faces_or_people(None, both) is both
    with pytest.raises(errors.InvalidInputError, match="Both are connected"):
        people.faces_or_people(faces, both)
    with pytest.raises(errors.InvalidInputError, match="one of the two"):
        people.faces_or_people(None, None)
    with pytest.raises(errors.InvalidInputError, match="connect the people output of FlashFace Person"):
        node.person(faces, people=[faces], face_x1=0.1, face_y1=0.1, face_x2=0.2, face_y2=0.2)


def test_a_batch_of_different_masks_is_refused_and_repeated_masks_are_one():
    one = torch.zeros(8, 8)
    one[2:5, 2:5] = 1
    assert torch.equal(inputs.expect_mask(one.expand(3, 8, 8), "face_mask"), one)
    with pytest.raises(errors.InvalidInputError, match="got a batch of 2 different masks; it takes one mask"):
        inputs.expect_mask(torch.stack([one, 1 - one]), "face_mask")
