"""The model files FlashFace uses (`MODEL_REGISTRY`) and `get_model_path` to get a verified copy.

Adding a model is adding an entry to `MODEL_REGISTRY` (in this file, or at run time) and asking
for it by name::

    MODEL_REGISTRY["my_model"] = {
        "url": "https://example.com/my_model.safetensors",
        "md5": "0123456789abcdef0123456789abcdef",
        "filename": "my_model.safetensors",
        "description": "what the file is",
    }
    path = get_model_path("my_model", auto_download=True)

An entry needs ``url``, ``filename`` and ``description``, and something to check a file against:
``md5`` (32 hex digits), ``sha256`` (64) or the exact ``size`` in bytes. Optional keys:
``mirrors`` (more URLs, tried in order after ``url``), ``licence``, ``kind`` (which Load Model input
offers it: one of `KINDS`), ``folder`` (the ComfyUI model folder key downloads go to, default
``flashface``) and ``legacy_folders`` (ComfyUI folder keys where earlier ports kept the file:
searched, never written to). `model_entry` checks an entry and gives its typed view.

Where files live: `get_model_path` takes the folders to search and to download into
(`ModelFolders`); without them it uses one folder, ``FLASHFACE_MODELS_DIR`` if set, else the
user cache directory (``~/.cache/flashface``, ``~/Library/Caches/flashface``,
``%LOCALAPPDATA%\\flashface``). Inside ComfyUI the nodes build the folders from ComfyUI's
``folder_paths`` (nodes/model_files.py): this package never imports ComfyUI.

Checksums: only values published somewhere are pinned. Files of ``shilongz/FlashFace-SD1.5``
have no published full checksum; their exact size is pinned and the SHA-256 that Hugging Face
sends with the download (LFS ``X-Linked-ETag``) is verified, then the file's MD5 and SHA-256 are
recorded in its sidecar (see `flashface.utils.cache_utils`).
"""

from __future__ import annotations

import logging
import os
import re
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import DownloadError, ModelFileError, RegistryError
from ..utils.cache_utils import (
    DownloadSettings,
    ExpectedFile,
    ProgressCallback,
    download_file,
    manual_install_hint,
    source_urls,
    verify_file,
)
from .checkpoint import SAFETENSORS_SUFFIXES, open_checkpoint, unreadable_reason

logger = logging.getLogger(__name__)

FLASHFACE_FOLDER = "flashface"
"""The ComfyUI model folder key of FlashFace's files (``models/flashface``)."""
KINDS = ("unet", "vae", "text_encoder", "detector")
"""The networks of a FlashFace model, each offered by one Load Model input."""

_OFFICIAL = "https://huggingface.co/shilongz/FlashFace-SD1.5/resolve/main/"
_OFFICIAL_LICENCE = "MIT (FlashFace, ali-vilab; weights published as shilongz/FlashFace-SD1.5)"
# The folders under ComfyUI's models/ where other face packs keep RetinaFace, searched in this order.
DETECTOR_FOLDERS = ["detection", "facedetection", "face_detection"]

MODEL_REGISTRY: dict[str, dict[str, Any]] = {
    "flashface": {
        "url": _OFFICIAL + "flashface.ckpt",
        "filename": "flashface.ckpt",
        "size": 10_557_394_752,
        "description": "FlashFace reference UNet (official checkpoint, fp32 pickle, 2142 keys)",
        "licence": _OFFICIAL_LICENCE,
        "kind": "unet",
    },
    "flashface_safetensors": {
        "url": "https://huggingface.co/mmeendez/ComfyUI-FlashFace/resolve/main/model.safetensors",
        "filename": "flashface.safetensors",
        "md5": "c2e0f6c0adcc5c68b6995568a8e30e2c",
        "description": "FlashFace reference UNet, safetensors conversion used by the tinhalo port (MD5 from its "
        "registry)",
        "licence": "MIT, as the official weights it was converted from (the conversion states no licence)",
        "kind": "unet",
    },
    "vae": {
        "url": _OFFICIAL + "sd-v1-vae.pth",
        "filename": "sd-v1-vae.pth",
        "size": 334_705_605,
        "description": "Stable Diffusion 1.x VAE in the official FlashFace key naming",
        "licence": _OFFICIAL_LICENCE,
        "kind": "vae",
        "legacy_folders": ["vae"],
    },
    "clip": {
        "url": _OFFICIAL + "openai-clip-vit-large-14.pth",
        "filename": "openai-clip-vit-large-14.pth",
        "size": 1_710_669_606,
        "description": "OpenAI CLIP ViT-L/14 (the text tower is used) in the official FlashFace key naming",
        "licence": _OFFICIAL_LICENCE,
        "kind": "text_encoder",
        "legacy_folders": ["clip"],
    },
    "retinaface": {
        "url": _OFFICIAL + "retinaface_resnet50.pth",
        "filename": "retinaface_resnet50.pth",
        "size": 109_559_089,
        "description": "RetinaFace ResNet-50 face detector (official FlashFace copy)",
        "licence": _OFFICIAL_LICENCE,
        "kind": "detector",
        "legacy_folders": DETECTOR_FOLDERS,
    },
    "retinaface_facexlib": {
        "url": "https://github.com/xinntao/facexlib/releases/download/v0.1.0/detection_Resnet50_Final.pth",
        "mirrors": ["https://huggingface.co/mmeendez/ComfyUI-FlashFace/resolve/main/detection_Resnet50_Final.pth"],
        "filename": "detection_Resnet50_Final.pth",
        "md5": "7c70c60a0702fd5e56b18ec46e2d3533",
        "description": "RetinaFace ResNet-50 face detector, facexlib release (MD5 from the tinhalo port's registry)",
        "licence": "MIT (facexlib)",
        "kind": "detector",
        "legacy_folders": DETECTOR_FOLDERS,
    },
}

_REQUIRED = ("url", "filename", "description")
_OPTIONAL = ("md5", "sha256", "size", "mirrors", "licence", "kind", "folder", "legacy_folders")
_HEX_DIGITS = {"md5": 32, "sha256": 64}


@dataclass(frozen=True)
class ModelEntry:
    """The checked, typed view of one `MODEL_REGISTRY` entry (made by `model_entry`)."""

    name: str
    filename: str
    urls: tuple[str, ...]
    """``url`` first, then the ``mirrors``."""
    description: str
    licence: str = ""
    size: int | None = None
    md5: str | None = None
    sha256: str | None = None
    kind: str | None = None
    folder: str = FLASHFACE_FOLDER
    legacy_folders: tuple[str, ...] = ()

    @property
    def expected(self) -> ExpectedFile:
        return ExpectedFile(self.size, self.md5, self.sha256, format_problem=unreadable_reason)


def _malformed(name: str, key: str, problem: str) -> RegistryError:
    return RegistryError(
        f"MODEL_REGISTRY[{name!r}] {problem} (key {key!r}); see the example at the top of "
        f"flashface/models/model_registry.py."
    )


def _text(name: str, entry: Mapping, key: str) -> str:
    value = entry.get(key)
    if not isinstance(value, str) or not value.strip():
        raise _malformed(
            name,
            key,
            "needs a non-empty text" if value is None or isinstance(value, str) else f"has {value!r}, not a text",
        )
    return value


def _texts(name: str, entry: Mapping, key: str) -> tuple[str, ...]:
    value = entry.get(key, ())
    if isinstance(value, str) or not all(isinstance(item, str) and item for item in value):
        raise _malformed(name, key, f"has {value!r}, not a list of texts")
    return tuple(value)


def model_entry(name: str) -> ModelEntry:
    """The entry registered under `name`, checked: an unknown name is a ModelFileError, a
    malformed entry a RegistryError naming the entry and the key."""
    if name not in MODEL_REGISTRY:
        raise ModelFileError(f"Unknown model {name!r}; the known models are: {', '.join(MODEL_REGISTRY)}.")
    entry = MODEL_REGISTRY[name]
    if not isinstance(entry, Mapping):
        raise RegistryError(
            f"MODEL_REGISTRY[{name!r}] must be a dict of the keys {', '.join(_REQUIRED)} ..., "
            f"not {type(entry).__name__}."
        )
    for key in entry:
        if key not in _REQUIRED + _OPTIONAL:
            raise _malformed(name, key, f"has an unknown key; the keys are {', '.join(_REQUIRED + _OPTIONAL)}")
    url, filename, description = (_text(name, entry, key) for key in _REQUIRED)
    if os.path.basename(filename) != filename:
        raise _malformed(name, "filename", f"has {filename!r}: a file name, without folders")
    checksums = {}
    for key, digits in _HEX_DIGITS.items():
        if entry.get(key) is not None:
            value = _text(name, entry, key).lower()
            if not re.fullmatch(f"[0-9a-f]{{{digits}}}", value):
                raise _malformed(name, key, f"has {entry[key]!r}, not {digits} hexadecimal digits")
            checksums[key] = value
    size = entry.get("size")
    if size is not None and (isinstance(size, bool) or not isinstance(size, int) or size <= 0):
        raise _malformed(name, "size", f"has {size!r}, not a number of bytes")
    if size is None and not checksums:
        raise _malformed(name, "md5", "has nothing to check a file against: give md5, sha256 or the exact size")
    kind = entry.get("kind")
    if kind is not None and kind not in KINDS:
        raise _malformed(name, "kind", f"has {kind!r}; a kind is one of {', '.join(KINDS)}")
    return ModelEntry(
        name=name,
        filename=filename,
        urls=(url, *_texts(name, entry, "mirrors")),
        description=description,
        licence=entry.get("licence") or "",
        size=size,
        md5=checksums.get("md5"),
        sha256=checksums.get("sha256"),
        kind=kind,
        folder=_text(name, entry, "folder") if "folder" in entry else FLASHFACE_FOLDER,
        legacy_folders=_texts(name, entry, "legacy_folders"),
    )


def published_size(name: str) -> str:
    """The size of the registry's file `name` as users read it ("10.6 GB")."""
    size = model_entry(name).size
    return f"{size / 1e9:.1f} GB" if size else "unknown size"


def entries_of_kind(kind: str) -> list[ModelEntry]:
    """The registered files a Load Model input of that kind offers, the default (official) first."""
    return [model_entry(name) for name, entry in MODEL_REGISTRY.items() if entry.get("kind") == kind]


@dataclass(frozen=True)
class ModelFolders:
    """Where files are looked for (in order) and where a download may go (the first writable)."""

    search: tuple[Path, ...]
    download: tuple[Path, ...]

    @classmethod
    def single(cls, folder: str | os.PathLike) -> ModelFolders:
        return cls((Path(folder),), (Path(folder),))


def user_cache_dir() -> Path:
    if sys.platform == "win32":
        base = os.environ.get("LOCALAPPDATA") or Path.home() / "AppData" / "Local"
    elif sys.platform == "darwin":
        base = Path.home() / "Library" / "Caches"
    else:
        base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "flashface"


def standalone_folders() -> ModelFolders:
    """Outside ComfyUI: FLASHFACE_MODELS_DIR, else the user cache directory."""
    configured = os.environ.get("FLASHFACE_MODELS_DIR")
    return ModelFolders.single(Path(configured).expanduser() if configured else user_cache_dir())


def get_model_path(
    name: str,
    auto_download: bool = True,
    progress: ProgressCallback | None = None,
    *,
    folders: ModelFolders | None = None,
    models_dir: str | os.PathLike | None = None,
    settings: DownloadSettings | None = None,
) -> Path:
    """The path of a verified copy of the model file registered as `name`, downloading it if needed.

    folders: where to look and download (inside ComfyUI, from its folder_paths); models_dir: one
    folder for both; neither: `standalone_folders()`.
    progress: called with (bytes done, bytes total or None) while a file is hashed or downloaded.

    An existing file that fails its check is skipped (and, in a download folder, replaced; it
    never stays at the final path). Raises ModelFileError when the file is missing and
    `auto_download` is False, DownloadError when it cannot be downloaded; both say where to put
    the file by hand.
    """
    entry = model_entry(name)
    if folders is None:
        folders = ModelFolders.single(models_dir) if models_dir is not None else standalone_folders()
    problems = []
    for folder in folders.search:
        path = folder / entry.filename
        if not path.is_file():
            continue
        problem = verify_file(path, entry.expected, progress)
        if problem is None:
            return path
        logger.warning("Ignoring %s: it is not the expected %s (%s)", path, entry.description, problem)
        problems.append(f"{path} is not usable: {problem}")
    found = f" {'; '.join(problems)}." if problems else ""
    if not auto_download:
        raise ModelFileError(
            f"{entry.filename} ({entry.description}) was not found in {', '.join(map(str, folders.search))}.{found} "
            f"{manual_install_hint(source_urls(entry.urls, entry.filename), folders.download[0] / entry.filename)}."
        )
    try:
        return download_file(
            entry.urls, folders.download, entry.filename, entry.expected, progress=progress, settings=settings
        )
    except DownloadError as error:
        if not problems:
            raise
        raise DownloadError(f"{found.strip()} It could not be replaced: {error}") from error


def header_fits(kind: str, path: str | os.PathLike) -> bool:
    """Whether a .safetensors file reads as a network of `kind` from its header alone (tensor names
    and shapes: the loader's own layout check, no tensor read). Pickles, whose names cost a load to
    read, and files whose header cannot be read count as fitting: picked, their loader says what
    is wrong with them."""
    if not os.fspath(path).lower().endswith(SAFETENSORS_SUFFIXES):
        return True
    try:
        checkpoint = open_checkpoint(path)
    except (ModelFileError, OSError):
        return True
    try:
        _LAYOUT_CHECKS[kind](checkpoint)
    except ModelFileError:
        return False
    finally:
        checkpoint.close()
    return True


def _unet_layout(checkpoint) -> object:
    from .unet_loading import infer_layout, unet_view

    return infer_layout(unet_view(checkpoint))


def _vae_layout(checkpoint) -> object:
    from .vae import infer_layout

    return infer_layout(checkpoint)


def _text_encoder_layout(checkpoint) -> object:
    from .clip_text import infer_layout

    return infer_layout(checkpoint)


def _detector_layout(checkpoint) -> object:
    from .retinaface import infer_layout

    return infer_layout(checkpoint)


_LAYOUT_CHECKS = {
    "unet": _unet_layout,
    "vae": _vae_layout,
    "text_encoder": _text_encoder_layout,
    "detector": _detector_layout,
}
