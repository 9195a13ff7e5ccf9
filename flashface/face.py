"""Reference-photo preprocessing: face detection, the official face crop and PadToSquare.

Reproduces the official FlashFace demo: the photo is padded to a 640x640 square for RetinaFace,
the detections are mapped back to the photo's pixels, each face is cut out as its axis-aligned
box and rotated so the eyes are level (no 5-point template, no margin), and the crop becomes a
224x224 square in [-1, 1] for the VAE. All resampling is Pillow's, as in the official code.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass

import numpy as np
import torch
from PIL import ExifTags, Image, ImageOps

from .errors import CancelCheck, FaceDetectionError, InvalidInputError, stop_if_cancelled
from .models.retinaface import RetinaFace
from .people import MAX_REFERENCES

logger = logging.getLogger(__name__)

DETECTOR_SIZE = 640
REFERENCE_SIZE = 224
DEFAULT_DETECTION_THRESHOLD = 0.6
"""The official demo's RetinaFace score threshold."""
DETECTION_THRESHOLD_RANGE = (0.0, 0.99)
"""The RetinaFace score thresholds taken (the Detect Face widget's range too): scores are probabilities."""
MIN_PHOTO_SIDE = 32
"""Smallest photo side (pixels) worth looking for a face in; thinner photos are refused."""
SEVERAL_FACES = ("largest", "error", "all")
"""What to do with a photo that shows several faces: keep the largest, stop, or keep them all."""


@dataclass(frozen=True)
class Face:
    """One detected face in original-image pixel coordinates."""

    box: tuple[float, float, float, float]  # x1, y1, x2, y2
    score: float
    # [5, 2] (x, y): eyes, nose, mouth corners; each pair left then right as seen in the image
    landmarks: tuple[tuple[float, float], ...]

    @property
    def area(self) -> float:
        x1, y1, x2, y2 = self.box
        return max(0.0, x2 - x1) * max(0.0, y2 - y1)


def square_padding(width: int, height: int, size: int) -> tuple[int, int, int, int]:
    """(left, top, right, bottom) black borders centring a width x height image in a size square;
    the odd pixel goes right/bottom."""
    if width > height:
        pad = size - height
        return 0, pad // 2, 0, pad - pad // 2
    if height > width:
        pad = size - width
        return pad // 2, 0, pad - pad // 2, 0
    return 0, 0, 0, 0


def _scaled_size(image: Image.Image, size: int) -> tuple[float, int, int]:
    """(scale, width, height) with the longer side scaled to `size`; never a side of 0 pixels
    (where the official code would fail on a very thin image)."""
    scale = size / max(image.size)
    return scale, max(1, round(image.width * scale)), max(1, round(image.height * scale))


def pad_to_square(image: Image.Image, size: int) -> Image.Image:
    """The official PadToSquare: bicubic resize of the longer side to `size`, centred on black.

    Non-RGB images are converted to RGB first (every official caller feeds RGB).
    """
    image = image.convert("RGB")
    _, width, height = _scaled_size(image, size)
    resized = image.resize((width, height), Image.Resampling.BICUBIC)
    left, top, _, _ = square_padding(width, height, size)
    square = Image.new("RGB", (size, size))
    square.paste(resized, (left, top))
    return square


def image_to_tensor(image: Image.Image) -> torch.Tensor:
    """RGB PIL image -> float32 [3,H,W] in [0,1] (torchvision's ToTensor)."""
    pixels = torch.from_numpy(np.array(image.convert("RGB"), dtype=np.uint8))
    return pixels.permute(2, 0, 1).float().div(255)


def detect_faces(detector: RetinaFace, image: Image.Image, threshold: float, device: torch.device | str) -> list[Face]:
    """Faces whose score exceeds `threshold`, best first, in `image`'s pixel coordinates; the
    detector runs on `device`. Boxes less than a pixel wide or high (nothing to crop) are dropped."""
    padded = image_to_tensor(pad_to_square(image, DETECTOR_SIZE))[None].to(device)
    detections = detector.detect(padded, threshold)[0]
    scale, width, height = _scaled_size(image, DETECTOR_SIZE)
    left, top, _, _ = square_padding(width, height, DETECTOR_SIZE)
    offset = torch.tensor([left, top], dtype=torch.float32)
    boxes = detections.boxes.cpu()
    corners = (boxes[:, :4].view(-1, 2, 2) - offset) / scale
    landmarks = (detections.landmarks.cpu() - offset) / scale
    faces = [
        Face(box=tuple(c.flatten().tolist()), score=float(s), landmarks=tuple(map(tuple, points.tolist())))
        for c, s, points in zip(corners, boxes[:, 4], landmarks)
    ]
    return [face for face in faces if _has_area(_crop_box(face))]


def largest_face(faces: list[Face]) -> Face:
    """The face with the largest box (the first of equal ones, i.e. the better score)."""
    return max(faces, key=lambda face: face.area)


def eye_levelling_angle(face: Face) -> float:
    """Counter-clockwise rotation in degrees that makes the eyes level (official law-of-cosines
    construction, distances in fp32 like the official tensors); 0 when the eyes coincide."""
    left_eye, right_eye = torch.tensor(face.landmarks[:2], dtype=torch.float32)
    if left_eye[1] > right_eye[1]:
        corner, direction = torch.stack([right_eye[0], left_eye[1]]), -1
    else:
        corner, direction = torch.stack([left_eye[0], right_eye[1]]), 1
    opposite, adjacent, eye_distance = (
        (a - b).square().sum().sqrt().item()
        for a, b in ((left_eye, corner), (right_eye, corner), (right_eye, left_eye))
    )
    if adjacent == 0 or eye_distance == 0:
        return 0.0
    cosine = (adjacent**2 + eye_distance**2 - opposite**2) / (2 * adjacent * eye_distance)
    angle = math.degrees(math.acos(min(1.0, max(-1.0, cosine))))
    return direction * (90 - angle if direction == -1 else angle)


def _crop_box(face: Face) -> tuple[int, int, int, int]:
    left, top, right, bottom = (round(v) for v in face.box)
    return left, top, right, bottom


def _has_area(box: tuple[int, ...]) -> bool:
    return box[2] > box[0] and box[3] > box[1]


def crop_face(image: Image.Image, face: Face) -> Image.Image:
    """The official crop: the box (rounded; black outside the image), rotated about its centre
    so the eyes are level (nearest neighbour, same canvas, black corners)."""
    return image.crop(_crop_box(face)).rotate(eye_levelling_angle(face))


@dataclass(frozen=True)
class PhotoFaces:
    """The faces kept in one reference photo and their official crops, in the same order."""

    photo: Image.Image
    faces: tuple[Face, ...]
    crops: tuple[Image.Image, ...]


def face_region_mask(found: PhotoFaces) -> torch.Tensor:
    """[H, W] float32 of the photo: 1 inside each kept face's box (rounded as the crop is, clipped to
    the photo), 0 elsewhere; the region a face fix redraws (ComfyUI's MASK convention)."""
    mask = torch.zeros(found.photo.height, found.photo.width)
    for face in found.faces:
        x1, y1, x2, y2 = _crop_box(face)
        mask[max(y1, 0) : max(y2, 0), max(x1, 0) : max(x2, 0)] = 1.0
    return mask


def find_reference_faces(
    detector: RetinaFace,
    photos: list[Image.Image],
    threshold: float,
    device: torch.device | str,
    several_faces: str = "largest",
    should_cancel: CancelCheck | None = None,
) -> list[PhotoFaces]:
    """The face-crop policy of every entry point: detect the faces in each photo and keep them as
    `several_faces` says (see SEVERAL_FACES). Stops with a message naming the photo when one has
    no face, too many, or is too small, and when the faces would be more than MAX_REFERENCES.
    `should_cancel()` is asked before each photo (raising GenerationCancelled). A photo is first
    turned upright by its EXIF orientation, as ComfyUI's Load Image does (phones store a portrait
    as a landscape picture plus that tag); the returned `PhotoFaces.photo` is the upright one."""
    if several_faces not in SEVERAL_FACES:
        raise InvalidInputError(f"several_faces must be one of {', '.join(SEVERAL_FACES)}, not {several_faces!r}.")
    low, high = DETECTION_THRESHOLD_RANGE
    if not low <= threshold <= high:  # also refuses NaN
        raise InvalidInputError(
            f"The detection threshold must be a number from {low} to {high} (official: "
            f"{DEFAULT_DETECTION_THRESHOLD}), got {threshold}."
        )
    if not photos:
        raise FaceDetectionError("No reference photo was given: give at least one photo of the person.")
    found, kept = [], 0
    for number, photo in enumerate(photos, 1):
        stop_if_cancelled(should_cancel, f"Face detection cancelled before photo {number} of {len(photos)}.")
        if photo.getexif().get(ExifTags.Base.Orientation, 1) != 1:
            photo = ImageOps.exif_transpose(photo)
        where = f"photo {number} of {len(photos)} ({photo.width}x{photo.height})"  # a reference, or a picture to fix
        if min(photo.size) < MIN_PHOTO_SIDE:
            raise FaceDetectionError(
                f"The {where} is too small to find a face in: use a photo at least {MIN_PHOTO_SIDE} pixels on each "
                f"side (the face itself should be at least about 40 pixels across)."
            )
        faces = detect_faces(detector, photo, threshold, device)
        if not faces:
            raise FaceDetectionError(
                f"No face found in {where} at threshold {threshold:.2f}. Use a photo where the face is clearly "
                f"visible and not too small, or lower the threshold."
            )
        if len(faces) > 1 and several_faces == "error":
            raise FaceDetectionError(
                f"{len(faces)} faces found in {where}. Crop the photo to one person, or set several_faces to "
                f"'largest' to keep the biggest face."
            )
        if several_faces != "all" and len(faces) > 1:
            logger.info("%d faces in %s; keeping the largest", len(faces), where)
            faces = [largest_face(faces)]
        kept += len(faces)
        if kept > MAX_REFERENCES:
            raise FaceDetectionError(
                f"The photos give more than {MAX_REFERENCES} faces ({len(faces)} in {where} alone); FlashFace takes at "
                f"most {MAX_REFERENCES} reference faces (the official demo uses 4). Use fewer photos, raise the "
                f"threshold, or set several_faces to 'largest'."
            )
        found.append(PhotoFaces(photo, tuple(faces), tuple(crop_face(photo, face) for face in faces)))
    return found


def prepare_reference(crop: Image.Image) -> torch.Tensor:
    """A face crop -> [3,224,224] float32 in [-1,1], the VAE input of a reference."""
    return (image_to_tensor(pad_to_square(crop, REFERENCE_SIZE)) - 0.5) / 0.5
