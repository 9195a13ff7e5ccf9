"""FlashFace Person: one person's faces and place, chained into the people of one picture
(experimental: the published weights were trained with one person per image)."""

from __future__ import annotations

from ..flashface.errors import InvalidInputError
from ..flashface.people import PeopleLayout, Person
from .declare import FlashFaceNode, box_inputs, outputs, settings_from_inputs
from .images import image_batches_to_pil
from .inputs import expect_mask, what_was_given

FLASHFACE_PEOPLE = "FLASHFACE_PEOPLE"  # a tuple of flashface.people.Person, in order
EXPERIMENTAL = (
    "Experimental: the published FlashFace weights were trained with one person per image, so "
    "several people may blend or lose likeness."
)


def expect_people(value, input_name: str) -> tuple[Person, ...]:
    """The value of a FLASHFACE_PEOPLE link: a non-empty tuple of `Person`s, first listed first."""
    if not (isinstance(value, tuple) and value and all(isinstance(person, Person) for person in value)):
        raise InvalidInputError(
            f"The {input_name} input got {what_was_given(value)}; connect the people output of FlashFace Person to it."
        )
    return value


def people_input(tooltip: str) -> tuple:
    return FLASHFACE_PEOPLE, {"tooltip": f"{tooltip} {EXPERIMENTAL}"}


class FlashFacePerson(FlashFaceNode):
    """One person of a picture with several people: their face crops (from FlashFace Detect Face) and
    where they go (a face box, or a mask that also marks the part of the image that takes their
    likeness). Chain one Person node per person into the Generator's or FlashFace Apply's people
    input. Every part of the image reads the references of the person whose face box is nearest
    (masks override). Experimental: the published weights were trained with one person per image."""

    SEARCH_ALIASES = ["several people", "multiple people", "two people", "group photo", "multi person", "regional face"]
    RETURN_TYPES, RETURN_NAMES, OUTPUT_TOOLTIPS = outputs(
        ("people", FLASHFACE_PEOPLE, "The people given to this node's people input, then this person.")
    )
    FUNCTION = "person"

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "reference_faces": (
                    "IMAGE",
                    {"tooltip": f"Face crops of this person, from FlashFace Detect Face. {EXPERIMENTAL}"},
                ),
                **box_inputs(),
            },
            "optional": {
                "face_mask": (
                    "MASK",
                    {
                        "tooltip": "Where this person goes (white): "
                        "replaces the face box, and only the white part reads "
                        "this person's faces. Any size: it is resized to the image."
                    },
                ),
                "people": people_input("People listed before this one (another FlashFace Person)."),
            },
        }

    def person(self, reference_faces, face_mask=None, people=None, **box):
        earlier = () if people is None else expect_people(people, "people")
        faces = image_batches_to_pil([reference_faces], "reference_faces")
        mask = None if face_mask is None else expect_mask(face_mask, "face_mask")
        person = Person(faces, None if mask is not None else settings_from_inputs(box).face_box, mask)
        people = (*earlier, person)
        PeopleLayout.of(people)  # what a set of people must be (face count, a place each), told at this node
        return (people,)


def faces_or_people(reference_faces, people) -> list | tuple[Person, ...]:
    """What a node that takes `reference_faces` (one person) or `people` got: the face crops, or
    the people."""
    if (reference_faces is None) == (people is None):
        raise InvalidInputError(
            "Connect reference_faces (face crops of one person, from FlashFace Detect Face) or "
            "people (from FlashFace Person, for several people): one of the two."
            + (" Both are connected." if people is not None else "")
        )
    if people is not None:
        return expect_people(people, "people")
    return image_batches_to_pil([reference_faces], "reference_faces")
