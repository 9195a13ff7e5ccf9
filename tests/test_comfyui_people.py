"""FlashFace Person and the people inputs of the Generator and FlashFace Apply, with ComfyUI's own
modules (one process, no server; the bundled two-people workflow runs in a real server in
test_comfyui_integration): one person given as a Person is the same image as the faces and box
given directly, two people give another, and wrong wiring is explained."""

from __future__ import annotations

import pytest

from comfy_process import MESSAGES_OF_CALLS, TINY_FLASHFACE, run_with_comfyui

pytestmark = pytest.mark.comfyui

PEOPLE = (
    TINY_FLASHFACE
    + MESSAGES_OF_CALLS.replace("{", "{{").replace("}", "}}")
    + """
import nodes as comfy_nodes
from flashface_pack.nodes import generator, people, sampling, text_encode

_, positive, negative, _ = text_encode.FlashFaceCLIPTextEncode().encode(flashface, "two people")
encoded, _, _, _ = text_encode.FlashFaceCLIPTextEncode().encode(flashface, "two people")
faces_a = torch.rand(2, 224, 224, 3, generator=torch.Generator().manual_seed(1))
faces_b = torch.rand(1, 224, 224, 3, generator=torch.Generator().manual_seed(2))
LEFT = dict(face_x1=0.05, face_y1=0.2, face_x2=0.35, face_y2=0.5)
RIGHT = dict(face_x1=0.6, face_y1=0.2, face_x2=0.9, face_y2=0.5)
(one,) = people.FlashFacePerson().person(faces_a, **LEFT)
(two,) = people.FlashFacePerson().person(faces_b, people=one, **RIGHT)
settings = dict(seed=3, steps=3, solver="ddim", discretization="trailing", sigma_spacing="timesteps",
                text_guidance=7.5, reference_feature_strength=1.2, reference_guidance_strength=3.2,
                launch_timestep=750, width=96, height=64, batch_size=1, preset="none")


def generate(**given):
    box = given.pop("box", LEFT)
    return generator.FlashFaceGenerator().generate(flashface, encoded, encoded, **given, **settings, **box)[0]


def model_path(**given):
    box = given.pop("box", LEFT)
    model = sampling.FlashFaceApply().apply(
        flashface, negative=negative, padding_seed=3, pad_references=True, reference_feature_strength=1.2,
        reference_feature_strength_before_launch=0.85, reference_guidance_strength=3.2, launch_timestep=750,
        **given, **box)[0]
    latent = {{"samples": torch.zeros(1, 4, 8, 12)}}
    return comfy_nodes.KSampler().sample(model, 3, 3, 7.5, "euler", "normal", positive, negative, latent)[0]["samples"]


def difference(a, b):
    return float((a - b).abs().max())


result = dict(
    chained=[len(one), len(two), [len(p.faces) for p in two], [p.face_box for p in two]],
    generator_one=difference(generate(reference_faces=faces_a), generate(people=one, box=RIGHT)),
    generator_two=difference(generate(reference_faces=faces_a), generate(people=two)),
    model_one=difference(model_path(reference_faces=faces_a), model_path(people=one, box=RIGHT)),
    model_two=difference(model_path(reference_faces=faces_a), model_path(people=two)),
)
errors = {{
    "neither": lambda: generate(),
    "both": lambda: generate(reference_faces=faces_a, people=two),
    "people text": lambda: generate(people="me"),
    "chain text": lambda: people.FlashFacePerson().person(faces_a, people=[1, 2], **LEFT),
    "mask beside people": lambda: generate(people=two, face_mask=torch.ones(1, 64, 64)),
    "zero box": lambda: generate(people=people.FlashFacePerson().person(
        faces_b, people=one, face_x1=0.0, face_y1=0.0, face_x2=0.0, face_y2=0.0)[0]),
    "apply neither": lambda: model_path(),
}}
result.update(messages(errors))
"""
)


def test_people_nodes_chain_and_one_person_is_todays_image(comfy_install, tiny_model_files, tmp_path):
    snippet = PEOPLE.format(
        unet=str(tiny_model_files["unet_name"]),
        vae=str(tiny_model_files["vae_name"]),
        clip=str(tiny_model_files["clip_name"]),
    )
    result = run_with_comfyui(comfy_install, snippet, tmp_path)
    assert result["chained"] == [1, 2, [2, 1], [[0.05, 0.2, 0.35, 0.5], [0.6, 0.2, 0.9, 0.5]]]
    # one person as a Person node (its box; the Generator's own box is then unused) is the same image
    assert result["generator_one"] == 0 and result["model_one"] == 0
    assert result["generator_two"] > 0 and result["model_two"] > 0
    expected = {
        "neither": "Connect reference_faces (face crops of one person, from FlashFace Detect Face) or people",
        "both": "Both are connected",
        "people text": "The people input got text; connect the people output of FlashFace Person",
        "chain text": "The people input got a list",
        "mask beside people": "with several people give each their own face box or mask",
        "zero box": "Person 2 has the all-zero face box",
        "apply neither": "Connect reference_faces",
    }
    for name, phrase in expected.items():
        assert phrase in result[name], f"{name}: {result[name]}"
