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
import weakref

import comfy.ldm.modules.attention
import comfy.model_base
import comfy.model_sampling
import comfy.patcher_extension
import comfy.samplers
import comfy.supported_models
import torch

from ..flashface.errors import InvalidInputError
from ..flashface.face import REFERENCE_SIZE
from ..flashface.models.block_additions import ATTENTION_PATCHES, ATTENTION_REPLACEMENTS, BLOCK_PATCHES, BlockAdditions
from ..flashface.models.unet import UNetConfig
from ..flashface.models.unet_loading import CONV_IN_MASK_WEIGHT, CONV_IN_WEIGHT
from ..flashface.people import OFFICIAL_REFERENCE_COUNT
from ..flashface.sampling.guidance import POSITIVE, POSITIVE_WITH_REFERENCES, RowGuidance
from ..flashface.sampling.mask import LATENT_FACTOR
from .inputs import check_text_embedding

GUIDANCE = "flashface_guidance"  # the RowGuidance in a MODEL's model_options["transformer_options"]
BATCHED_BY_FLASHFACE = "flashface_rows"  # set in transformer_options by the MODEL's own batching hook
# ...with whether each side has one conditioning (then the two positive chunks have one text)
ONE_PROMPT_PER_SIDE = "flashface_one_prompt_per_side"


def ldm_unet_config(config: UNetConfig) -> dict:
    """The unet_config ComfyUI derives from an SD UNet's weights (`comfy.model_detection`), for the
    FlashFace main path: what `comfy.utils.unet_to_diffusers` (diffusers-named LoRAs), FreeU and
    the other stock nodes read. The reference network has no place in it."""
    levels = len(config.dim_mult)
    attention = [2.0**-level in config.attn_scales for level in range(levels)]
    depth = [config.num_attn_blocks if attention[level] else 0 for level in range(levels)]
    return {
        "disable_unet_model_creation": True,
        "in_channels": config.in_channels,
        "out_channels": config.out_channels,
        "model_channels": config.dim,
        "num_res_blocks": [config.num_res_blocks] * levels,
        "channel_mult": list(config.dim_mult),
        "transformer_depth": [depth[level] for level in range(levels) for _ in range(config.num_res_blocks)],
        # ComfyUI lists the output blocks' depths from the last output block to the first
        "transformer_depth_output": [depth[level] for level in range(levels) for _ in range(config.num_res_blocks + 1)],
        "transformer_depth_middle": config.num_attn_blocks,
        "context_dim": config.context_dim,
        "num_heads": config.num_heads,
        "num_head_channels": -1,
        "use_linear_in_transformer": False,
        "adm_in_channels": None,
        "use_temporal_attention": False,
        "use_spatial_transformer": True,
        "legacy": False,
        "use_checkpoint": False,
        "image_size": 32,
    }


# Conditioning a sampler may hand a model evaluation that the FlashFace UNet has no input for (its
# one extra input is its face-position mask), with what sends it. ControlNets read
# "crossattn_controlnet" from the conditioning themselves: it is not the UNet's to take.
UNTAKEN_CONDITIONING = {
    "c_concat": "an image or mask joined to the latent, for inpainting or instruct-pix2pix models",
    "y": "a pooled or class embedding, for SDXL, unCLIP or SD2 image-variation models",
}
CONDITIONING_READ_BY_CONTROLNETS = "crossattn_controlnet"
# What a conditioning node (InpaintModelConditioning, an image-edit conditioning) puts in a conditioning
# entry to become c_concat on a model with the extra input channels.
CONCAT_CONDITIONING_KEYS = ("concat_latent_image", "concat_mask", "concat_image", "noise_concat")


class FlashFaceDiffusionModel(comfy.model_base.BaseModel):
    """The FlashFace UNet as a ComfyUI model (SD1.5's config, latent format and ε schedule).

    It reaches ComfyUI through public hooks where one exists: the conds are batched by a
    calc-cond-batch function, the branches combined by a pre-CFG function, the whole run checked
    by a sampler-sample wrapper (`guided_model`), and what ComfyUI asks of a model (dtype, memory,
    saving) answered by BaseModel's public methods. One private method is overridden:
    `_apply_model`, the evaluation every APPLY_MODEL wrapper wraps. FlashFace's evaluation is a
    guided step (reference pass, rows of their own weights, no text concatenation) that
    BaseModel's body cannot express, and a wrapper doing it instead would cut off the wrappers
    inside it; overriding the wrapped method keeps every wrapper around the FlashFace step.
    """

    def __init__(self, unet, device=None):
        config = comfy.supported_models.SD15(ldm_unet_config(unet.config))
        super().__init__(config, comfy.model_base.ModelType.EPS, device=device)
        self.diffusion_model = unet
        self.manual_cast_dtype = unet.manual_cast_dtype
        # FlashFace predicts ε on SD1.5's schedule: what a model-sampling node must leave as it is
        self.official_sigmas = self.model_sampling.sigmas.detach().cpu().clone()
        self.accepted_sampling = weakref.ref(self.model_sampling)  # a weak reference: not a submodule

    def get_dtype(self):
        return self.diffusion_model.weight_dtype

    def _apply_model(self, x, t, c_concat=None, c_crossattn=None, control=None, transformer_options=None, **kwargs):
        transformer_options = transformer_options if transformer_options is not None else {}
        guidance = transformer_options.get(GUIDANCE)
        if guidance is None:
            raise InvalidInputError("This MODEL has no reference faces: make it with FlashFace Apply.")
        if not transformer_options.get(BATCHED_BY_FLASHFACE):
            raise InvalidInputError(
                "This FlashFace MODEL was evaluated outside the positive/negative sampling of KSampler, SamplerCustom "
                "and CFGGuider (by a guider such as DualCFGGuider or PerpNegGuider, or a node that calls the model "
                "itself). FlashFace combines its positive, negative and reference branches itself: sample it with "
                "KSampler, SamplerCustom or CFGGuider, one positive and one negative."
            )
        _refuse_unapplied_patches(transformer_options)
        _refuse_untaken_conditioning({"c_concat": c_concat, **kwargs})
        if self.manual_cast_dtype != self.diffusion_model.manual_cast_dtype:
            raise InvalidInputError(
                f"This MODEL's compute dtype was set to {self.manual_cast_dtype or 'its weights dtype'} "
                "(by a node such as ModelComputeDtype); the FlashFace UNet computes in "
                f"{self.diffusion_model.manual_cast_dtype or self.diffusion_model.weight_dtype}, chosen when it is "
                "loaded: remove that node and set weight_dtype on FlashFace Load Model instead."
            )
        chunks = transformer_options.get("cond_or_uncond") or [POSITIVE]
        # what a patch written for SD1.5 is told of the rows: the third branch is a positive one
        for_patches = {
            **transformer_options,
            "cond_or_uncond": [POSITIVE if chunk == POSITIVE_WITH_REFERENCES else chunk for chunk in chunks],
        }
        return guidance.denoise(
            self.diffusion_model,
            x,
            t,
            c_crossattn,
            chunks,
            BlockAdditions(control, for_patches, comfyui_attention(for_patches)),
            transformer_options[ONE_PROMPT_PER_SIDE],
        )

    def state_dict_for_saving(self, *args, **kwargs):
        """What ComfyUI's ModelSave writes: the FlashFace UNet under ComfyUI's names (LoRAs and merges
        applied), which FlashFace Load Model reads (`unet_loading.unet_view`), with the input conv
        whole as published (its face-mask channel joined to the latent ones), so that ComfyUI's own
        checkpoint loaders stop at it instead of sampling it as a plain SD1.5 UNet."""
        state = super().state_dict_for_saving(*args, **kwargs)
        prefix = next(key for key in state if key.endswith(CONV_IN_WEIGHT))[: -len(CONV_IN_WEIGHT)]
        mask = state.pop(prefix + CONV_IN_MASK_WEIGHT)
        state[prefix + CONV_IN_WEIGHT] = torch.cat([state[prefix + CONV_IN_WEIGHT], mask], dim=1)
        return state

    def memory_required(self, input_shape, cond_shapes=None):
        """ComfyUI's SD1.5 estimate for more rows: the references' tokens join every decoder
        self-attention, and the reference pass runs with the batch."""
        patcher = self.current_patcher
        guidance = patcher.model_options["transformer_options"].get(GUIDANCE) if patcher is not None else None
        references, side = (
            (guidance.reference_latents.shape[0], guidance.reference_latents.shape[-1])
            if guidance is not None
            else (OFFICIAL_REFERENCE_COUNT, REFERENCE_SIZE // LATENT_FACTOR)
        )
        extra = references * side * side / math.prod(input_shape[2:])
        rows = math.ceil(input_shape[0] * (1 + extra) + extra)
        return super().memory_required([rows, *input_shape[1:]], {} if cond_shapes is None else cond_shapes)


def comfyui_attention(transformer_options: dict | None = None):
    """ComfyUI's optimized attention (xformers, sage, PyTorch's, split... as ComfyUI was started,
    and any override in a call's transformer options) as the library's attention function."""

    def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, heads: int) -> torch.Tensor:
        return comfy.ldm.modules.attention.optimized_attention(q, k, v, heads, transformer_options=transformer_options)

    return attention


def _refuse_unapplied_patches(transformer_options) -> None:
    """What the FlashFace UNet does not apply, refused rather than ignored: patches and replacements
    of kinds ComfyUI's SD1.5 UNet does not have either, and wrappers of the diffusion model's forward
    (EasyCache). Block patches (BLOCK_PATCHES: FreeU, PatchModelAddDownscale) and attention patches
    and attn1/attn2 replacements (ATTENTION_PATCHES: IPAdapter, HyperTile, Tome, hypernetworks) are
    applied in the main pass; wrappers of the steps around it (sampling, CFG, batching, apply_model)
    are ComfyUI's to run and do run."""
    forward_wrappers = (transformer_options.get("wrappers") or {}).get(
        comfy.patcher_extension.WrappersMP.DIFFUSION_MODEL
    ) or {}
    wrapped = sorted(key for key, wrappers in forward_wrappers.items() if wrappers)
    if wrapped:
        raise InvalidInputError(
            f"This MODEL carries wrappers of the UNet's forward pass ({', '.join(wrapped)}), set by a node such as "
            "EasyCache. The FlashFace UNet runs its reference and main passes itself and does not call them: remove "
            "that node (LazyCache, which caches whole steps, does work)."
        )
    patches = {
        name: value
        for name, value in (transformer_options.get("patches") or {}).items()
        if value and name not in BLOCK_PATCHES + ATTENTION_PATCHES
    }
    replaced = {
        name: value
        for name, value in (transformer_options.get("patches_replace") or {}).items()
        if value and name not in ATTENTION_REPLACEMENTS
    }
    if patches or replaced:
        kinds = ", ".join(sorted(patches) + [f"{name} replacement" for name in sorted(replaced)])
        raise InvalidInputError(
            f"This MODEL carries ComfyUI patches of a kind the SD1.5 UNet has no place for ({kinds}), set by a "
            "node made for another model family. The FlashFace UNet does not apply them: remove that node between "
            "FlashFace Apply and the sampler. (Attention patches, LoRAs, model merges, ControlNet, FreeU and "
            "PatchModelAddDownscale do work.)"
        )


def _refuse_untaken_conditioning(given: dict) -> None:
    untaken = sorted(
        name for name, value in given.items() if value is not None and name != CONDITIONING_READ_BY_CONTROLNETS
    )
    if untaken:
        told = "; ".join(f"{name}: {UNTAKEN_CONDITIONING.get(name, 'an input of another model')}" for name in untaken)
        raise InvalidInputError(
            f"The sampler gives the FlashFace UNet conditioning it has no input for ({told}), set by a node made "
            "for another kind of model. Remove that node: FlashFace reads prompts and its reference faces only."
        )


def _guidance(model_options) -> RowGuidance:
    return model_options["transformer_options"][GUIDANCE]


def _calc_cond_batch(args):
    """ComfyUI's batching of the conds, with the positive conds once more as the third branch
    once reference guidance is launched."""
    conds, options = args["conds"], args["model_options"]
    if conds[1] is None:  # ComfyUI would return zeros for it
        raise InvalidInputError(
            "FlashFace needs a negative prompt at every step, and this sampler gives none (BasicGuider and Train "
            "LoRA give only a positive): use CFGGuider, KSampler or SamplerCustom with a negative."
        )
    _refuse_what_the_combination_would_drop(args["model"], options)
    _check_latent_channels(args["input"], args["model"].diffusion_model.config.in_channels - 1)
    with_references = _guidance(options).with_references_row(args["sigma"].flatten()[0])  # checks the sigma
    _check_step_inputs(args["model"], float(args["sigma"].flatten()[0]), conds)
    if with_references:
        conds = [conds[0], conds[1], conds[0]]
    marked = dict(
        options,
        transformer_options={
            **options["transformer_options"],
            BATCHED_BY_FLASHFACE: True,
            ONE_PROMPT_PER_SIDE: len(conds[0]) == 1 and len(conds[1]) == 1,
        },
    )
    return comfy.samplers.calc_cond_batch(args["model"], conds, args["input"], args["sigma"], marked)


def _check_latent_channels(latent: torch.Tensor, channels: int) -> None:
    if latent.dim() != 4 or latent.shape[1] != channels:
        raise InvalidInputError(
            f"The sampler's latent has shape {list(latent.shape)}: FlashFace's (SD1.5's) latents are "
            f"[batch, {channels}, height/8, width/8]. Make it with Empty Latent Image or FlashFace VAE Encode, not "
            "a node or VAE of another model (SD3, Flux, a video model)."
        )


def _refuse_what_the_combination_would_drop(model, model_options) -> None:
    """What stock nodes put on a MODEL that FlashFace's own combination of its branches would not
    see, checked before each step's evaluation: a changed model sampling (once per model-sampling
    object: a sampling node puts a new one in place), CFG functions, post-CFG functions and other
    pre-CFG functions."""
    if "sampler_cfg_function" in model_options or model_options.get("sampler_post_cfg_function"):
        raise InvalidInputError(
            "This MODEL carries a CFG function (from a node such as RescaleCFG, CFGNorm, TCFG, RenormCFG, "
            "Mahiro, CFGZeroStar, Self-Attention Guidance or Perturbed-Attention Guidance). FlashFace combines its "
            "branches the official way (text guidance = cfg, reference guidance, guide rescale), which such a "
            "function would not see: remove that node (the reference settings are on FlashFace Apply)."
        )
    others = [
        function for function in model_options.get("sampler_pre_cfg_function", []) if function is not _combine_branches
    ]
    if others:
        raise InvalidInputError(
            "This MODEL carries another pre-CFG function (from a node such as APG). FlashFace's own combination "
            "of its branches hands ComfyUI's CFG one guided result, so that function would change nothing: remove "
            "that node."
        )
    sampling = model.model_sampling
    if sampling is model.accepted_sampling():
        return
    if not (
        type(sampling).calculate_denoised is comfy.model_sampling.EPS.calculate_denoised
        and torch.equal(sampling.sigmas.detach().cpu(), model.official_sigmas)
    ):
        raise InvalidInputError(
            "This MODEL's sampling was changed (by a node such as ModelSamplingDiscrete: v_prediction, lcm, x0 or "
            "zsnr). FlashFace predicts the noise (eps) on SD1.5's schedule: remove that node."
        )
    model.accepted_sampling = weakref.ref(sampling)


def _check_the_whole_run(executor, guider, sigmas, *args, **kwargs):
    """Before the first step (ComfyUI's sampler-sample wrapper): the step checks at every level of
    the run, so that conditioning limited to some steps (ConditioningSetTimestepRange) is refused
    before any work rather than at the first step it leaves uncovered."""
    conds = getattr(guider, "conds", None) or {}
    if "positive" in conds and "negative" in conds:
        for level in sigmas[:-1].tolist():
            _check_step_inputs(guider.inner_model, level, [conds["positive"], conds["negative"]])
    return executor(guider, sigmas, *args, **kwargs)


def _check_step_inputs(model, level: float, conds) -> None:
    """What can be checked of a step's inputs without reading values off the device (no host sync
    per step): each side's conditioning is present, active at this noise level, over the whole
    latent and as wide as the text encoder's output. Values (NaN, infinity) are examined only when a
    step's prediction is not finite (`_name_what_is_not_finite`)."""
    for side, entries in (("positive", conds[0]), ("negative", conds[1])):
        if not entries:
            raise InvalidInputError(
                f"The sampler's {side} conditioning is empty (a node let no conditioning "
                f"through): connect FlashFace CLIP Text Encode's {side} output."
            )
        if not any(_active_at(entry, level) for entry in entries):  # ComfyUI would give zeros for that side
            raise InvalidInputError(
                f"At noise level {level:.4g} no part of the sampler's {side} conditioning is active (a node such as "
                f"ConditioningSetTimestepRange limits it to other steps). FlashFace needs a {side} prompt at every "
                "step: let the ranges cover the whole run."
            )
        for entry in entries:
            joined = [key for key in CONCAT_CONDITIONING_KEYS if key in entry]
            if joined:
                raise InvalidInputError(
                    f"The {side} conditioning carries {', '.join(joined)} (from a node such as "
                    "InpaintModelConditioning), an image to join to the latent for an inpainting model's extra input "
                    "channels, which the FlashFace UNet does not have: it would be ignored. Remove that node; to "
                    "inpaint with FlashFace, give KSampler a latent with a noise mask (FlashFace VAE Encode, then "
                    "Set Latent Noise Mask)."
                )
            if "area" in entry or "mask" in entry:
                raise InvalidInputError(
                    f"The {side} conditioning is limited to an area or a mask (by a node such as ConditioningSetArea "
                    "or ConditioningSetMask). FlashFace lays the face out over the whole latent and does not place it "
                    "within such an area: remove that node, and place the face with FlashFace Apply's face box or "
                    "face_mask."
                )
            if "cross_attn" in entry:
                check_text_embedding(
                    entry["cross_attn"],
                    model.diffusion_model.config.context_dim,
                    f"sampler's {side} conditioning",
                    values=False,
                )


def _name_what_is_not_finite(x: torch.Tensor, sigma: torch.Tensor, conds, timestep: int) -> InvalidInputError:
    """The error for a step whose prediction is not finite, naming the input that caused it."""
    if not torch.isfinite(x).all():
        return InvalidInputError(
            f"The latent entering the step at noise level {float(sigma.flatten()[0]):.4g} has values that are not "
            "numbers (NaN or infinite): the LATENT given to the sampler (or its noise) holds them. Check the node that "
            "made the latent."
        )
    for side, entries in (("positive", conds[0]), ("negative", conds[1])):
        for entry in entries:
            if "cross_attn" in entry and not torch.isfinite(entry["cross_attn"]).all():
                return InvalidInputError(
                    f"The sampler's {side} conditioning has values that are not numbers (NaN or "
                    "infinite); check the nodes that made it (encode the prompt with FlashFace "
                    "CLIP Text Encode)."
                )
    return InvalidInputError(
        f"The prediction at timestep {timestep} has values that are not numbers (NaN or infinite). Check what feeds "
        "the sampler: cfg, the latent, the conditioning, and the strengths of any LoRA, ControlNet or patch on the "
        "MODEL."
    )


def _active_at(entry: dict, sigma: float) -> bool:
    """Whether ComfyUI evaluates a conditioning entry at `sigma` (its start/end percent, as sigmas)."""
    return not (sigma > entry.get("timestep_start", math.inf) or sigma < entry.get("timestep_end", -math.inf))


def _combine_branches(args):
    """The official combination of the branch x0s, given to ComfyUI's CFG as both cond and uncond."""
    out, sigma, cfg = args["conds_out"], args["sigma"], args["cond_scale"]
    if not math.isfinite(cfg):
        raise InvalidInputError(
            f"The sampler's cfg is {cfg}: give a finite number (FlashFace's official text guidance is 7.5)."
        )
    guidance = _guidance(args["model_options"])
    guided = guidance.combine(
        args["input"], sigma, out[0], out[1], out[POSITIVE_WITH_REFERENCES] if len(out) > 2 else None, cfg
    )
    if not torch.isfinite(guided).all():  # the one read of values per step
        raise _name_what_is_not_finite(args["input"], sigma, args["conds"], guidance.timestep(sigma.flatten()[0]))
    return [guided, guided]


def guided_model(unet_patcher, guidance: RowGuidance):
    """A MODEL: a clone of the UNet patcher that samples with `guidance`."""
    model = unet_patcher.clone()
    model.model_options["transformer_options"][GUIDANCE] = guidance
    model.set_model_sampler_calc_cond_batch_function(_calc_cond_batch)
    model.set_model_sampler_pre_cfg_function(_combine_branches, disable_cfg1_optimization=True)
    model.add_wrapper_with_key(comfy.patcher_extension.WrappersMP.SAMPLER_SAMPLE, GUIDANCE, _check_the_whole_run)
    return model
