"""A node pack for the tests only, linked into every test server: one node that sends values other
packs' nodes can send (an empty MASK batch, SDXL-wide conditioning, a latent no VAE made, sigmas
that are not numbers), which no stock node makes on purpose."""

import torch


def _conditioning(width: int, value: float = 0.0):
    return [[torch.full((1, 77, width), value), {"pooled_output": torch.zeros(1, 1280)}]]


_MASK = torch.ones(1, 64, 64)
_LATENT = {"samples": torch.zeros(1, 4, 8, 8)}
_SIGMAS = torch.tensor([14.6146, 1.0, 0.0])
CASES = {  # name -> (MASK, LATENT, CONDITIONING, SIGMAS)
    "empty mask batch": (torch.zeros(0, 64, 64), _LATENT, _conditioning(768), _SIGMAS),
    "empty latent batch": (_MASK, {"samples": torch.zeros(0, 4, 8, 8)}, _conditioning(768), _SIGMAS),
    "latent of 1e30": (_MASK, {"samples": torch.full((1, 4, 8, 8), 1e30)}, _conditioning(768), _SIGMAS),
    "latent of NaN": (_MASK, {"samples": torch.full((1, 4, 8, 8), float("nan"))}, _conditioning(768), _SIGMAS),
    "SDXL conditioning": (_MASK, _LATENT, _conditioning(2048), _SIGMAS),
    "latent of 16 channels": (_MASK, {"samples": torch.full((1, 16, 8, 8), 0.5)}, _conditioning(768), _SIGMAS),
    "conditioning of NaN": (_MASK, _LATENT, _conditioning(32, float("nan")), _SIGMAS),
    "sigmas with NaN": (_MASK, _LATENT, _conditioning(768), torch.tensor([14.6146, float("nan"), 0.0])),
}


class TestValueSource:
    CATEGORY = "testing"
    RETURN_TYPES = ("MASK", "LATENT", "CONDITIONING", "SIGMAS")
    FUNCTION = "send"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"case": (sorted(CASES),)}}

    def send(self, case):
        mask, latent, conditioning, sigmas = CASES[case]
        return mask.clone(), {"samples": latent["samples"].clone()}, conditioning, sigmas.clone()


NODE_CLASS_MAPPINGS = {"TestValueSource": TestValueSource}
