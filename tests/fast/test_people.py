"""Several people in one picture: regions, per-person reference attention, and one person given as a
person being exactly today's computation (library level; the nodes and the CLI have their own)."""

from __future__ import annotations

import random

import pytest
import torch
from test_pipeline import QUICK, random_faces
from test_unet import random_call

from flashface.errors import ContractError, InvalidInputError
from flashface.models.checkpoint import StateDictCheckpoint
from flashface.models.reference_attention import reference_attention
from flashface.models.row_plan import RowPlan
from flashface.models.unet_blocks import Attention
from flashface.models.unet_loading import load_unet
from flashface.people import NO_REGION, PeopleLayout, Person, padded_indices
from flashface.sampling.mask import box_mask, resize_mask
from flashface.settings import GenerationSettings
from straightforward_unet import straightforward_eps, straightforward_reference_attention
from tiny_unet import tiny_unet_state_dict

LEFT, RIGHT = (0.05, 0.25, 0.3, 0.5), (0.6, 0.25, 0.85, 0.5)


def regions_of(layout: PeopleLayout, width: int, height: int) -> torch.Tensor:
    """The regions of several people (never None)."""
    regions = layout.regions(width, height)
    assert regions is not None
    return regions


# ---- where each person is ------------------------------------------------------------------------


def test_one_person_owns_the_whole_image_and_is_placed_as_today():
    box = (0.2, 0.3, 0.5, 0.6)
    layout = PeopleLayout.one_person(box, None, 4)
    assert layout.regions(64, 48) is None and layout.owners is None
    assert torch.equal(layout.face_position(64, 48), box_mask(box, 64, 48))
    mask = torch.zeros(30, 40)
    mask[5:20, 10:30] = 1
    masked = PeopleLayout.one_person(box, mask, 2)
    assert torch.equal(masked.face_position(64, 48), resize_mask(mask, 64, 48))


def test_each_cell_reads_the_person_whose_face_square_is_nearest():
    layout = PeopleLayout.of([Person([0], LEFT), Person([0, 0], RIGHT)])
    regions = regions_of(layout, 160, 80)  # 20 x 10 cells, sampled at pixels 0, 8, ...
    assert regions.shape == (10, 20) and regions.dtype == torch.long
    # left square: x 8..47 (side 40: 0.25*80=20 tall, 0.25*160=40 wide); right square: x 96..135
    assert (regions[:, :9] == 0).all() and (regions[:, 9:] == 1).all()  # cell 9 is at x=72: 25 from 47, 24 from 96
    assert layout.owners == (0, 1, 1)
    assert torch.equal(layout.face_position(160, 80), box_mask(LEFT, 160, 80) + box_mask(RIGHT, 160, 80))


def test_overlapping_squares_go_to_the_person_listed_first_and_masks_override_boxes():
    overlapping = PeopleLayout.of([Person([0], (0.2, 0.2, 0.6, 0.6)), Person([0], (0.3, 0.3, 0.7, 0.7))])
    regions = regions_of(overlapping, 80, 80)
    assert regions[4, 4] == 0  # pixel (32, 32) lies in both squares
    mask = torch.zeros(80, 80)
    mask[:, 60:] = 1
    masked = regions_of(PeopleLayout.of([Person([0], LEFT), Person([0], face_mask=mask)]), 80, 80)
    assert (masked[:, 8:] == 1).all() and (masked[:, :8] == 0).all()  # outside the mask: the only box


def test_with_masks_only_a_cell_in_no_mask_reads_no_references():
    first, second = torch.zeros(64, 64), torch.zeros(64, 64)
    first[:, :24], second[:, 16:40] = 1, 1
    layout = PeopleLayout.of([Person([0], face_mask=first), Person([0], face_mask=second)])
    regions = regions_of(layout, 64, 64)
    assert (regions[:, :3] == 0).all()  # cells 0-2 (pixels 0-16): first's only, cell 2 in both: first listed
    assert (regions[:, 3:5] == 1).all() and (regions[:, 5:] == NO_REGION).all()
    assert torch.equal(layout.face_position(64, 64), ((first + second) > 0).float()[::8, ::8])


def test_a_person_whose_face_lies_in_an_earlier_persons_place_is_refused_for_boxes_and_masks():
    same_box = PeopleLayout.of([Person([0], LEFT), Person([0], LEFT)])
    with pytest.raises(InvalidInputError, match="Person 2's face box lies inside person 1's face box on the 160x80"):
        same_box.regions(160, 80)
    covered = torch.ones(80, 160)
    with pytest.raises(InvalidInputError, match="Person 2's face box lies inside person 1's mask"):
        PeopleLayout.of([Person([0], face_mask=covered), Person([0], RIGHT)]).regions(160, 80)
    left_half = torch.zeros(80, 160)
    left_half[:, :80] = 1  # person 2's box inside it still owns cells outside it, but not their face
    with pytest.raises(InvalidInputError, match="Person 2's face box lies inside person 1's mask") as refused:
        PeopleLayout.of([Person([0], face_mask=left_half), Person([0], (0.1, 0.3, 0.2, 0.5))]).regions(160, 80)
    assert "their face would be drawn where only person 1's references are read" in str(refused.value)


def test_a_persons_place_that_marks_nothing_is_refused_naming_the_person():
    tiny = (0.9, 0.9, 0.9, 0.9)
    with pytest.raises(
        InvalidInputError, match=r"Person 2's face box \[0.9, 0.9, 0.9, 0.9\] marks no face area"
    ) as refused:
        PeopleLayout.of([Person([0], LEFT), Person([0], tiny)]).regions(160, 80)
    assert "all four" not in str(refused.value)  # the one-person advice (no position hint) does not apply
    with pytest.raises(InvalidInputError, match="Person 1's face mask marks no face area"):
        PeopleLayout.of([Person([0], face_mask=torch.zeros(80, 160)), Person([0], RIGHT)]).face_position(160, 80)


@pytest.mark.parametrize(
    "people, message",
    [
        (lambda: [Person([0], (0, 0, 0, 0)), Person([0], RIGHT)], "Person 1 has the all-zero face box"),
        (lambda: [Person([0])], "a face box or a face mask"),
        (lambda: [Person([], RIGHT)], "at least one reference face"),
        (lambda: [Person([0] * 9, LEFT), Person([0] * 8, RIGHT)], "17 reference faces"),
        (lambda: [Person([0], (0.5, 0.5, 1.2, 0.9))], "between 0 and 1"),
    ],
)
def test_people_without_a_place_or_faces_are_refused(people, message):
    with pytest.raises(InvalidInputError, match=message):
        PeopleLayout.of(people())


def test_each_person_is_padded_to_four_the_first_exactly_as_one_person():
    faces, others = random_faces(2), random_faces(3, seed=1)
    layout = PeopleLayout.of([Person(faces, LEFT), Person(others, RIGHT)], padding_seed=11)
    first = padded_indices(2, random.Random(11))
    assert layout.copies is not None and layout.copies[:2] == (first.count(0), first.count(1))
    assert sum(layout.copies[2:]) == 4 and min(layout.copies[2:]) == 1
    assert layout.reference_counts == (2, 3) and layout.owners == (0, 0, 1, 1, 1)
    assert PeopleLayout.of([Person(faces, LEFT)]).copies is None  # no padding asked for


# ---- the reference attention of several people ----------------------------------------------------


@pytest.fixture(scope="module")
def sa1():
    torch.manual_seed(0)
    return Attention(torch.nn, 32, 32, 4).eval()


def regional_inputs(seed=0, rows=3, tokens=12, ref_tokens=5):
    g = torch.Generator().manual_seed(seed)
    y = torch.randn(rows, tokens, 32, generator=g)
    references = torch.randn(5, ref_tokens, 32, generator=g)  # person 0: 0, 1; person 1: 2, 3, 4
    owners = (0, 0, 1, 1, 1)
    regions = torch.tensor([0, 0, 1, 1, -1, 0, 1, 1, 0, -1, 1, 0])
    return y, references, owners, regions


def positions_of(regions, people=2):
    return [(regions == person).nonzero().flatten() for person in range(people)]


def test_regional_attention_equals_a_straightforward_masked_computation(sa1):
    y, references, owners, regions = regional_inputs()
    weights = [1.2, 0.7, 0.0]
    with torch.no_grad():
        fast = reference_attention(sa1, y, references, weights, None, owners, positions_of(regions))
        slow = straightforward_reference_attention(sa1, y, references, weights, owners, regions)
    assert torch.allclose(fast, slow, atol=1e-5), (fast - slow).abs().max()
    assert torch.equal(fast[:, regions == NO_REGION], sa1(y)[:, regions == NO_REGION])


def test_a_query_in_one_region_is_unchanged_when_another_persons_references_change(sa1):
    y, references, owners, regions = regional_inputs()
    changed = references.clone()
    changed[2:] = torch.randn(3, *references.shape[1:])  # person 1's references
    weights = [1.0] * 3
    with torch.no_grad():
        before, after = (
            reference_attention(sa1, y, refs, weights, None, owners, positions_of(regions))
            for refs in (references, changed)
        )
    assert torch.equal(before[:, regions != 1], after[:, regions != 1])
    assert not torch.allclose(before[:, regions == 1], after[:, regions == 1])


def test_merged_copies_of_a_persons_reference_count_as_often_as_given(sa1):
    y, references, owners, regions = regional_inputs()
    copies = torch.cat([references[:1], references[:1], references[1:]])  # person 0's first reference twice
    weights, positions = [1.0] * 3, positions_of(regions)
    with torch.no_grad():
        merged = reference_attention(sa1, y, references, weights, (2, 1, 1, 1, 1), owners, positions)
        spelled_out = straightforward_reference_attention(sa1, y, copies, weights, (0, *owners), regions)
    assert torch.allclose(merged, spelled_out, atol=1e-5)


def test_skipped_rows_get_the_self_attention_alone(sa1):
    y, references, owners, regions = regional_inputs()
    weights = [0.0, 1.0, 0.0]
    with torch.no_grad():
        fast = reference_attention(sa1, y, references, weights, None, owners, positions_of(regions))
        slow = straightforward_reference_attention(sa1, y, references, weights, owners, regions)
    assert torch.allclose(fast, slow, atol=1e-5)
    assert torch.equal(fast[[0, 2]], sa1(y)[[0, 2]])


# ---- the whole UNet ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_model():
    return load_unet(StateDictCheckpoint(tiny_unet_state_dict(seed=3)))


def test_a_person_who_owns_every_cell_is_one_person_with_their_own_references(tiny_model):
    call = random_call(3, references=4)
    owners = (0, 0, 1, 1)
    everywhere = torch.zeros(8, 8, dtype=torch.long)
    two = tiny_model.encode_references(call["reference_latents"], 500, call["reference_context"], owners)
    one = tiny_model.encode_references(call["reference_latents"][:2], 500, call["reference_context"][:2])
    args = call["x"], call["t"], call["context"], call["mask"]
    regional = tiny_model(*args, two, call["rows"], regions=everywhere)
    alone = tiny_model(*args, one, call["rows"])
    assert torch.allclose(regional, alone, atol=1e-5), (regional - alone).abs().max()
    # and the other person's references matter where they own cells
    split = everywhere.clone()
    split[:, 4:] = 1
    assert not torch.allclose(tiny_model(*args, two, call["rows"], regions=split), alone, atol=1e-3)


@pytest.mark.parametrize("branches", [2, 3])
def test_the_unet_with_two_people_equals_the_straightforward_computation(tiny_model, branches):
    """Two people, padded references given once with their counts, rows shared as the sampler lays
    them out, a cell in no region: every copy attended to with masked logits, row by row."""
    call = random_call(branches, references=4, seed=3)
    owners, copies = (0, 0, 1, 1), (3, 1, 2, 2)
    regions = torch.zeros(8, 8, dtype=torch.long)
    regions[:, 5:] = 1
    regions[0, 0] = NO_REGION
    batch = 2
    x, mask = call["x"][:batch].repeat(branches, 1, 1, 1), call["mask"][:batch].repeat(branches, 1, 1)
    positive, negative = call["context"][:batch], call["context"][-batch:]
    context = torch.cat([positive, positive, negative] if branches == 3 else [positive, negative])
    weights = call["rows"].weights
    rows = RowPlan.of_chunks([0, 0, 1] if branches == 3 else [0, 1], batch, weights)
    features = tiny_model.encode_references(call["reference_latents"], 500, call["reference_context"], owners, copies)
    fast = tiny_model(x, call["t"], context, mask, features, rows, regions=regions)
    spelled_out = [index for index, count in enumerate(copies) for _ in range(count)]
    slow = straightforward_eps(
        tiny_model,
        x,
        call["t"],
        context,
        mask,
        call["reference_latents"][spelled_out],
        call["reference_context"][spelled_out],
        weights,
        tuple(owners[index] for index in spelled_out),
        regions,
    )
    torch.testing.assert_close(fast, slow, atol=2e-5, rtol=1e-5)


@pytest.mark.parametrize(
    "regions, owners, message",
    [
        (None, (0, 1), "need the regions"),
        (torch.zeros(8, 8, dtype=torch.long), None, "need the regions"),
        (torch.zeros(4, 4, dtype=torch.long), (0, 1), r"\[8, 8\]"),
        (torch.full((8, 8), 2), (0, 1), "name a person with no references"),
        (torch.zeros(8, 8, dtype=torch.long, device="meta"), (0, 1), "as a CPU tensor"),
    ],
)
def test_regions_that_do_not_fit_the_people_are_refused(tiny_model, regions, owners, message):
    call = random_call(2, references=2)
    features = tiny_model.encode_references(call["reference_latents"], 500, call["reference_context"], owners)
    with pytest.raises(ContractError, match=message):
        tiny_model(call["x"], call["t"], call["context"], call["mask"], features, call["rows"], regions=regions)


def test_the_reference_pass_checks_its_owners(tiny_model):
    call = random_call(2, references=3)
    with pytest.raises(ContractError, match="numbered from 0 without gaps"):
        tiny_model.encode_references(call["reference_latents"], 500, call["reference_context"], (0, 2, 2))


def test_reference_attention_without_people_is_the_one_person_path(sa1):
    """The region path only runs with positions: one person keeps today's code, unchanged."""
    y, references, _, _ = regional_inputs()
    weights = [1.0] * 3
    with torch.no_grad():
        today = reference_attention(sa1, y, references, weights)
        everyone = reference_attention(sa1, y, references, weights, None, (0,) * 5, [torch.arange(12)])
    assert torch.allclose(today, everyone, atol=1e-5)


# ---- the pipeline ------------------------------------------------------------------------------------


@pytest.mark.parametrize("place", ["box", "mask"])
def test_one_person_given_as_a_person_is_todays_generation_bit_for_bit(pipeline, place):
    faces = random_faces(2)
    box = (0.25, 0.2, 0.6, 0.55)
    mask = torch.zeros(40, 40)
    mask[8:30, 12:28] = 1
    settings = GenerationSettings(seed=21, face_box=box, **QUICK)
    if place == "box":
        today = pipeline.generate(faces, "a portrait", "", settings)
        person = Person(faces, box)
    else:
        today = pipeline.generate(faces, "a portrait", "", settings, face_mask=mask)
        person = Person(faces, face_mask=mask)
    as_person = pipeline.generate([person], "a portrait", "", GenerationSettings(seed=21, **QUICK))
    assert torch.equal(today.latents, as_person.latents) and torch.equal(today.images, as_person.images)


def test_two_people_generate_and_each_persons_faces_matter(pipeline):
    settings = GenerationSettings(seed=5, **{**QUICK, "width": 96})
    first, second, third = random_faces(2, seed=1), random_faces(1, seed=2), random_faces(1, seed=3)
    two = pipeline.generate([Person(first, LEFT), Person(second, RIGHT)], "two people", "", settings)
    assert two.images.shape == (1, 64, 96, 3)
    other_second = pipeline.generate([Person(first, LEFT), Person(third, RIGHT)], "two people", "", settings)
    one = pipeline.generate(first, "two people", "", settings)
    assert not torch.equal(two.latents, other_second.latents)
    assert not torch.equal(two.latents, one.latents)


def test_a_face_mask_beside_people_is_refused(pipeline):
    with pytest.raises(InvalidInputError, match="own face box or mask"):
        pipeline.generate(
            [Person(random_faces(1), LEFT), Person(random_faces(1), RIGHT)],
            "x",
            "",
            GenerationSettings(**QUICK),
            face_mask=torch.ones(8, 8),
        )


def test_the_face_limit_is_said_to_be_over_all_people():
    people = [Person([0] * 4, (0.05 + 0.18 * n, 0.2, 0.2 + 0.18 * n, 0.4)) for n in range(5)]
    with pytest.raises(
        InvalidInputError,
        match="20 reference faces were given by 5 people; FlashFace takes at most 16 in all, over every person",
    ):
        PeopleLayout.of(people)
