"""FlashFace Detect Face: reference photos (any sizes) -> aligned face crops as an IMAGE batch, and
where the faces are in each photo."""

from __future__ import annotations

from PIL import ImageDraw

from ..flashface.face import (
    DEFAULT_DETECTION_THRESHOLD,
    DETECTION_THRESHOLD_RANGE,
    REFERENCE_SIZE,
    SEVERAL_FACES,
    face_region_mask,
    find_reference_faces,
    pad_to_square,
)
from ..flashface.people import MAX_REFERENCES
from .cancel import comfy_cancel
from .declare import FlashFaceNode, outputs
from .images import image_batches_to_pil, pil_to_batch, pil_to_image
from .load_model import expect_model, model_input

EXTRA_PHOTO_INPUTS = ("images_2", "images_3", "images_4")


def _draw_faces(photo, faces):
    """A copy of the photo with every kept face's box and landmarks drawn."""
    preview = photo.copy()
    draw = ImageDraw.Draw(preview)
    width = max(2, round(max(photo.size) / 200))
    for face in faces:
        draw.rectangle(face.box, outline=(0, 255, 0), width=width)
        for x, y in face.landmarks:
            draw.ellipse((x - width, y - width, x + width, y + width), fill=(255, 0, 0))
    return preview


class FlashFaceDetectFace(FlashFaceNode):
    """Finds the face in each reference photo with RetinaFace and cuts it out the way the official
    FlashFace code does (box crop, eyes levelled, padded to a 224x224 square). Photos may have
    different sizes: connect up to four images or batches, or a list of any length.
    """

    SEARCH_ALIASES = ["face detection", "face crop", "retinaface", "face id", "identity", "reference face"]
    INPUT_IS_LIST = True
    RETURN_TYPES, RETURN_NAMES, OUTPUT_TOOLTIPS = outputs(
        ("faces", "IMAGE", "The face crops, one 224x224 image per face, for the Generator's reference_faces."),
        ("preview", "IMAGE", "Each photo with the kept faces outlined (green box, red landmarks)."),
        ("face_count", "INT", "How many faces were kept."),
        (
            "face_masks",
            "MASK",
            "For each photo, a mask of its kept faces' boxes (white = face), the photo's size: "
            "the region to redraw in a face fix, or Apply's face position.",
        ),
        (
            "photos",
            "IMAGE",
            "Each photo as an image of its own (a batch taken apart), in the order of face_masks: what a face "
            "fix encodes and pastes onto, so that each picture is redrawn at its own face.",
        ),
    )
    OUTPUT_IS_LIST = (False, True, False, True, True)
    FUNCTION = "detect"

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "flashface_model": model_input("face detector"),
                "images": (
                    "IMAGE",
                    {
                        "tooltip": "Reference photos of one person: one image, a batch, or a list of "
                        "images of any sizes."
                    },
                ),
                "threshold": (
                    "FLOAT",
                    {
                        "default": DEFAULT_DETECTION_THRESHOLD,
                        "min": DETECTION_THRESHOLD_RANGE[0],
                        "max": DETECTION_THRESHOLD_RANGE[1],
                        "step": 0.01,
                        "tooltip": f"Detection confidence needed to count as a face "
                        f"(official: {DEFAULT_DETECTION_THRESHOLD}). "
                        "Lower it if a clear face is missed, raise it if background objects are taken for "
                        "faces.",
                    },
                ),
                "several_faces": (
                    list(SEVERAL_FACES),
                    {
                        "default": "largest",
                        "tooltip": "What to do when one photo shows more than one face. "
                        "largest: keep the biggest face; "
                        "error: stop and say which photo; all: keep every face (only if they are all the same "
                        f"person; at most {MAX_REFERENCES} faces in all).",
                    },
                ),
            },
            "optional": {
                name: ("IMAGE", {"tooltip": "More reference photos of the same person (any size, batch or list)."})
                for name in EXTRA_PHOTO_INPUTS
            },
        }

    def detect(self, flashface_model, images, threshold, several_faces, **more_images):
        model = expect_model(flashface_model[0])
        threshold, several_faces = threshold[0], several_faces[0]
        photos = []
        for name, batches in (("images", images), *((name, more_images.get(name, [])) for name in EXTRA_PHOTO_INPUTS)):
            photos += image_batches_to_pil(batches, name)
        (detector,) = model.ready("detector")
        with comfy_cancel() as should_cancel:
            found = find_reference_faces(
                detector, photos, threshold, model.device("detector"), several_faces, should_cancel=should_cancel
            )
        crops = [pad_to_square(crop, REFERENCE_SIZE) for photo in found for crop in photo.crops]
        previews = [pil_to_image(_draw_faces(photo.photo, photo.faces)) for photo in found]
        masks = [face_region_mask(photo)[None] for photo in found]
        return (pil_to_batch(crops), previews, len(crops), masks, [pil_to_image(photo) for photo in photos])
