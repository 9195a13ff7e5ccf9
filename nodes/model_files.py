"""Which model files the Load Model node offers, and the path behind a choice.

Each kind of model (UNet, VAE, CLIP, detector) is offered from the ``flashface`` model folder
plus the folders earlier FlashFace ports used for that kind (see the registry), in ComfyUI's
folder order, including what ``extra_model_paths.yaml`` adds. The registry's file names come
first (the official file is the default) whether or not they are on disk yet: choosing one that
is missing downloads it, verified, with progress in ComfyUI; a registered file that is present is
verified (cached by size and mtime). Any other file in those folders is loaded as it is.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import comfy.utils
import folder_paths

from ..flashface.errors import ModelFileError
from ..flashface.models.model_registry import MODEL_EXTENSIONS, REGISTRY, get_model_path, model_dirs

logger = logging.getLogger(__name__)

REGISTRY_NAMES_BY_KIND = {
    "unet": ("flashface", "flashface_safetensors"),
    "vae": ("vae",),
    "clip": ("clip",),
    "detector": ("retinaface", "retinaface_facexlib"),
}
MEGABYTE = 1 << 20


def kind_folders(kind: str) -> list[Path]:
    """Every folder searched for files of this kind, in priority order."""
    folders: list[Path] = []
    for name in REGISTRY_NAMES_BY_KIND[kind]:
        for folder in model_dirs(REGISTRY[name], folder_paths)[1]:
            if folder not in folders:
                folders.append(folder)
    return folders


def _mtime(directory: str) -> int | None:
    try:
        return os.stat(directory).st_mtime_ns
    except OSError:
        return None


# folder -> (modification time of every directory walked, the model files found)
_listings: dict[Path, tuple[dict[str, int | None], list[str]]] = {}


def _files_below(folder: Path) -> list[str]:
    """Model files below `folder`, as '/'-separated relative names (missing folder: none).

    The listing is kept and reused while no directory in it changed (files added or removed
    change their directory's time), as ComfyUI's own folder_paths does: the node list is asked
    for at every /object_info and prompt validation.
    """
    cached = _listings.get(folder)
    if cached is not None and all(_mtime(directory) == time for directory, time in cached[0].items()):
        return cached[1]
    times, names = {str(folder): _mtime(str(folder))}, []
    for root, dirs, files in os.walk(folder, followlinks=True):
        dirs[:] = [d for d in dirs if not d.startswith(".")]
        times[root] = _mtime(root)
        for file in files:
            if os.path.splitext(file)[1].lower() in MODEL_EXTENSIONS:
                names.append(Path(root, file).relative_to(folder).as_posix())
    _listings[folder] = (times, names)
    return names


def choices(kind: str) -> list[str]:
    """The names offered for one kind: registry file names first, then the other files found."""
    registered = [REGISTRY[name].file_name for name in REGISTRY_NAMES_BY_KIND[kind]]
    other_registered = {entry.file_name for entry in REGISTRY.values()} - set(registered)
    found: set[str] = set()
    try:
        for folder in kind_folders(kind):
            found.update(_files_below(folder))
    except OSError as error:  # an unreadable folder must not break the node list
        logger.warning("FlashFace: could not list model files: %s", error)
    return registered + sorted(found - set(registered) - other_registered)


def _registry_entry(kind: str, name: str):
    for registry_name in REGISTRY_NAMES_BY_KIND[kind]:
        if REGISTRY[registry_name].file_name == name:
            return REGISTRY[registry_name]
    return None


def locate(kind: str, name: str) -> Path | None:
    """The file a choice would load, as it is on disk now (not verified, never downloaded)."""
    for folder in kind_folders(kind):
        if (folder / name).is_file():
            return folder / name
    return None


def fingerprint(kind: str, name: str) -> str:
    """Identity of the file behind a choice (device, inode, size, time): it changes when the file
    is replaced, overwritten or truncated, so ComfyUI runs Load Model again."""
    path = locate(kind, name)
    if path is None:
        return f"{name}: missing"
    stat = path.stat()
    return f"{path}: {stat.st_dev}:{stat.st_ino}:{stat.st_size}:{stat.st_mtime_ns}"


def resolve(kind: str, name: str) -> Path:
    """The file behind a choice: registry files verified (downloaded if missing), others as found.

    Verification and download report progress (in MB) on the running node's progress bar.
    """
    entry = _registry_entry(kind, name)
    if entry is not None:
        bar = comfy.utils.ProgressBar(1)

        def progress(done: int, total: int | None) -> None:
            bar.update_absolute(done // MEGABYTE, max(1, (total or done) // MEGABYTE))

        return get_model_path(entry, folder_paths=folder_paths, progress=progress)
    path = locate(kind, name)
    if path is not None:
        return path
    raise ModelFileError(f"The model file {name!r} is no longer in {', '.join(map(str, kind_folders(kind)))}; "
                         "refresh the node list (press R) and choose another file.")
