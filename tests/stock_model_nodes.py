"""Every stock ComfyUI 0.8.0 node that takes a MODEL, and what it does with FlashFace Apply's MODEL.

The one home of that verdict: test_comfyui_stock_nodes.py runs each node once in a real server
and checks it, and checks that README.md holds `readme_table()` (print it with
`python tests/stock_model_nodes.py`). Kinds:

* works: the image is made with what the node asks for applied (or, for a node meant for another
  model family, with nothing asked of an SD1.5 UNet, as on ComfyUI's own SD1.5). Each works row is
  shown to act: with `change` widgets the image differs from the one with `same` widgets (or, without
  `same`, from the image without the node), and/or with `same` (or the node's defaults) it is the
  image without the node (`plain`); merges merge a second, different FlashFace model;
* refused: sampling stops before the first step with a message that names the node's kind of
  change (`phrase`) and says what to do;
* needs: it needs an input of a ComfyUI type a FlashFace model set does not give (`needs`).
"""

from __future__ import annotations

from dataclasses import dataclass

Widgets = tuple[tuple[str, object], ...]


@dataclass(frozen=True)
class Verdict:
    kind: str  # works | refused | needs
    note: str  # README.md's words
    phrase: str = ""  # refused: in the message
    needs: str = ""  # needs: the ComfyUI type it must be given
    widgets: Widgets = ()  # refused: widget values the test sets (else the node's defaults)
    change: Widgets | None = None  # works: widget values that ask for a change
    same: Widgets | None = None  # works: the values the change is measured against (else: without the node)
    plain: bool = False  # works: with `same` (or the defaults) the image is the one without the node


def works(note: str, change: dict | None = None, same: dict | None = None, plain: bool = False) -> Verdict:
    return Verdict(
        "works",
        note,
        change=None if change is None else tuple(change.items()),
        same=None if same is None else tuple(same.items()),
        plain=plain,
    )


def refused(note: str, phrase: str, **widgets) -> Verdict:
    return Verdict("refused", note, phrase=phrase, widgets=tuple(widgets.items()))


def needs(note: str, kind: str) -> Verdict:
    return Verdict("needs", note, needs=kind)


CFG_FUNCTION = refused("replaces CFG, which FlashFace's own combination of its branches does", "CFG function")
PRE_CFG = refused("a pre-CFG function: FlashFace hands CFG one guided result", "another pre-CFG function")
SAMPLING = refused("changes the model sampling: FlashFace predicts eps on SD1.5's schedule", "sampling was changed")
POST_CFG = refused(
    "re-runs the model after CFG on the plain positive or negative prediction, which FlashFace's combination of "
    "its three branches (text and reference guidance) does not hand on",
    "CFG function",
)
OTHER_FAMILY = works("meant for another model family: asks nothing of an SD1.5 UNet", plain=True)
MERGE_NOTE = "merges on ComfyUI's SD1.5 names (with an SD1.5 model: the main path)"
MERGE_OTHER_NOTE = "merges by another family's block names (SD1.5's that match are merged)"
FREEU = {"b1": 1.3, "b2": 1.4, "s1": 0.9, "s2": 0.2}
NO_FREEU = {"b1": 1.0, "b2": 1.0, "s1": 1.0, "s2": 1.0}
STEPS = {"steps": 3}
CFG = {"cfg": 7.5}
OTHER_CFG = {"cfg": 3.0}
SCHEDULER = {**STEPS, "scheduler": "normal"}
LAZY = {"reuse_threshold": 3.0, "start_percent": 0.0, "end_percent": 1.0}
LORA = "LoRA on ComfyUI's SD1.5 names: kohya, LoCon, diffusers, PEFT, LDM"
HYPERNETWORK = "a hypernetwork on the main pass's attention (attn1/attn2 patches)"
SAVE = (
    "saves the UNet under ComfyUI's names (reference network, LoRAs and merges included): FlashFace Load Model "
    "loads the file; ComfyUI's Load Checkpoint refuses it"
)


def merge_other(first_ratio: str) -> Verdict:
    """A merge node of another family: its first ratio is the one of every name it does not know."""
    return works(MERGE_OTHER_NOTE, change={first_ratio: 0.5}, plain=True)


STOCK_MODEL_NODES: dict[str, Verdict] = {
    "APG": PRE_CFG,
    "AddNoise": works("noise at the model's sigmas", change={}),
    "BasicGuider": refused("gives no negative, which FlashFace needs at every step: use CFGGuider", "negative prompt"),
    "BasicScheduler": works("SD1.5's sigmas", change={**SCHEDULER, "scheduler": "karras"}, same=SCHEDULER),
    "BetaSamplingScheduler": works("SD1.5's sigmas", change={**STEPS, "alpha": 0.3}, same=STEPS),
    "CFGGuider": works("FlashFace's combination with the guider's cfg as text guidance", change=OTHER_CFG, same=CFG),
    "CFGNorm": CFG_FUNCTION,
    "CFGZeroStar": CFG_FUNCTION,
    "CheckpointSave": needs("needs a ComfyUI CLIP and VAE; FlashFace's are its own", "CLIP"),
    "ChromaRadianceOptions": OTHER_FAMILY,
    "ContextWindowsManual": works("windows over a dimension of the latent, as on SD1.5", plain=True),
    "DiffControlNetLoader": works("loads a (difference) ControlNet against the FlashFace UNet's weights", change={}),
    "DifferentialDiffusion": works("per-pixel denoise strength from the latent's noise mask", plain=True),
    "DualCFGGuider": refused("calls the model outside FlashFace's batching: use CFGGuider", "DualCFGGuider"),
    "EasyCache": refused(
        "wraps the UNet's forward pass, which FlashFace runs itself: use LazyCache",
        "wrappers of the UNet's forward pass",
    ),
    "Epsilon Scaling": CFG_FUNCTION,
    "FreSca": PRE_CFG,
    "FreeU": works("FreeU's block patches on the main pass", change=FREEU, same=NO_FREEU, plain=True),
    "FreeU_V2": works("FreeU's block patches on the main pass", change=FREEU, same=NO_FREEU, plain=True),
    "HyperTile": works("tiles the main pass's self-attention (attn1 patches)", change={"tile_size": 32}),
    "HypernetworkLoader": works(HYPERNETWORK, change={"strength": 2.0}, same={"strength": 0.0}, plain=True),
    "ImageOnlyCheckpointSave": needs("needs a CLIP vision model and a ComfyUI VAE (video models)", "CLIP_VISION"),
    "KSampler": works(
        "FlashFace's combination with KSampler's cfg as text guidance",
        change={**STEPS, **OTHER_CFG},
        same={**STEPS, **CFG},
    ),
    "KSamplerAdvanced": works(
        "FlashFace's combination with its cfg as text guidance", change={**STEPS, **OTHER_CFG}, same={**STEPS, **CFG}
    ),
    "LatentApplyOperationCFG": PRE_CFG,
    "LazyCache": works("reuses whole steps' predictions", change=LAZY, same={"reuse_threshold": 0.0}, plain=True),
    "LoraLoader": needs(
        "needs a ComfyUI CLIP: use LoraLoaderModelOnly (FlashFace's text encoder takes no LoRA)", "CLIP"
    ),
    "LoraLoaderModelOnly": works(LORA, change={"strength_model": 1.0}, same={"strength_model": 0.0}, plain=True),
    "LoraModelLoader": needs("needs a LORA_MODEL from Train LoRA, which FlashFace refuses", "LORA_MODEL"),
    "LoraSave": works("extracts a LoRA from a model difference", plain=True),
    "Mahiro": CFG_FUNCTION,
    "ModelComputeDtype": refused(
        "FlashFace computes in the dtype Load Model's weight_dtype gives: set it there", "compute dtype", dtype="fp16"
    ),
    "ModelMergeAdd": works(MERGE_NOTE, change={}),
    "ModelMergeAuraflow": merge_other("init_x_linear."),
    "ModelMergeBlocks": works(MERGE_NOTE, change={"input": 0.5}, plain=True),
    "ModelMergeCosmos14B": merge_other("pos_embedder."),
    "ModelMergeCosmos7B": merge_other("pos_embedder."),
    "ModelMergeCosmosPredict2_14B": merge_other("pos_embedder."),
    "ModelMergeCosmosPredict2_2B": merge_other("pos_embedder."),
    "ModelMergeFlux1": merge_other("img_in."),
    "ModelMergeLTXV": merge_other("patchify_proj."),
    "ModelMergeMochiPreview": merge_other("pos_frequencies."),
    "ModelMergeQwenImage": merge_other("pos_embeds."),
    "ModelMergeSD1": works(MERGE_NOTE, change={"out.": 0.0}, plain=True),
    "ModelMergeSD2": merge_other("time_embed."),
    "ModelMergeSD35_Large": merge_other("pos_embed."),
    "ModelMergeSD3_2B": merge_other("pos_embed."),
    "ModelMergeSDXL": merge_other("time_embed."),
    "ModelMergeSimple": works(MERGE_NOTE, change={"ratio": 0.5}, same={"ratio": 1.0}, plain=True),
    "ModelMergeSubtract": works(MERGE_NOTE, change={"multiplier": 1.0}),
    "ModelMergeWAN2_1": merge_other("patch_embedding."),
    "ModelSamplingAuraFlow": SAMPLING,
    "ModelSamplingContinuousEDM": SAMPLING,
    "ModelSamplingContinuousV": SAMPLING,
    "ModelSamplingDiscrete": refused(
        "eps on SD1.5's schedule works; v_prediction, lcm, x0, zsnr are refused",
        "sampling was changed",
        sampling="v_prediction",
    ),
    "ModelSamplingFlux": SAMPLING,
    "ModelSamplingLTXV": SAMPLING,
    "ModelSamplingSD3": SAMPLING,
    "ModelSamplingStableCascade": SAMPLING,
    "ModelSave": works(SAVE, plain=True),
    "PatchModelAddDownscale": works("Kohya Deep Shrink on the main pass", change={"block_number": 1}),
    "PerpNeg": CFG_FUNCTION,
    "PerpNegGuider": refused("calls the model outside FlashFace's batching: use CFGGuider", "PerpNegGuider"),
    "PerturbedAttentionGuidance": POST_CFG,
    "QwenImageDiffsynthControlnet": needs("needs a Qwen-Image model patch", "MODEL_PATCH"),
    "RenormCFG": CFG_FUNCTION,
    "RescaleCFG": CFG_FUNCTION,
    "SDTurboScheduler": works("SD1.5's sigmas", change={"steps": 2}, same={"steps": 1}),
    "SamplerCustom": works("FlashFace's combination with its cfg as text guidance", change=OTHER_CFG, same=CFG),
    "SamplerSASolver": works("a sampler on SD1.5's sigmas", change={"s_noise": 3.0}, same={"s_noise": 1.0}),
    "SamplingPercentToSigma": works("SD1.5's sigmas", change={"sampling_percent": 0.9}, same={"sampling_percent": 0.5}),
    "ScaleROPE": OTHER_FAMILY,
    "SelfAttentionGuidance": POST_CFG,
    "SkipLayerGuidanceDiT": CFG_FUNCTION,
    "SkipLayerGuidanceDiTSimple": refused(
        "calls the model outside FlashFace's batching (for DiT models)", "evaluated outside"
    ),
    "SkipLayerGuidanceSD3": CFG_FUNCTION,
    "TCFG": PRE_CFG,
    "TemporalScoreRescaling": CFG_FUNCTION,
    "TomePatchModel": works("merges tokens of the main pass's self-attention (attn1 patches)", change={"ratio": 0.5}),
    "TorchCompileModel": works("compiles the main pass (the reference pass runs as it is)", plain=True),
    "TrainLoraNode": refused(
        "trains with the positive only; FlashFace needs a negative at every step",
        "negative prompt",
        steps=1,
        batch_size=1,
    ),
    "UNetCrossAttentionMultiply": works(
        "scales cross-attention weights (reference network's too)", change={"q": 0.8}, plain=True
    ),
    "UNetSelfAttentionMultiply": works(
        "scales self-attention weights (reference network's too)", change={"q": 0.8}, plain=True
    ),
    "UNetTemporalAttentionMultiply": works(
        "scales self-attention weights (SD1.5 has no temporal ones)", change={"self_structural": 0.8}, plain=True
    ),
    "USOStyleReference": needs("needs a Flux USO model patch", "MODEL_PATCH"),
    "VideoLinearCFGGuidance": CFG_FUNCTION,
    "VideoTriangleCFGGuidance": CFG_FUNCTION,
    "WanContextWindowsManual": works("windows over a dimension of the latent, as on SD1.5", plain=True),
    "ZImageFunControlnet": needs("needs a Z-Image model patch", "MODEL_PATCH"),
    "wanBlockSwap": works("does nothing (a placeholder node)", plain=True),
}


def readme_table() -> str:
    rows = ["| node | on a FlashFace MODEL | what it does there |", "|---|---|---|"]
    for name, verdict in sorted(STOCK_MODEL_NODES.items()):
        kind = f"needs {verdict.needs}" if verdict.kind == "needs" else verdict.kind
        rows.append(f"| `{name}` | {kind} | {verdict.note} |")
    return "\n".join(rows)


if __name__ == "__main__":
    print(readme_table())
