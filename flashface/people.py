"""Several people in one picture (experimental): each person's photos and place, and which part of
the image reads which person's references.

The published FlashFace weights were trained with one person per image; this generalises the
reference attention exactly, without retraining. Each `Person` has their own reference faces and a
place: a face box, or a mask. Every reference-reading block of the UNet lets a position attend to
its own tokens and to the references of the person whose *region* it lies in; a position in no
region gets the reference network's self-attention alone (weight 0). Regions
(`PeopleLayout.regions`), per latent cell:

* a person with a mask owns the cells the mask marks (binarized as the face mask is, see
  `sampling.mask.resize_mask`); where masks overlap, the person listed first owns the cell;
* every other cell belongs to the person with a face box whose face square (the official square
  drawn from the box, `sampling.mask.face_square`) is nearest to the cell's sampling pixel; equal
  distances (e.g. inside two overlapping squares) go to the person listed first. With no box among
  the people, such a cell is in no region.

A person who owns no cell of their own face area (their face square, or their mask) is refused,
boxes and masks alike: an earlier person's box or mask covers it, and their face would be drawn
where only the other person's references are read. So one person with a box owns the whole image:
today's computation, whatever the box. The
face-position channel is the union of the people's face squares and masks, as officially for one.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass
from typing import cast

import torch

from .errors import InvalidInputError
from .sampling.mask import LATENT_FACTOR, box_mask, check_face_box, face_square, latent_size, resize_mask

OFFICIAL_REFERENCE_COUNT = 4
NO_REGION = -1  # the region label of a latent cell that reads no person's references


def padded_indices(available: int, rng: random.Random, count: int = OFFICIAL_REFERENCE_COUNT) -> list[int]:
    """The official padding: all faces, then random choices among them until there are `count`."""
    indices = list(range(available))
    while len(indices) < count:
        indices.append(rng.choice(range(available)))
    return indices


def _copies(available: int, rng: random.Random) -> tuple[int, ...]:
    """How many times each of `available` faces stands once padded officially (1-3 faces to four)."""
    indices = padded_indices(available, rng)
    return tuple(indices.count(face) for face in range(available))


MAX_REFERENCES = 16
"""Most reference faces one generation takes (the official demo uses 4; attention cost and memory
grow with every face)."""


def check_reference_count(count: int, people: int = 1) -> None:
    """The limit on reference faces of every entry point (the Generator, FlashFace Apply, the library);
    with several people, the limit is on all their faces together."""
    if count > MAX_REFERENCES:
        given_by = f" by {people} people" if people > 1 else ""
        raise InvalidInputError(
            f"{count} reference faces were given{given_by}; FlashFace takes at most {MAX_REFERENCES}"
            f"{' in all, over every person' if people > 1 else ''} (the official demo uses "
            f"4, and every face adds attention work and memory). Give fewer faces: in Detect Face, fewer photos or "
            f"several_faces 'largest'."
        )


@dataclass(frozen=True)
class Person:
    """One person of the picture: their reference faces (face crops, or prepared tensors
    [N,3,224,224] in [-1, 1]) and their place, a face box (x1, y1, x2, y2 as fractions of the
    image) or a face mask ([H',W'] in [0, 1], any size: resized to the image)."""

    faces: Sequence | torch.Tensor
    face_box: tuple[float, float, float, float] | None = None
    face_mask: torch.Tensor | None = None

    def __post_init__(self):
        if not len(self.faces):
            raise InvalidInputError("Give each person at least one reference face.")
        check_reference_count(len(self.faces))
        if (self.face_box is None) == (self.face_mask is None):
            raise InvalidInputError("Give each person a face box or a face mask (one of the two).")
        if self.face_box is not None:
            object.__setattr__(self, "face_box", check_face_box(self.face_box))


def as_people(reference_faces, face_box, face_mask: torch.Tensor | None) -> list[Person]:
    """The people of a generation: the `Person`s given, or one person of the faces given, at
    `face_mask` if one is given, else at `face_box`."""
    if len(reference_faces) and all(isinstance(item, Person) for item in reference_faces):
        if face_mask is not None:
            raise InvalidInputError(
                "A face mask of its own places one person: with several people give each their own face box or mask."
            )
        return list(reference_faces)
    if any(isinstance(item, Person) for item in reference_faces):
        raise InvalidInputError("Give either face crops of one person or a list of people, not a mix.")
    return [Person(reference_faces, None if face_mask is not None else face_box, face_mask)]


@dataclass(frozen=True)
class PeopleLayout:
    """Where each person is, how many references each has, and how many times each reference
    stands, in the order the references are stacked (person after person): what the guidance and
    the UNet need besides the references themselves."""

    boxes: tuple[tuple[float, float, float, float] | None, ...]
    masks: tuple[torch.Tensor | None, ...]
    reference_counts: tuple[int, ...]
    copies: tuple[int, ...] | None = None  # per reference; None: each once

    @classmethod
    def of(cls, people: Sequence[Person], padding_seed: int | None = None) -> PeopleLayout:
        """The layout of `people`; with a `padding_seed`, each person's 1-3 faces padded to four
        as the official demo pads one person's (as `copies`): one `random.Random(padding_seed)`
        consumed person after person, so the first person's padding is
        `padded_indices(len(faces), random.Random(padding_seed))`."""
        if not people:
            raise InvalidInputError("Give at least one person.")
        rng = random.Random(padding_seed)
        copies = None if padding_seed is None else tuple(count for p in people for count in _copies(len(p.faces), rng))
        layout = cls(
            tuple(p.face_box for p in people),
            tuple(p.face_mask for p in people),
            tuple(len(p.faces) for p in people),
            copies,
        )
        check_reference_count(sum(layout.reference_counts), len(people))
        if len(people) > 1:
            for number, box in enumerate(layout.boxes, 1):
                if box is not None and not any(box):
                    raise InvalidInputError(
                        f"Person {number} has the all-zero face box (no position hint): with several people each "
                        "needs a place. Give a face box around where their face should be, or a face mask."
                    )
        return layout

    @classmethod
    def one_person(cls, face_box, face_mask: torch.Tensor | None, references: int) -> PeopleLayout:
        """One person at `face_box`, or at `face_mask` when one is given, each reference once."""
        return cls((None if face_mask is not None else tuple(face_box),), (face_mask,), (references,))

    @property
    def count(self) -> int:
        return len(self.reference_counts)

    @property
    def owners(self) -> tuple[int, ...] | None:
        """The person of each reference, in stacking order; None for one person."""
        if self.count == 1:
            return None
        return tuple(person for person, count in enumerate(self.reference_counts) for _ in range(count))

    def _latent_masks(self, width: int, height: int) -> list[torch.Tensor]:
        """Each person's face area on the latent grid; with several people, a face area that covers
        nothing is refused naming the person."""
        masks = []
        for number, (box, mask) in enumerate(zip(self.boxes, self.masks), 1):
            try:
                masks.append(
                    resize_mask(mask, width, height)
                    if mask is not None
                    else box_mask(cast(Sequence[float], box), width, height)
                )
            except InvalidInputError as error:
                if self.count == 1:
                    raise
                place = "face mask" if mask is not None else f"face box {list(cast(Sequence[float], box))}"
                raise InvalidInputError(
                    f"Person {number}'s {place} marks no face area of the {width}x{height} image (a box with no size "
                    "or outside the image, a black mask, or a white part under 8 pixels). With several people each "
                    "needs a place: give that person a larger box around their face, or paint their face white."
                ) from error
        return masks

    def face_position(self, width: int, height: int) -> torch.Tensor:
        """The face-position channel [h, w] of a width×height image: the union of the people's."""
        return torch.stack(self._latent_masks(width, height)).amax(0)

    def regions(self, width: int, height: int) -> torch.Tensor | None:
        """The person (0, 1, ...) whose references each latent cell reads, [h, w] int64, NO_REGION
        for none (see the module docstring); None for one person (the whole image is theirs)."""
        if self.count == 1:
            return None
        h, w = latent_size(width, height)
        labels = torch.full((h, w), NO_REGION, dtype=torch.long)
        nearest = torch.full((h, w), float("inf"))
        rows = (torch.arange(h) * LATENT_FACTOR).float()[:, None]  # each cell's sampling pixel
        columns = (torch.arange(w) * LATENT_FACTOR).float()[None, :]
        for person, box in enumerate(self.boxes):
            if box is None:
                continue
            left, top, side = face_square(box, width, height)
            dx = (left - columns).clamp(min=0) + (columns - (left + side - 1)).clamp(min=0)
            dy = (top - rows).clamp(min=0) + (rows - (top + side - 1)).clamp(min=0)
            distance = dx**2 + dy**2
            closer = distance < nearest
            labels[closer] = person
            nearest = torch.where(closer, distance, nearest)
        latent_masks = self._latent_masks(width, height)
        for person in reversed(range(self.count)):  # the first listed ends on top
            if self.masks[person] is not None:
                labels[latent_masks[person] > 0] = person
        for person in range(self.count):
            face = latent_masks[person] > 0
            if not (labels[face] == person).any():
                holder = int(labels[face].mode().values)
                theirs = "face mask" if self.masks[person] is not None else "face box"
                holders = "mask" if self.masks[holder] is not None else "face box"
                raise InvalidInputError(
                    f"Person {person + 1}'s {theirs} lies inside person {holder + 1}'s {holders} on the "
                    f"{width}x{height} image: their face would be drawn where only person {holder + 1}'s references "
                    "are read (the first listed wins). Give each person a place of their own."
                )
        return labels
