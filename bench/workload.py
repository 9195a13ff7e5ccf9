"""What the bench scripts run: FlashFace UNets with random weights and one sampling step's inputs."""

from __future__ import annotations

import torch

from flashface.models.unet import FlashFaceUNet, UNetConfig
from flashface.people import PeopleLayout
from flashface.sampling.guidance import branch_chunks, row_plan
from flashface.settings import GenerationSettings


def random_unet(
    config: UNetConfig, dtype: torch.dtype, device: str | torch.device = "cpu", seed: int = 0
) -> FlashFaceUNet:
    """A UNet of `config` with fan-in scaled uniform weights (norms: scale 1, shift 0), built on
    meta and filled in place on `device` (no default init, no randn over 1.6 G values). Norm
    parameters stay fp32, as `load_unet` keeps them."""
    with torch.device("meta"):
        model = FlashFaceUNet(config)
    model.to_empty(device=device)
    generator = torch.Generator(device).manual_seed(seed)
    for name, param in model.named_parameters():
        if param.dim() > 1:
            bound = param[0].numel() ** -0.5
            param.data.uniform_(-bound, bound, generator=generator)
        elif name.endswith("weight"):  # norm scale
            param.data.fill_(1.0)
        else:
            param.data.zero_()
    norms = (torch.nn.GroupNorm, torch.nn.LayerNorm)
    for module in model.modules():
        if not isinstance(module, norms):
            for param in module.parameters(recurse=False):
                param.data = param.data.to(dtype)
    return model.requires_grad_(False).eval()


def people_boxes(people: int) -> list[tuple[float, float, float, float]]:
    """Face boxes of `people` people side by side, a quarter of each one's share of the width wide."""
    return [((p + 0.25) / people, 0.2, (p + 0.5) / people, 0.2 + 0.25 / people) for p in range(people)]


class StepInputs:
    """One sampling step's inputs as the sampler builds them: one latent per sample repeated per
    branch, one face mask, the contexts [positive | negative] (2 branches) or
    [positive | positive | negative] (3 branches), and `refs` references made of `photos`
    distinct faces padded by repetition (the official demo pads 1-3 photos to four): `faces` and
    how many times each stands (`copies`), as the library takes them, and `references`, the
    padded stack the official code takes. The reference context is the negative prompt, as
    officially. With `people` > 1, each person has `refs` references of their own `photos` faces
    and a face box (`people_boxes`); `owners` and `regions` say whose each face and each latent
    cell is."""

    def __init__(
        self,
        size: int,
        refs: int,
        photos: int,
        batch: int,
        context_dim: int = 768,
        reference_size: int = 224,
        device: str | torch.device = "cpu",
        seed: int = 0,
        people: int = 1,
    ):
        g = torch.Generator().manual_seed(seed)
        self.h = size // 8
        self.batch = batch
        r = reference_size // 8
        self.latent = torch.randn(batch, 4, self.h, self.h, generator=g).to(device)
        self.positive = torch.randn(batch, 77, context_dim, generator=g).to(device)
        self.negative = torch.randn(batch, 77, context_dim, generator=g).to(device)
        self.faces = torch.randn(photos * people, 4, r, r, generator=g).to(device)
        padding = [i % photos for i in range(refs)]
        self.copies = tuple(padding.count(face) for face in range(photos)) * people
        self.references = self.faces[[person * photos + face for person in range(people) for face in padding]]
        self.reference_context = self.negative[:1].expand(refs * people, -1, -1)
        self.owners = self.regions = None
        if people == 1:
            self.mask = torch.zeros(batch, self.h, self.h, device=device)
            self.mask[:, self.h // 10 : self.h // 10 + self.h * 3 // 10, self.h * 3 // 10 : self.h * 6 // 10] = 1
        else:
            layout = PeopleLayout(tuple(people_boxes(people)), (None,) * people, (photos,) * people, self.copies)
            self.owners, self.regions = layout.owners, layout.regions(size, size)
            self.mask = layout.face_position(size, size).to(device).expand(batch, -1, -1)

    def contexts(self, branches: int) -> torch.Tensor:
        parts = [self.positive, self.positive, self.negative] if branches == 3 else [self.positive, self.negative]
        return torch.cat(parts)


def synchronize(device: torch.device) -> None:
    """Wait for the device's queued work (timings of asynchronous devices)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elif device.type == "mps":
        torch.mps.synchronize()


def unet_call(model: FlashFaceUNet, inputs: StepInputs, branches: int, t: int, strength: float) -> torch.Tensor:
    """One model evaluation of a sampling step: the reference pass, then the main pass on every
    branch row (3 branches: weights [strength, 0, 0] per sample; 2: strength on every row)."""
    faces = len(inputs.faces)
    features = model.encode_references(inputs.faces, t, inputs.reference_context[:faces], inputs.owners, inputs.copies)
    rows = branches * inputs.batch
    settings = GenerationSettings(
        reference_feature_strength=strength, reference_feature_strength_before_launch=strength
    )
    timestep = 999 if branches == 2 else 0  # a layout of `branches` rows per sample
    plan = row_plan(settings, timestep, branch_chunks(settings, timestep), inputs.batch)
    return model(
        inputs.latent.repeat(branches, 1, 1, 1),
        torch.full((rows,), t),
        inputs.contexts(branches),
        inputs.mask.repeat(branches, 1, 1),
        features,
        plan,
        regions=inputs.regions,
    )
