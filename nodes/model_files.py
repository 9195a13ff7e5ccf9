"""Which model files the Load Model node offers, where ComfyUI keeps them, and the path behind a
choice: the adapter between ComfyUI's ``folder_paths`` and the registry (which knows no ComfyUI).

Each kind of model (`KINDS`: UNet, VAE, text encoder, detector) is offered from the folders of its
registry entries: the ``flashface`` model folder key (``models/flashface`` plus what
``extra_model_paths.yaml`` adds) and the folder keys earlier FlashFace ports used, in ComfyUI's
folder order. The registry's file names come first (the official file is the default) whether or
not they are on disk yet: choosing one that is missing downloads it, verified, with progress in
ComfyUI; a registered file that is present is verified (cached by size and mtime). Any other file
in those folders is loaded as it is.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import comfy.utils
import folder_paths

from ..flashface.errors import ModelFileError
from ..flashface.models.checkpoint import MODEL_SUFFIXES
from ..flashface.models.model_registry import (
    FLASHFACE_FOLDER,
    KINDS,
    MODEL_REGISTRY,
    ModelEntry,
    ModelFolders,
    entries_of_kind,
    get_model_path,
    header_fits,
)

logger = logging.getLogger(__name__)

INPUT_KINDS = dict(zip(("unet_name", "vae_name", "clip_name", "detector_name"), KINDS))
"""Load Model's file inputs and the kind of model each offers."""
MEGABYTE = 1 << 20


def register_flashface_folder() -> None:
    """Declare the ``flashface`` model folder in ComfyUI (once, when the pack is imported).

    Keeps the folders ``extra_model_paths.yaml`` already gave the key (it is read before custom
    nodes load) and adds ``models/flashface`` only when there are none.
    """
    folders, extensions = folder_paths.folder_names_and_paths.get(
        FLASHFACE_FOLDER, ([os.path.join(folder_paths.models_dir, FLASHFACE_FOLDER)], set())
    )
    folder_paths.folder_names_and_paths[FLASHFACE_FOLDER] = (list(folders), set(extensions) | set(MODEL_SUFFIXES))


def _key_folders(key: str) -> list[Path]:
    """The folders of a ComfyUI model folder key, in ComfyUI's order (an unknown key: models/<key>)."""
    try:
        return [Path(folder) for folder in folder_paths.get_folder_paths(key)]
    except KeyError:
        return [Path(folder_paths.models_dir) / key]


def entry_folders(entry: ModelEntry) -> ModelFolders:
    """Downloads go to the entry's folder key; the files of earlier ports are found in its legacy keys too."""
    download = _key_folders(entry.folder)
    search = list(download)
    for key in entry.legacy_folders:
        search += [folder for folder in _key_folders(key) if folder not in search]
    return ModelFolders(search=tuple(search), download=tuple(download))


def kind_folders(kind: str) -> list[Path]:
    """Every folder searched for files of this kind, in priority order."""
    folders: list[Path] = []
    for entry in entries_of_kind(kind):
        folders += [folder for folder in entry_folders(entry).search if folder not in folders]
    return folders or _key_folders(FLASHFACE_FOLDER)


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
            if file.lower().endswith(MODEL_SUFFIXES):
                names.append(Path(root, file).relative_to(folder).as_posix())
    _listings[folder] = (times, names)
    return names


# (kind, path, size, time) -> whether the file's header reads as that kind (`header_fits`)
_fits: dict[tuple[str, Path, int, int], bool] = {}


def _offered(kind: str, path: Path) -> bool:
    """Whether a file found in a kind's folders is offered for it: not a .safetensors file whose
    header says it is another network (models/flashface holds all four kinds)."""
    try:
        stat = path.stat()
    except OSError:
        return True
    key = (kind, path, stat.st_size, stat.st_mtime_ns)
    if key not in _fits:
        _fits[key] = header_fits(kind, path)
    return _fits[key]


def choices(kind: str) -> list[str]:
    """The names offered for one kind: registry file names first, then the other files found that
    can be of that kind."""
    registered = [entry.filename for entry in entries_of_kind(kind)]
    other_registered = {entry.get("filename") for entry in MODEL_REGISTRY.values()} - set(registered)
    found: set[str] = set()
    try:
        for folder in kind_folders(kind):
            found.update(name for name in _files_below(folder) if _offered(kind, folder / name))
    except OSError as error:  # an unreadable folder must not break the node list
        logger.warning("FlashFace: could not list model files: %s", error)
    return registered + sorted(found - set(registered) - other_registered)


def locate(kind: str, name: str) -> Path | None:
    """The file a choice would load, as it is on disk now (not verified, never downloaded)."""
    for folder in kind_folders(kind):
        if (folder / name).is_file():
            return folder / name
    return None


def fingerprint(kind: str, name: str) -> str:
    """Identity of the file behind a choice (device, inode, size, time): it changes when the file
    is replaced, overwritten or truncated, so ComfyUI runs Load Model again."""
    return file_fingerprint(locate(kind, name), name)


def file_fingerprint(path: Path | None, name: str = "") -> str:
    """Identity of a file (device, inode, size, time), or that `name` is missing."""
    if path is None:
        return f"{name}: missing"
    stat = path.stat()
    return f"{path}: {stat.st_dev}:{stat.st_ino}:{stat.st_size}:{stat.st_mtime_ns}"


CHECKPOINTS = "checkpoints"  # ComfyUI's folder key of single-file checkpoints (models/checkpoints)


def checkpoint_choices() -> list[str]:
    """The checkpoints ComfyUI's own Load Checkpoint offers."""
    return folder_paths.get_filename_list(CHECKPOINTS)


def _checkpoint_path(name: str) -> Path | None:
    path = folder_paths.get_full_path(CHECKPOINTS, name)
    return Path(path) if path else None


def checkpoint_fingerprint(name: str) -> str:
    """`fingerprint` of a checkpoint of models/checkpoints."""
    return file_fingerprint(_checkpoint_path(name), name)


def resolve_checkpoint(name: str) -> Path:
    """The file behind a checkpoint choice, as it is on disk."""
    path = _checkpoint_path(name)
    if path is None:
        raise ModelFileError(
            f"The checkpoint {name!r} is not in {', '.join(folder_paths.get_folder_paths(CHECKPOINTS))}; "
            "refresh the node list (press R) and choose another file."
        )
    return path


def resolve(kind: str, name: str) -> Path:
    """The file behind a choice: registry files verified (downloaded if missing), others as found.

    Verification and download report progress (in MB) on the running node's progress bar.
    """
    entry = next((entry for entry in entries_of_kind(kind) if entry.filename == name), None)
    if entry is not None:
        bar = comfy.utils.ProgressBar(1)

        def progress(done: int, total: int | None) -> None:
            bar.update_absolute(done // MEGABYTE, max(1, (total or done) // MEGABYTE))

        return get_model_path(entry.name, folders=entry_folders(entry), progress=progress)
    path = locate(kind, name)
    if path is not None:
        return path
    raise ModelFileError(
        f"The model file {name!r} is no longer in {', '.join(map(str, kind_folders(kind)))}; "
        "refresh the node list (press R) and choose another file."
    )
