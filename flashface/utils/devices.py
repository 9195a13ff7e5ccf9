"""The device and UNet weight dtype a run uses when the user leaves them to us (``auto``).

``auto`` picks the first of CUDA, Apple MPS and the CPU that torch can use, and stores the UNet's
weights the way ComfyUI does for an SD1.5 UNet: fp16 on a GPU with fast fp16 (CUDA compute
capability 7.0 and later, and 6.0; MPS), fp32 elsewhere (the CPU has no fast fp16). A device the
user names is checked before any weight is read, so a missing GPU is one clear message instead of
an error deep inside a load.
"""

from __future__ import annotations

import logging

import torch

from ..errors import InvalidInputError
from ..models.ops import WEIGHT_DTYPES

logger = logging.getLogger(__name__)

AUTO = "auto"


def _mps_available() -> bool:
    mps = getattr(torch.backends, "mps", None)
    return mps is not None and mps.is_available()


def pick_device(requested: str = AUTO) -> torch.device:
    """`requested` as a torch device, checked to be usable; ``auto``: CUDA, then MPS, then CPU."""
    if requested == AUTO:
        if torch.cuda.is_available():
            return torch.device("cuda")
        if _mps_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        device = torch.device(requested)
    except (RuntimeError, ValueError) as error:
        raise InvalidInputError(
            f"--device {requested!r} is not a torch device: use auto, cpu, cuda, cuda:N or mps."
        ) from error
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise InvalidInputError(
                f"--device {requested}: this torch ({torch.__version__}) sees no CUDA GPU. Use --device auto "
                "(it takes the CPU here), or install a CUDA build of torch and the GPU's driver."
            )
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise InvalidInputError(
                f"--device {requested}: there are {torch.cuda.device_count()} CUDA GPU(s), numbered from 0."
            )
    if device.type == "mps" and not _mps_available():
        raise InvalidInputError(f"--device {requested}: Apple MPS is not available here. Use --device auto or cpu.")
    return device


def has_fast_fp16(device: torch.device) -> bool:
    """Whether `device` computes fp16 at least as fast as fp32 (what ComfyUI checks before it picks fp16)."""
    if device.type == "mps":
        return True
    if device.type != "cuda":
        return False
    major, minor = torch.cuda.get_device_capability(device)
    return major >= 7 or (major, minor) == (6, 0)  # 6.1 (GTX 10xx) runs fp16 at a fraction of fp32's speed


def pick_weight_dtype(requested: str, device: torch.device) -> torch.dtype:
    """The UNet's weight dtype: `requested` by its name in `WEIGHT_DTYPES`, or ``auto`` for `device`."""
    if requested != AUTO:
        return WEIGHT_DTYPES[requested]
    return torch.float16 if has_fast_fp16(device) else torch.float32


def dtype_name(dtype: torch.dtype) -> str:
    """The name a user picks `dtype` by (`WEIGHT_DTYPES`)."""
    return next(name for name, value in WEIGHT_DTYPES.items() if value == dtype)


def pick_device_and_dtype(device: str = AUTO, dtype: str = AUTO) -> tuple[torch.device, torch.dtype]:
    """`pick_device` and `pick_weight_dtype` together, said in one log line."""
    chosen_device = pick_device(device)
    chosen_dtype = pick_weight_dtype(dtype, chosen_device)
    logger.info(
        "device %s%s, UNet weights %s%s",
        chosen_device,
        " (auto)" if device == AUTO else "",
        dtype_name(chosen_dtype),
        " (auto)" if dtype == AUTO else "",
    )
    return chosen_device, chosen_dtype
