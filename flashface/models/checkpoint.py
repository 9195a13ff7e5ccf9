"""Reading checkpoint files and loading them into modules: the one loader of every FlashFace model.

A model module describes how its parameters come out of a file as a *plan*: for every key of
the module's state dict, the file keys to read and how to combine them (take one, check two
aliases are equal, concatenate q/k/v...). `load_module` then

* builds the module on the meta device (no random weights are ever allocated),
* checks that the file holds exactly the planned keys (plus keys the caller chose to ignore),
  and fails with a message naming the expected model otherwise — never a half-loaded model,
* reads each tensor once, converts it straight to the requested dtype and device, and assigns
  it into the module (``load_state_dict(strict=True, assign=True)``).

Files are read lazily: ``.safetensors`` through ``safe_open`` (memory-mapped), pickles
(``.pth``/``.ckpt``/``.pt``/``.bin``) through ``torch.load(weights_only=True, mmap=True)``,
so tensors the plan does not use (``ref_middle.*``, CLIP's vision tower) are never read. Every
tensor a module keeps is copied out of the mapping, one at a time: a loaded model owns its memory
and does not depend on the file staying as it was.
"""

from __future__ import annotations

import logging
import os
import re
import zipfile
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Generic, TypeVar

import torch
from torch import nn

from ..errors import ModelFileError
from .ops import STORAGE_ONLY_DTYPES, at_least_fp32, norm_parameter_names

logger = logging.getLogger(__name__)

SAFETENSORS_SUFFIXES = (".safetensors", ".sft")
PICKLE_SUFFIXES = (".pth", ".ckpt", ".pt", ".bin")
MODEL_SUFFIXES = SAFETENSORS_SUFFIXES + PICKLE_SUFFIXES


class Checkpoint:
    """Lazy read access to the tensors of one checkpoint file."""

    path: str = "<memory>"

    def keys(self) -> list[str]:
        raise NotImplementedError

    def shape(self, key: str) -> tuple[int, ...]:
        raise NotImplementedError

    def tensor(self, key: str) -> torch.Tensor:
        """The tensor stored under `key`, on the CPU (or the meta device for manifests)."""
        raise NotImplementedError

    def metadata(self) -> dict[str, str]:
        """Free-form string metadata stored with the tensors (only safetensors files have any)."""
        return {}

    def __contains__(self, key: str) -> bool:
        return key in self._key_set()

    def _key_set(self) -> frozenset[str]:
        if not hasattr(self, "_keys_cache"):
            self._keys_cache = frozenset(self.keys())
        return self._keys_cache

    def close(self) -> None:
        """Release the file; tensors already returned stay valid."""


class SafetensorsCheckpoint(Checkpoint):
    def __init__(self, path: str):
        from safetensors import safe_open

        self.path = path
        try:
            self._file = safe_open(path, framework="pt", device="cpu")
        except Exception as exc:  # safetensors raises its own error types for bad headers
            raise _corrupt(path, exc) from exc
        self._keys = list(self._file.keys())

    def keys(self) -> list[str]:
        return list(self._keys)

    def shape(self, key: str) -> tuple[int, ...]:
        return tuple(self._file.get_slice(key).get_shape())

    def tensor(self, key: str) -> torch.Tensor:
        try:
            return self._file.get_tensor(key)
        except Exception as exc:
            raise _corrupt(self.path, exc) from exc

    def metadata(self) -> dict[str, str]:
        return dict(self._file.metadata() or {})

    def close(self) -> None:
        del self._file  # tensors already returned stay valid


class StateDictCheckpoint(Checkpoint):
    """A checkpoint already in memory as a dict of tensors (pickles, or tensors built in code)."""

    def __init__(self, state_dict: Mapping[str, torch.Tensor], path: str = "<memory>"):
        self.path = path
        self._sd = dict(state_dict)

    def keys(self) -> list[str]:
        return list(self._sd)

    def shape(self, key: str) -> tuple[int, ...]:
        return tuple(self._sd[key].shape)

    def tensor(self, key: str) -> torch.Tensor:
        return self._sd[key]

    def close(self) -> None:
        self._sd = {}


_DAMAGE_PROBE_BYTES = 1 << 16


def _damage(path: str) -> str | None:
    """What is plainly wrong with a file's bytes (empty, zero-filled), or None."""
    try:
        size = os.path.getsize(path)
        with open(path, "rb") as file:
            head = file.read(_DAMAGE_PROBE_BYTES)
    except OSError as exc:
        return f"it cannot be read ({exc.strerror or exc})"
    if size == 0:
        return "it is empty (0 bytes)"
    if not head.strip(b"\0"):
        return (
            f"it starts with {len(head)} zero bytes ({size} bytes in all), which is what a download that "
            "reserved the space and stopped early leaves"
        )
    return None


_ZIP_MAGIC, _PICKLE_PROTOCOL = b"PK\x03\x04", b"\x80"  # torch.save: a zip archive, or (legacy) a pickle


def _foreign_format(path: str) -> str | None:
    """Why the file's first bytes are not those of any checkpoint format its name claims (a text
    file or an image renamed .pth, say), or None."""
    try:
        with open(path, "rb") as file:
            head = file.read(16)
    except OSError:
        return None
    if not head.strip(b"\0"):
        return None  # empty or zero-filled: `_damage` says which
    if path.lower().endswith(SAFETENSORS_SUFFIXES):
        if len(head) > 8 and head[8:9] == b"{":
            return None
        kind = "a safetensors file (which starts with its JSON header's length, then '{')"
    elif head.startswith((_ZIP_MAGIC, _PICKLE_PROTOCOL)):
        return None
    else:
        kind = "a PyTorch checkpoint (a zip archive or a pickle)"
    looks = "text" if all(32 <= byte < 127 or byte in b"\t\r\n" for byte in head) else "something else"
    return f"it is not {kind}: it starts with {head!r}, which looks like {looks}"


def _corrupt(path: str, exc: BaseException) -> ModelFileError:
    foreign = _foreign_format(path)
    if foreign:
        return ModelFileError(
            f"The file {path} is not a model file: {foreign}. Pick the right file, or download "
            "the model again if this one was saved by mistake."
        )
    damage = _damage(path)
    reason = damage or f"{type(exc).__name__}: {_first_line(exc)}"
    return ModelFileError(
        f"The model file {path} could not be read: {reason}. It is corrupt or incompletely downloaded: "
        "delete it and download it again."
    )


def _first_line(exc: BaseException) -> str:
    """The first line of an error's message, without PyTorch's advice to load unsafely."""
    line = str(exc).splitlines()[0] if str(exc) else ""
    return line.split(" Re-running `torch.load`")[0].split(" Re-running torch.load")[0]


# How torch.load(weights_only=True) names a Python object it refused: torch 2.4 and later
# "Unsupported global: GLOBAL x.y", earlier "Unsupported class x.y".
_UNSAFE_OBJECT = re.compile(r"Unsupported (?:global: GLOBAL|class) ([\w.]+)")


def _is_unsafe_pickle(exc: BaseException) -> bool:
    """torch.load(weights_only=True) refused a pickle because it holds Python objects."""
    return _UNSAFE_OBJECT.search(str(exc)) is not None


def _unsafe_globals(exc: BaseException) -> str:
    """The Python objects a refused pickle names, for the message."""
    names = _UNSAFE_OBJECT.findall(str(exc))
    return ", ".join(dict.fromkeys(names)) or "not named"


def _unwrap_pickle(obj: object, path: str) -> Mapping[str, torch.Tensor]:
    # Some trainers save {"state_dict": {...}} or {"params": ...}, SD checkpoints {"state_dict": {...},
    # "global_step": 840000, ...} (numbers beside the tensors); the published files are flat.
    for wrapper in ("state_dict", "model", "params"):
        if (
            isinstance(obj, Mapping)
            and isinstance(obj.get(wrapper), Mapping)
            and not any(isinstance(value, torch.Tensor) for value in obj.values())
        ):
            obj = obj[wrapper]
    if not isinstance(obj, Mapping) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise ModelFileError(
            f"The model file {path} does not hold a plain dictionary of tensors, so it is not a "
            "model checkpoint FlashFace can use. Check that you picked the right file."
        )
    return obj


def open_checkpoint(path: str | os.PathLike) -> Checkpoint:
    """Open a checkpoint file for lazy reading; never executes code from a pickle."""
    path = os.fspath(path)
    if os.path.isdir(path):
        raise ModelFileError(f"{path} is a folder, not a model file: give the path of the file itself.")
    if not os.path.isfile(path):
        raise ModelFileError(f"The model file {path} does not exist. Download it or select another file.")
    lower = path.lower()
    if lower.endswith(SAFETENSORS_SUFFIXES):
        return SafetensorsCheckpoint(path)
    if not lower.endswith(PICKLE_SUFFIXES):
        raise ModelFileError(f"{path}: unknown model file type; expected one of {', '.join(MODEL_SUFFIXES)}.")
    # Zip-format pickles (torch.save since 1.6) can be memory-mapped; legacy ones cannot.
    mmap = zipfile.is_zipfile(path)
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
    except Exception as exc:
        if _is_unsafe_pickle(exc) and _damage(path) is None:
            raise ModelFileError(
                f"The model file {path} contains Python objects other than tensors ({_unsafe_globals(exc)}) and "
                "was not loaded: loading them could run code. Use the published checkpoint or a .safetensors file."
            ) from exc
        raise _corrupt(path, exc) from exc
    return StateDictCheckpoint(_unwrap_pickle(obj, path), path=path)


def unreadable_reason(path: str | os.PathLike) -> str | None:
    """Why the file cannot be opened as a checkpoint (empty, zero-filled, truncated, not a tensor
    file, holding Python objects), or None. Reads the header and index only, not the tensors."""
    try:
        with checkpoint_source(path) as checkpoint:
            if not checkpoint.keys():
                return "it holds no tensors"
    except ModelFileError as error:
        return str(error)
    return None


@contextmanager
def checkpoint_source(source: str | os.PathLike | Checkpoint) -> Iterator[Checkpoint]:
    """`source` itself if it is already a `Checkpoint` (the caller keeps it open), otherwise the
    file at that path, opened for the block and closed after it."""
    if isinstance(source, Checkpoint):
        yield source
        return
    checkpoint = open_checkpoint(source)
    try:
        yield checkpoint
    finally:
        checkpoint.close()


def _take_first(tensors: Sequence[torch.Tensor]) -> torch.Tensor:
    return tensors[0]


@dataclass(frozen=True)
class TensorPlan:
    """How one module tensor is made from file tensors."""

    file_keys: tuple[str, ...]
    combine: Callable[[Sequence[torch.Tensor]], torch.Tensor] = _take_first

    @classmethod
    def copy(cls, key: str) -> TensorPlan:
        return cls((key,))

    @classmethod
    def aliased(cls, *keys: str) -> TensorPlan:
        """The same tensor stored under several names: read all, check equal, keep one."""
        return cls(tuple(keys), _check_aliases_equal)

    @classmethod
    def concat(cls, *keys: str, dim: int = 0) -> TensorPlan:
        return cls(tuple(keys), lambda ts: torch.cat(list(ts), dim=dim))

    def narrowed(self, dim: int, start: int, length: int) -> TensorPlan:
        """This plan's tensor, cut to `length` entries of dimension `dim` from `start`."""
        combine = self.combine
        return TensorPlan(self.file_keys, lambda ts: combine(ts).narrow(dim, start, length))


class _AliasMismatch(Exception):
    pass


def _check_aliases_equal(tensors: Sequence[torch.Tensor]) -> torch.Tensor:
    first = tensors[0]
    for other in tensors[1:]:
        if first.is_meta or other.is_meta:
            if first.shape != other.shape:
                raise _AliasMismatch()
            continue
        if first.shape != other.shape or not torch.equal(_comparable(first), _comparable(other)):
            raise _AliasMismatch()
    return first


def _comparable(tensor: torch.Tensor) -> torch.Tensor:
    """`tensor` as something torch.equal takes: fp8 as its bytes (torch before 2.5 cannot compare fp8)."""
    return tensor.view(torch.uint8) if tensor.dtype in STORAGE_ONLY_DTYPES else tensor


Plan = Mapping[str, TensorPlan]


def _none(key: str) -> bool:
    return False


ConfigT = TypeVar("ConfigT")
ModuleT = TypeVar("ModuleT", bound=nn.Module)


@dataclass(frozen=True)
class Layout(Generic[ConfigT]):
    """What a loader's `infer_layout` reads off a file's key names and shapes: the architecture
    (`config`), the `plan` that fills the module, and which other file keys may stay unread."""

    config: ConfigT
    plan: Plan
    unused: Callable[[str], bool] = _none


def check_plan(
    checkpoint: Checkpoint, plan: Plan, what: str, ignore: Callable[[str], bool] = lambda key: False
) -> None:
    """Fail unless the file holds exactly the planned keys plus ignored ones."""
    wanted = {k for p in plan.values() for k in p.file_keys}
    present = set(checkpoint.keys())
    missing = sorted(wanted - present)
    unexpected = sorted(k for k in present - wanted if not ignore(k))
    if missing or unexpected:
        details = []
        if missing:
            details.append(f"{len(missing)} expected tensors are missing (e.g. {', '.join(missing[:3])})")
        if unexpected:
            details.append(f"{len(unexpected)} tensors are not part of it (e.g. {', '.join(unexpected[:3])})")
        raise ModelFileError(
            f"{checkpoint.path} is not a {what} checkpoint: {'; '.join(details)}. Select the {what} file in that slot."
        )


def load_module(
    factory: Callable[[], ModuleT],
    checkpoint: Checkpoint,
    plan: Plan,
    *,
    what: str,
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float32,
    ignore: Callable[[str], bool] = lambda key: False,
) -> ModuleT:
    """Build `factory()` on the meta device and fill it from `checkpoint` following `plan`.

    `what` names the model in error messages ("FlashFace UNet"). Floating-point tensors are
    converted to `dtype`, except the parameters of normalization layers: they are kept in at least
    fp32 (`ops.norm_parameter_names`). Integer buffers keep their dtype. The returned module is in eval mode with
    gradients disabled.
    """
    check_plan(checkpoint, plan, what, ignore)
    with torch.device("meta"):
        module = factory()
    expected = module.state_dict()
    keep_fp32 = norm_parameter_names(module)
    if set(expected) != set(plan):
        extra, lacking = sorted(set(plan) - set(expected)), sorted(set(expected) - set(plan))
        raise RuntimeError(f"{what}: plan and module disagree (plan only: {extra[:5]}, module only: {lacking[:5]})")

    device = torch.device(device)
    state: dict[str, torch.Tensor] = {}
    for name, reference in expected.items():
        tensor_plan = plan[name]
        try:
            tensor = tensor_plan.combine([checkpoint.tensor(k) for k in tensor_plan.file_keys])
        except _AliasMismatch:
            raise ModelFileError(
                f"{checkpoint.path}: the tensors {', '.join(tensor_plan.file_keys)} should be identical "
                f"copies but differ, so this is not an unmodified {what} file. Download it again."
            ) from None
        if tuple(tensor.shape) != tuple(reference.shape):
            raise ModelFileError(
                f"{checkpoint.path}: tensor {tensor_plan.file_keys[0]} has shape {tuple(tensor.shape)} where a "
                f"{what} has {tuple(reference.shape)}. The file is for a different model; select the {what} file."
            )
        if tensor.is_floating_point():
            target = at_least_fp32(dtype) if name in keep_fp32 else dtype
        else:
            target = reference.dtype
        # Always a copy: the file's tensors are memory-mapped views, and a model that kept them
        # would fault (SIGBUS) or change silently when the file is truncated or overwritten.
        state[name] = tensor.to(device=device, dtype=target, copy=True)
    module.load_state_dict(state, strict=True, assign=True)
    module.requires_grad_(False).eval()
    logger.debug("loaded %s from %s (%d tensors, %s, %s)", what, checkpoint.path, len(state), device, dtype)
    return module


def load_layout(
    build: Callable[[ConfigT], ModuleT],
    source: str | os.PathLike | Checkpoint,
    infer_layout: Callable[[Checkpoint], Layout[ConfigT]],
    *,
    what: str,
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float32,
) -> ModuleT:
    """What every loader does: open `source` (a path, or a `Checkpoint` the caller keeps open),
    read its layout with `infer_layout`, and fill `build(layout.config)` by `load_module` (the
    keys `layout.unused` may stay unread)."""
    with checkpoint_source(source) as checkpoint:
        layout = infer_layout(checkpoint)
        module = load_module(
            lambda: build(layout.config),
            checkpoint,
            layout.plan,
            what=what,
            device=device,
            dtype=dtype,
            ignore=layout.unused,
        )
    logger.info("loaded %s from %s%s", what, checkpoint.path, "" if layout.config is None else f": {layout.config}")
    return module


def required_shape(checkpoint: Checkpoint, key: str, problem: str, dims: int | None = None) -> tuple[int, ...]:
    """The shape of tensor `key`; a ModelFileError saying `problem` when it is missing (or does
    not have `dims` dimensions)."""
    shape = tuple(checkpoint.shape(key)) if key in checkpoint else None
    if shape is None or (dims is not None and len(shape) != dims):
        found = "missing" if shape is None else f"of shape {shape}"
        raise ModelFileError(f"{checkpoint.path}: tensor {key} is {found}. {problem}")
    return shape


def count_indexed(checkpoint: Checkpoint, pattern: str, start: int = 0) -> int:
    """How many of pattern.format(start), pattern.format(start + 1), ... are in the checkpoint,
    counting until the first that is not."""
    count = 0
    while pattern.format(start + count) in checkpoint:
        count += 1
    return count
