"""The model files FlashFace uses, where they are looked for, and `get_model_path` to get one.

Adding a model is adding one `ModelEntry` to `ENTRIES`.

Where files live:

* Inside ComfyUI the nodes pass ComfyUI's ``folder_paths`` module (this package never imports
  ComfyUI). Files are looked for in every folder of the ``flashface`` key (``models/flashface``
  plus what ``extra_model_paths.yaml`` adds; ``--base-directory`` and portable installs are
  already reflected by ``folder_paths``) and then in the folders where the earlier FlashFace
  ports kept them (``models/vae``, ``models/clip``, ``models/facedetection``,
  ``models/face_detection``) and newer ComfyUI's ``models/detection``, so nobody downloads 10 GB twice. Downloads go to the first
  writable ``flashface`` folder (ComfyUI's default: the first one, or the ``is_default`` one).
* Outside ComfyUI: ``FLASHFACE_MODELS_DIR`` if set, else the user cache directory
  (``~/.cache/flashface``, ``~/Library/Caches/flashface``, ``%LOCALAPPDATA%\\flashface``).

Checksums: only values published somewhere are pinned. Files of ``shilongz/FlashFace-SD1.5``
have no published full checksum; their exact size is pinned and the SHA-256 that Hugging Face
sends with the download (LFS ``X-Linked-ETag``) is verified, then the file's MD5 and SHA-256 are
recorded in its sidecar (see `flashface.utils.cache_utils`).
"""

from __future__ import annotations

import dataclasses
import logging
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import DownloadError, ModelFileError
from ..utils.cache_utils import (
    DownloadSettings,
    ExpectedFile,
    ProgressCallback,
    download_file,
    manual_install_hint,
    source_urls,
    verify_file,
)
from .checkpoint import PICKLE_SUFFIXES, SAFETENSORS_SUFFIXES, unreadable_reason

logger = logging.getLogger(__name__)

COMFYUI_FOLDER = "flashface"
"""The ComfyUI model folder key the nodes register (``models/flashface``)."""

_OFFICIAL = "https://huggingface.co/shilongz/FlashFace-SD1.5/resolve/main/"
_OFFICIAL_LICENCE = "MIT (FlashFace, ali-vilab; weights published as shilongz/FlashFace-SD1.5)"


@dataclass(frozen=True)
class ModelEntry:
    """One downloadable model file."""

    name: str
    file_name: str
    urls: tuple[str, ...]
    """Primary first, then mirrors."""
    description: str
    licence: str
    size: int | None = None
    md5: str | None = None
    sha256: str | None = None
    folder: str = COMFYUI_FOLDER
    legacy_folders: tuple[str, ...] = ()
    """ComfyUI model folders where earlier ports kept this file; searched, never written to."""
    formats: tuple[str, ...] = PICKLE_SUFFIXES

    def __post_init__(self):
        if self.size is None and not (self.md5 or self.sha256):
            raise ValueError(f"model entry {self.name!r} needs an exact size or a checksum to check files against")

    @property
    def expected(self) -> ExpectedFile:
        return ExpectedFile(self.size, self.md5, self.sha256, format_problem=unreadable_reason)

    def replace(self, **changes: Any) -> ModelEntry:
        return dataclasses.replace(self, **changes)


ENTRIES = (
    ModelEntry(
        name="flashface",
        file_name="flashface.ckpt",
        urls=(_OFFICIAL + "flashface.ckpt",),
        size=10_557_394_752,
        description="FlashFace reference UNet (official checkpoint, fp32 pickle, 2142 keys)",
        licence=_OFFICIAL_LICENCE,
    ),
    ModelEntry(
        name="flashface_safetensors",
        file_name="flashface.safetensors",
        urls=("https://huggingface.co/mmeendez/ComfyUI-FlashFace/resolve/main/model.safetensors",),
        md5="c2e0f6c0adcc5c68b6995568a8e30e2c",
        formats=SAFETENSORS_SUFFIXES,
        description="FlashFace reference UNet, safetensors conversion used by the tinhalo port (MD5 from its registry)",
        licence="MIT, as the official weights it was converted from (the conversion states no licence)",
    ),
    ModelEntry(
        name="vae",
        file_name="sd-v1-vae.pth",
        urls=(_OFFICIAL + "sd-v1-vae.pth",),
        size=334_705_605,
        legacy_folders=("vae",),
        description="Stable Diffusion 1.x VAE in the official FlashFace key naming",
        licence=_OFFICIAL_LICENCE,
    ),
    ModelEntry(
        name="clip",
        file_name="openai-clip-vit-large-14.pth",
        urls=(_OFFICIAL + "openai-clip-vit-large-14.pth",),
        size=1_710_669_606,
        legacy_folders=("clip",),
        description="OpenAI CLIP ViT-L/14 (the text tower is used) in the official FlashFace key naming",
        licence=_OFFICIAL_LICENCE,
    ),
    ModelEntry(
        name="retinaface",
        file_name="retinaface_resnet50.pth",
        urls=(_OFFICIAL + "retinaface_resnet50.pth",),
        size=109_559_089,
        legacy_folders=("detection", "facedetection", "face_detection"),
        description="RetinaFace ResNet-50 face detector (official FlashFace copy)",
        licence=_OFFICIAL_LICENCE,
    ),
    ModelEntry(
        name="retinaface_facexlib",
        file_name="detection_Resnet50_Final.pth",
        urls=("https://github.com/xinntao/facexlib/releases/download/v0.1.0/detection_Resnet50_Final.pth",
              "https://huggingface.co/mmeendez/ComfyUI-FlashFace/resolve/main/detection_Resnet50_Final.pth"),
        md5="7c70c60a0702fd5e56b18ec46e2d3533",
        legacy_folders=("detection", "facedetection", "face_detection"),
        description="RetinaFace ResNet-50 face detector, facexlib release (MD5 from the tinhalo port's registry)",
        licence="MIT (facexlib)",
    ),
)

REGISTRY: dict[str, ModelEntry] = {entry.name: entry for entry in ENTRIES}
MODEL_EXTENSIONS = frozenset(suffix for entry in ENTRIES for suffix in entry.formats)


def register_comfyui_folder(folder_paths: Any) -> None:
    """Declare the ``flashface`` model folder in ComfyUI's ``folder_paths`` (call once, at import).

    Keeps the folders ``extra_model_paths.yaml`` already gave the key (it is read before custom
    nodes load) and adds ``models/flashface`` only when there are none.
    """
    folders, extensions = folder_paths.folder_names_and_paths.get(
        COMFYUI_FOLDER, ([os.path.join(folder_paths.models_dir, COMFYUI_FOLDER)], set()))
    folder_paths.folder_names_and_paths[COMFYUI_FOLDER] = (list(folders), set(extensions) | MODEL_EXTENSIONS)


def user_cache_dir() -> Path:
    if sys.platform == "win32":
        base = os.environ.get("LOCALAPPDATA") or Path.home() / "AppData" / "Local"
    elif sys.platform == "darwin":
        base = Path.home() / "Library" / "Caches"
    else:
        base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "flashface"


def standalone_models_dir() -> Path:
    """Where models live outside ComfyUI: FLASHFACE_MODELS_DIR, else the user cache directory."""
    configured = os.environ.get("FLASHFACE_MODELS_DIR")
    return Path(configured).expanduser() if configured else user_cache_dir()


def _comfyui_dirs(folder_paths: Any, key: str) -> list[Path]:
    """The folders of a ComfyUI model key, in ComfyUI's priority order (unknown keys: models/<key>)."""
    try:
        return [Path(folder) for folder in folder_paths.get_folder_paths(key)]
    except KeyError:
        return [Path(folder_paths.models_dir) / key]


def model_dirs(entry: ModelEntry, folder_paths: Any = None, models_dir: str | os.PathLike | None = None
               ) -> tuple[list[Path], list[Path]]:
    """(folders a download may go to, in order; every folder searched for an existing file, in order)."""
    if folder_paths is None:
        download_dirs = [Path(models_dir) if models_dir is not None else standalone_models_dir()]
        return download_dirs, download_dirs
    download_dirs = _comfyui_dirs(folder_paths, entry.folder)
    searched = list(download_dirs)
    for key in entry.legacy_folders:
        searched += [folder for folder in _comfyui_dirs(folder_paths, key) if folder not in searched]
    return download_dirs, searched


def get_model_path(model: str | ModelEntry, auto_download: bool = True, progress: ProgressCallback | None = None, *,
                   folder_paths: Any = None, models_dir: str | os.PathLike | None = None,
                   settings: DownloadSettings | None = None) -> Path:
    """The path of a verified copy of a registered model file, downloading it if needed.

    model: a registry name (see `REGISTRY`) or a `ModelEntry`.
    progress: called with (bytes done, bytes total or None) while a file is hashed or downloaded.
    folder_paths: ComfyUI's ``folder_paths`` module inside ComfyUI; None outside it.
    models_dir: outside ComfyUI, overrides FLASHFACE_MODELS_DIR / the user cache directory.

    An existing file that fails its check is skipped (and, in a download folder, replaced).
    Raises ModelFileError when the file is missing and `auto_download` is False, DownloadError
    when it cannot be downloaded; both say where to put the file by hand.
    """
    if isinstance(model, str):
        if model not in REGISTRY:
            raise ModelFileError(f"Unknown model {model!r}; the known models are: {', '.join(REGISTRY)}.")
        model = REGISTRY[model]
    download_dirs, searched = model_dirs(model, folder_paths, models_dir)
    problems = []
    for folder in searched:
        path = folder / model.file_name
        if not path.is_file():
            continue
        problem = verify_file(path, model.expected, progress)
        if problem is None:
            return path
        logger.warning("Ignoring %s: it is not the expected %s (%s)", path, model.description, problem)
        problems.append(f"{path} is not usable: {problem}")
    found = f" {'; '.join(problems)}." if problems else ""
    if not auto_download:
        raise ModelFileError(
            f"{model.file_name} ({model.description}) was not found in {', '.join(map(str, searched))}.{found} "
            f"{manual_install_hint(source_urls(model.urls, model.file_name), download_dirs[0] / model.file_name)}.")
    try:
        return download_file(model.urls, download_dirs, model.file_name, model.expected, progress=progress,
                             settings=settings)
    except DownloadError as error:
        if not problems:
            raise
        raise DownloadError(f"{found.strip()} It could not be replaced: {error}") from error
