"""The sampling path never reads values back from the device.

Run on the `meta` device (tensors with shapes and no values) under a dispatch mode that sees
every operator: any copy of a device tensor to the host, `.item()`, or operator whose output size
depends on a device tensor's values (nonzero, masked_select, unique) is counted. On a GPU each of
those would make the host wait for the queued kernels at every model call.
"""

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

from flashface.models.checkpoint import StateDictCheckpoint
from flashface.models.row_plan import RowPlan
from flashface.models.unet_loading import load_unet
from flashface.people import PeopleLayout
from flashface.sampling.guidance import (
    ReferenceGuidedDenoiser,
)
from flashface.sampling.schedule import NoiseSchedule
from flashface.settings import GenerationSettings
from tiny_unet import tiny_unet_state_dict

DEVICE = "meta"
aten = torch.ops.aten
VALUE_DEPENDENT = {
    aten._local_scalar_dense.default,
    aten.nonzero.default,
    aten.masked_select.default,
    aten._unique2.default,
    aten.equal.default,
    aten.is_nonzero.default,
}


class HostTransfers(TorchDispatchMode):
    """Records each operator that brings a device tensor's values to the host (`reads`), and each
    copy from the host to the device (`writes`)."""

    def __init__(self):
        super().__init__()
        self.reads, self.writes = [], []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        inputs = [t for t in tree_flatten((args, kwargs))[0] if isinstance(t, torch.Tensor)]
        from_device = any(t.device.type == DEVICE for t in inputs)
        to_host = (func is aten._to_copy.default and torch.device(kwargs.get("device", DEVICE)).type == "cpu") or (
            func is aten.copy_.default and args[0].device.type == "cpu"
        )
        if from_device and (to_host or func in VALUE_DEPENDENT):
            self.reads.append(func.__name__)
            raise RuntimeError(f"{func} reads the values of a device tensor")
        out = func(*args, **kwargs)
        outputs = [t for t in tree_flatten(out)[0] if isinstance(t, torch.Tensor)]
        if inputs and not from_device and any(t.device.type == DEVICE for t in outputs):
            self.writes.append(func.__name__)
        return out


@pytest.fixture(scope="module")
def unet_on_device():
    return load_unet(StateDictCheckpoint(tiny_unet_state_dict(seed=3)), device=DEVICE)


def inputs(batch=2, references=3, context_dim=32):
    return dict(
        x=torch.empty(batch, 4, 8, 8, device=DEVICE),
        positive=torch.empty(batch, 77, context_dim, device=DEVICE),
        negative=torch.empty(batch, 77, context_dim, device=DEVICE),
        references=torch.empty(references, 4, 7, 7, device=DEVICE),
        reference_context=torch.empty(references, 77, context_dim, device=DEVICE),
    )


def test_the_host_reading_probe_sees_a_read():
    probe = HostTransfers()
    with probe:
        torch.ones(2).to(DEVICE)
        for read in (
            lambda t: t.to("cpu"),
            lambda t: t.sum().item(),
            lambda t: t.nonzero(),
            lambda t: torch.empty(3).copy_(t),
        ):
            with pytest.raises(RuntimeError, match="reads the values"):
                read(torch.empty(3, device=DEVICE))
    assert len(probe.reads) == 4 and probe.writes == ["_to_copy.default"]


@pytest.mark.parametrize("people", [1, 2])
def test_a_unet_call_reads_nothing_from_the_device(unet_on_device, people):
    call = inputs()
    owners = None if people == 1 else (0, 0, 1)
    regions = None if people == 1 else torch.cat([torch.zeros(8, 4), torch.ones(8, 4)], 1).long()
    rows = RowPlan.of_chunks([0, 0, 1], 2, [1.2, 1.2, 0.0, 0.0, 0.0, 0.0])
    probe = HostTransfers()
    with probe:
        features = unet_on_device.encode_references(
            call["references"], 400, call["reference_context"], owners, (2, 1, 1)
        )
        out = unet_on_device(
            call["x"].repeat(3, 1, 1, 1),
            torch.full((6,), 400, device=DEVICE),
            torch.cat([call["positive"], call["positive"], call["negative"]]),
            None,
            features,
            rows,
            regions=regions,
        )
    assert out.shape == (6, 4, 8, 8) and out.device.type == DEVICE
    assert probe.reads == []
    # what reaches the device from the host per call: the weights of the rows that read references,
    # and with several people each person's token positions at each grid size
    assert len(probe.writes) == (5 if people == 1 else 5 + 2 * 2)


@pytest.mark.parametrize("timestep", [900, 400])
def test_a_sampler_step_reads_nothing_from_the_device(unet_on_device, timestep):
    call = inputs()
    settings = GenerationSettings()
    schedule = NoiseSchedule()
    probe = HostTransfers()
    with probe:
        denoiser = ReferenceGuidedDenoiser(  # the one guided step, as the Generator and the MODEL path take it
            unet_on_device,
            schedule,
            call["positive"],
            call["negative"],
            call["references"],
            settings=settings,
            reference_context=call["reference_context"],
            people=PeopleLayout((settings.face_box,), (None,), (3,), (2, 1, 1)),
        )
        denoiser(call["x"], float(schedule.sigmas[timestep]))
    assert probe.reads == []
