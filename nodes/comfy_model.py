"""The FlashFace UNet as a ComfyUI model, for KSampler and the custom-sampling nodes.

`FlashFaceDiffusionModel` is ComfyUI's `BaseModel` (SD1.5 latents, its noise schedule, ε
prediction) around the FlashFace UNet; Load Model's UNet patcher holds it, so the Generator and
every MODEL made from it share one set of weights under ComfyUI's model management (partial
loading included). FlashFace Apply puts a `RowGuidance` (references, face position, reference
settings) into a clone's transformer options and hooks ComfyUI's sampling so that:

* each model evaluation computes the rows ComfyUI batched (cond, uncond, and once reference
  guidance is launched a third chunk: the positive prompt with references), with one reference
  pass for all of them, at the official integer timestep of the sigma, and returns the official x0;
* before ComfyUI's CFG, the branch predictions are combined officially (text guidance = the
  sampler's cfg, reference guidance, guide rescale); CFG then passes the result through.
"""

from __future__ import annotations

import math

import comfy.model_base
import comfy.samplers
import comfy.supported_models

from ..flashface.errors import InvalidInputError
from ..flashface.face import REFERENCE_SIZE
from ..flashface.pipeline import OFFICIAL_REFERENCE_COUNT
from ..flashface.sampling.guidance import POSITIVE, POSITIVE_WITH_REFERENCES, RowGuidance
from ..flashface.sampling.mask import LATENT_FACTOR

GUIDANCE = "flashface_guidance"  # the RowGuidance in a MODEL's model_options["transformer_options"]


class FlashFaceDiffusionModel(comfy.model_base.BaseModel):
    def __init__(self, unet, device=None):
        config = comfy.supported_models.SD15({"disable_unet_model_creation": True})
        super().__init__(config, comfy.model_base.ModelType.EPS, device=device)
        self.diffusion_model = unet
        self.manual_cast_dtype = unet.manual_cast_dtype

    def get_dtype(self):
        return self.diffusion_model.weight_dtype

    def _apply_model(self, x, t, c_concat=None, c_crossattn=None, control=None, transformer_options={}, **kwargs):
        guidance = transformer_options.get(GUIDANCE)
        if guidance is None:
            raise InvalidInputError("This MODEL has no reference faces: make it with FlashFace Apply.")
        if control is not None:
            raise InvalidInputError("ControlNet cannot steer the FlashFace UNet (its blocks are not SD1.5's); "
                                    "remove the ControlNet from this sampler.")
        chunks = transformer_options.get("cond_or_uncond") or [POSITIVE]
        rows = x.shape[0] // len(chunks)
        kinds = [kind for kind in chunks for _ in range(rows)]
        return guidance.denoise(self.diffusion_model, x, t, c_crossattn, kinds)

    def memory_required(self, input_shape, cond_shapes={}):
        """ComfyUI's SD1.5 estimate for more rows: the references' tokens join every decoder
        self-attention, and the reference pass runs with the batch."""
        patcher = self.current_patcher
        guidance = patcher.model_options["transformer_options"].get(GUIDANCE) if patcher is not None else None
        references, side = ((guidance.reference_latents.shape[0], guidance.reference_latents.shape[-1])
                            if guidance is not None else (OFFICIAL_REFERENCE_COUNT, REFERENCE_SIZE // LATENT_FACTOR))
        extra = references * side * side / math.prod(input_shape[2:])
        rows = math.ceil(input_shape[0] * (1 + extra) + extra)
        return super().memory_required([rows, *input_shape[1:]], cond_shapes)


def _guidance(model_options) -> RowGuidance:
    return model_options["transformer_options"][GUIDANCE]


def _calc_cond_batch(args):
    """ComfyUI's batching of the conds, with the positive conds once more as the third branch
    once reference guidance is launched."""
    conds, options = args["conds"], args["model_options"]
    if _guidance(options).with_references_row(args["sigma"].flatten()[0]):
        conds = [conds[0], conds[1], conds[0]]
    return comfy.samplers.calc_cond_batch(args["model"], conds, args["input"], args["sigma"], options)


def _combine_branches(args):
    """The official combination of the branch x0s, given to ComfyUI's CFG as both cond and uncond."""
    out = args["conds_out"]
    if out[1] is None:
        raise InvalidInputError("FlashFace needs the negative prompt at every step; connect one.")
    guided = _guidance(args["model_options"]).combine(args["input"], args["sigma"], out[0], out[1],
                                                      out[POSITIVE_WITH_REFERENCES] if len(out) > 2 else None,
                                                      args["cond_scale"])
    return [guided, guided]


def guided_model(unet_patcher, guidance: RowGuidance):
    """A MODEL: a clone of the UNet patcher that samples with `guidance`."""
    model = unet_patcher.clone()
    model.model_options["transformer_options"][GUIDANCE] = guidance
    model.set_model_sampler_calc_cond_batch_function(_calc_cond_batch)
    model.set_model_sampler_pre_cfg_function(_combine_branches, disable_cfg1_optimization=True)
    return model
