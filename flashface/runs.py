"""What one command-line generation needs besides its settings, shared by ``generate``, ``batch``
and the batch's Ray workers, so that a job gives the image ``generate`` gives:

* `PipelineOptions` -> `load_pipeline`: which files (else the registry's, downloaded if missing),
  device, dtype, VAE attention, graft; plain values, so that a worker on another machine can load
  its own copy;
* `Subject`: whose faces and where (one person's photos at the settings' face box, or several
  people each with their photos and a face box or mask), with `FaceOptions` for the detection;
* `render`: faces detected and cropped, then `FlashFacePipeline.generate`, to 8-bit images.
"""

from __future__ import annotations

import io
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from .errors import InvalidInputError
from .face import DEFAULT_DETECTION_THRESHOLD
from .models.graft import GraftFiles, graft_unet
from .models.model_registry import entries_of_kind, get_model_path
from .people import Person
from .pipeline import FlashFacePipeline, Progress
from .settings import GenerationSettings
from .utils.cache_utils import recorded_load_failure
from .utils.devices import AUTO, pick_device_and_dtype

logger = logging.getLogger(__name__)

GraftProgress = Callable[[int, int], None]


@dataclass(frozen=True)
class PipelineOptions:
    """How to load the networks: files (None: the registry's default, downloaded into `models_dir`
    if missing), where they compute, the UNet's dtype, the VAE attention, whether a detector is
    needed, and a graft."""

    unet: str | None = None
    vae: str | None = None
    text_encoder: str | None = None
    detector: str | None = None
    models_dir: str | None = None
    device: str = AUTO
    dtype: str = AUTO
    vae_attention: str = "official"
    detect_faces: bool = True
    graft: GraftFiles | None = None


def _load(loader, explicit: str | None, kind: str, models_dir: str | None, **options):
    """`loader` on the given file, else on a verified copy of the registry's default file of that
    kind (downloaded if missing)."""
    path = (
        Path(explicit)
        if explicit is not None
        else get_model_path(entries_of_kind(kind)[0].name, models_dir=Path(models_dir) if models_dir else None)
    )
    with recorded_load_failure(path):
        return loader(path, **options)


def load_pipeline(options: PipelineOptions, graft_progress: GraftProgress | None = None) -> FlashFacePipeline:
    from .models.clip_text import load_text_encoder
    from .models.retinaface import load_face_detector
    from .models.unet_loading import load_unet
    from .models.vae import load_vae

    device, dtype = pick_device_and_dtype(options.device, options.dtype)
    unet = _load(load_unet, options.unet, "unet", options.models_dir, device=device, dtype=dtype)
    if options.graft is not None:
        graft = options.graft
        graft_unet(unet, graft.checkpoint, graft.base, graft.strength, graft_progress)
    fp32 = dict(device=device, dtype=torch.float32)
    vae = _load(load_vae, options.vae, "vae", options.models_dir, attention=options.vae_attention, **fp32)
    text_encoder = _load(load_text_encoder, options.text_encoder, "text_encoder", options.models_dir, **fp32)
    detector = None
    if options.detect_faces:
        detector = _load(load_face_detector, options.detector, "detector", options.models_dir, **fp32)
    return FlashFacePipeline(unet, vae, text_encoder, detector, device=device)


@dataclass(frozen=True)
class FaceOptions:
    """How faces are found in the photos: the detector's threshold and what to do with several
    faces, or none (the photos are face crops already)."""

    threshold: float = DEFAULT_DETECTION_THRESHOLD
    several_faces: str = "largest"
    detect: bool = True


@dataclass(frozen=True)
class PersonPhotos:
    """One person's photos and place: a face box, a face mask ([H, W] in [0, 1]), or neither (then
    the settings' face box, for a subject of one person)."""

    photos: tuple[Image.Image, ...]
    face_box: tuple[float, float, float, float] | None = None
    face_mask: torch.Tensor | None = None


def read_image(source: Path | bytes, what: str, name: str | Path, mode: str = "RGB") -> Image.Image:
    """An image of `mode` from a file or its bytes; unreadable: one message naming it."""
    try:
        with Image.open(io.BytesIO(source) if isinstance(source, bytes) else source) as image:
            return image.convert(mode)
    except (OSError, UnidentifiedImageError) as error:
        raise InvalidInputError(f"Cannot read the {what} {name}: {error}. Give a JPEG, PNG or WebP file.") from error


def read_mask(source: Path | bytes, name: str | Path) -> torch.Tensor:
    """A face mask from an image file (white = face): its luminance in [0, 1], [H, W]."""
    pixels = np.asarray(read_image(source, "face mask", name, mode="L"), dtype=np.float32) / 255.0
    return torch.from_numpy(pixels)


def render(
    pipeline: FlashFacePipeline,
    people: Sequence[PersonPhotos],
    prompt: str,
    negative_prompt: str,
    settings: GenerationSettings,
    faces: FaceOptions = FaceOptions(),
    progress: Progress | None = None,
) -> list[Image.Image]:
    """The images of one generation: one person (`people` of one without a place: at the settings'
    face box) or several, each person's faces detected and cropped in their photos first."""
    crops = [
        list(person.photos)
        if not faces.detect
        else pipeline.crop_reference_faces(person.photos, faces.threshold, faces.several_faces)
        for person in people
    ]
    if len(people) == 1 and people[0].face_box is None:
        references, face_mask = crops[0], people[0].face_mask
    else:
        references = [Person(found, person.face_box, person.face_mask) for found, person in zip(crops, people)]
        face_mask = None
    result = pipeline.generate(references, prompt, negative_prompt, settings, face_mask=face_mask, progress=progress)
    return result.to_pil()
