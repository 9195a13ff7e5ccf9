"""FlashFace Detect Face: reference photos (any sizes) -> aligned face crops as an IMAGE batch."""

from __future__ import annotations

from PIL import ImageDraw

from ..flashface.errors import FaceDetectionError
from ..flashface.face import REFERENCE_SIZE, crop_face, detect_faces, largest_face, pad_to_square
from .images import image_batches_to_pil, pil_to_batch, pil_to_image
from .load_model import FLASHFACE_MODEL

SEVERAL_FACES = ("largest", "error", "all")
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


class FlashFaceDetectFace:
    DESCRIPTION = ("Finds the face in each reference photo with RetinaFace and cuts it out the way the official "
                   "FlashFace code does (box crop, eyes levelled, padded to a 224x224 square). Photos may have "
                   "different sizes: connect up to four images or batches, or a list of any length.")
    CATEGORY = "FlashFace"
    INPUT_IS_LIST = True
    RETURN_TYPES = ("IMAGE", "IMAGE", "INT")
    RETURN_NAMES = ("faces", "preview", "face_count")
    OUTPUT_IS_LIST = (False, True, False)
    OUTPUT_TOOLTIPS = (
        "The face crops, one 224x224 image per face, for the Generator's reference_faces.",
        "Each photo with the kept faces outlined (green box, red landmarks).",
        "How many faces were kept.",
    )
    FUNCTION = "detect"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "flashface_model": (FLASHFACE_MODEL, {"tooltip": "From FlashFace Load Model (uses its face detector)."}),
            "images": ("IMAGE", {"tooltip": "Reference photos of one person: one image, a batch, or a list of "
                                            "images of any sizes."}),
            "threshold": ("FLOAT", {
                "default": 0.6, "min": 0.05, "max": 0.99, "step": 0.01,
                "tooltip": "Detection confidence needed to count as a face (official: 0.6). Lower it if a clear "
                           "face is missed, raise it if background objects are taken for faces."}),
            "several_faces": (list(SEVERAL_FACES), {
                "default": "largest",
                "tooltip": "What to do when one photo shows more than one face. largest: keep the biggest face; "
                           "error: stop and say which photo; all: keep every face (only if they are all the same "
                           "person)."}),
        }, "optional": {
            name: ("IMAGE", {"tooltip": "More reference photos of the same person (any size, batch or list)."})
            for name in EXTRA_PHOTO_INPUTS
        }}

    def detect(self, flashface_model, images, threshold, several_faces, **more_images):
        model, threshold, several_faces = flashface_model[0], threshold[0], several_faces[0]
        photos = image_batches_to_pil(images + [batch for name in EXTRA_PHOTO_INPUTS
                                                for batch in more_images.get(name, [])])
        if not photos:
            raise FaceDetectionError("No reference photo was given: connect at least one image.")
        (detector,) = model.ready("detector")
        crops, previews = [], []
        for number, photo in enumerate(photos, 1):
            where = f"reference photo {number} of {len(photos)} ({photo.width}x{photo.height})"
            faces = detect_faces(detector, photo, threshold, model.device("detector"))
            if not faces:
                raise FaceDetectionError(
                    f"No face found in {where} at threshold {threshold:.2f}. Use a photo where the face is clearly "
                    f"visible and not too small, or lower the threshold.")
            if len(faces) > 1:
                if several_faces == "error":
                    raise FaceDetectionError(
                        f"{len(faces)} faces found in {where}. Crop the photo to one person, or set several_faces "
                        f"to 'largest' (or 'all' if every face is the same person).")
                if several_faces == "largest":
                    faces = [largest_face(faces)]
            crops += [pad_to_square(crop_face(photo, face), REFERENCE_SIZE) for face in faces]
            previews.append(pil_to_image(_draw_faces(photo, faces)))
        return (pil_to_batch(crops), previews, len(crops))
