"""`--device auto` and `--dtype auto` (flashface/utils/devices.py) on each kind of machine, with
torch's device queries answered as that machine would: the same code paths a GPU run takes."""

from __future__ import annotations

import logging
import re

import pytest
import torch

from flashface.errors import InvalidInputError
from flashface.utils import devices


@pytest.fixture
def machine(monkeypatch):
    """Make torch see a machine: `machine(cuda=N, capability=(major, minor), mps=bool)`."""

    def see(cuda: int = 0, capability: tuple[int, int] = (8, 6), mps: bool = False) -> None:
        monkeypatch.setattr(torch.cuda, "is_available", lambda: cuda > 0)
        monkeypatch.setattr(torch.cuda, "device_count", lambda: cuda)
        monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: capability)
        monkeypatch.setattr(torch.backends.mps, "is_available", lambda: mps)

    return see


@pytest.mark.parametrize(
    "seen, device, dtype",
    [
        (dict(cuda=2, capability=(8, 6)), "cuda", torch.float16),  # Ampere
        (dict(cuda=1, capability=(7, 5)), "cuda", torch.float16),  # Turing
        (dict(cuda=1, capability=(6, 0)), "cuda", torch.float16),  # P100: fast fp16
        (dict(cuda=1, capability=(6, 1)), "cuda", torch.float32),  # GTX 10xx: slow fp16
        (dict(cuda=1, mps=True), "cuda", torch.float16),  # CUDA first
        (dict(mps=True), "mps", torch.float16),
        (dict(), "cpu", torch.float32),
    ],
)
def test_auto_takes_the_first_gpu_kind_and_its_fast_dtype(machine, seen, device, dtype, caplog):
    machine(**seen)
    with caplog.at_level(logging.INFO, logger=devices.__name__):
        chosen = devices.pick_device_and_dtype()
    assert chosen == (torch.device(device), dtype)
    assert caplog.messages == [f"device {device} (auto), UNet weights {devices.dtype_name(dtype)} (auto)"]


def test_what_the_user_names_is_taken_as_named(machine):
    machine(cuda=2, capability=(6, 1))
    assert devices.pick_device_and_dtype("cuda:1", "bf16") == (torch.device("cuda:1"), torch.bfloat16)
    assert devices.pick_device_and_dtype("cpu", "auto") == (torch.device("cpu"), torch.float32)
    assert devices.pick_weight_dtype("auto", torch.device("cuda:1")) == torch.float32


@pytest.mark.parametrize(
    "seen, requested, message",
    [
        (dict(), "cuda", "sees no CUDA GPU"),
        (dict(cuda=1), "cuda:1", "there are 1 CUDA GPU(s), numbered from 0"),
        (dict(cuda=1), "mps", "Apple MPS is not available"),
        (dict(), "gpu", "is not a torch device"),
    ],
)
def test_a_device_torch_cannot_use_is_refused_before_anything_loads(machine, seen, requested, message):
    machine(**seen)
    with pytest.raises(InvalidInputError, match=re.escape(message)):
        devices.pick_device(requested)
