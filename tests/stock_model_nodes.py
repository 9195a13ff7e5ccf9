"""Every stock ComfyUI 0.8.0 node that takes a MODEL, and what it does with FlashFace Apply's MODEL.

The one home of that verdict: test_comfyui_stock_nodes.py runs each node once in a real server
and checks it, and checks that README.md holds `readme_table()` (print it with
`python tests/stock_model_nodes.py`). Kinds:

* works: the image is made with what the node asks for applied (or, for a node meant for another
  model family, with nothing asked of an SD1.5 UNet, as on ComfyUI's own SD1.5);
* refused: sampling stops before the first step with a message that names the node's kind of
  change (`phrase`) and says what to do;
* needs: it needs an input of a ComfyUI type a FlashFace model set does not give (`needs`).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Verdict:
    kind: str  # works | refused | needs
    note: str  # README.md's words
    phrase: str = ""  # refused: in the message
    needs: str = ""  # needs: the ComfyUI type it must be given
    widgets: tuple[tuple[str, object], ...] = ()  # widget values the test sets (else the node's defaults)
    changes: bool = False  # works: with those widgets the image differs from the one without the node


def works(note: str, changes: bool = False, **widgets) -> Verdict:
    return Verdict("works", note, widgets=tuple(widgets.items()), changes=changes)


def refused(note: str, phrase: str, **widgets) -> Verdict:
    return Verdict("refused", note, phrase=phrase, widgets=tuple(widgets.items()))


def needs(note: str, kind: str) -> Verdict:
    return Verdict("needs", note, needs=kind)


CFG_FUNCTION = refused("replaces CFG, which FlashFace's own combination of its branches does", "CFG function")
PRE_CFG = refused("a pre-CFG function: FlashFace hands CFG one guided result", "another pre-CFG function")
SAMPLING = refused("changes the model sampling: FlashFace predicts eps on SD1.5's schedule", "sampling was changed")
OTHER_FAMILY = works("meant for another model family: asks nothing of an SD1.5 UNet")
MERGE_OTHER = works("merges by another family's block names (SD1.5's that match are merged)")
MERGE = works("merges on ComfyUI's SD1.5 names (with an SD1.5 model: the main path)")

STOCK_MODEL_NODES: dict[str, Verdict] = {
    "APG": PRE_CFG,
    "AddNoise": works("noise at the model's sigmas"),
    "BasicGuider": refused("gives no negative, which FlashFace needs at every step: use CFGGuider", "negative prompt"),
    "BasicScheduler": works("SD1.5's sigmas"),
    "BetaSamplingScheduler": works("SD1.5's sigmas"),
    "CFGGuider": works("FlashFace's combination with the guider's cfg as text guidance"),
    "CFGNorm": CFG_FUNCTION,
    "CFGZeroStar": CFG_FUNCTION,
    "CheckpointSave": needs("needs a ComfyUI CLIP and VAE; FlashFace's are its own", "CLIP"),
    "ChromaRadianceOptions": OTHER_FAMILY,
    "ContextWindowsManual": works("windows over a dimension of the latent, as on SD1.5"),
    "DiffControlNetLoader": works("loads a (difference) ControlNet against the FlashFace UNet's weights", True),
    "DifferentialDiffusion": works("per-pixel denoise strength from the latent's noise mask"),
    "DualCFGGuider": refused("calls the model outside FlashFace's batching: use CFGGuider", "DualCFGGuider"),
    "EasyCache": refused(
        "wraps the UNet's forward pass, which FlashFace runs itself: use LazyCache",
        "wrappers of the UNet's forward pass",
    ),
    "Epsilon Scaling": CFG_FUNCTION,
    "FreSca": PRE_CFG,
    "FreeU": works("FreeU's block patches on the main pass", True, b1=1.3, b2=1.4, s1=0.9, s2=0.2),
    "FreeU_V2": works("FreeU's block patches on the main pass", True, b1=1.3, b2=1.4, s1=0.9, s2=0.2),
    "HyperTile": works("tiles the main pass's self-attention (attn1 patches)", True, tile_size=32, max_depth=2),
    "HypernetworkLoader": works(
        "a hypernetwork on the main pass's attention (attn1/attn2 patches)", True, strength=2.0
    ),
    "ImageOnlyCheckpointSave": needs("needs a CLIP vision model and a ComfyUI VAE (video models)", "CLIP_VISION"),
    "KSampler": works("FlashFace's combination with KSampler's cfg as text guidance"),
    "KSamplerAdvanced": works("FlashFace's combination with its cfg as text guidance"),
    "LatentApplyOperationCFG": PRE_CFG,
    "LazyCache": works("reuses whole steps' predictions"),
    "LoraLoader": needs(
        "needs a ComfyUI CLIP: use LoraLoaderModelOnly (FlashFace's text encoder takes no LoRA)", "CLIP"
    ),
    "LoraLoaderModelOnly": works("LoRA on ComfyUI's SD1.5 names: kohya, LoCon, diffusers, PEFT, LDM", True),
    "LoraModelLoader": needs("needs a LORA_MODEL from Train LoRA, which FlashFace refuses", "LORA_MODEL"),
    "LoraSave": works("extracts a LoRA from a model difference"),
    "Mahiro": CFG_FUNCTION,
    "ModelComputeDtype": refused(
        "FlashFace computes in the dtype Load Model's weight_dtype gives: set it there", "compute dtype", dtype="fp16"
    ),
    "ModelMergeAdd": MERGE,
    "ModelMergeAuraflow": MERGE_OTHER,
    "ModelMergeBlocks": MERGE,
    "ModelMergeCosmos14B": MERGE_OTHER,
    "ModelMergeCosmos7B": MERGE_OTHER,
    "ModelMergeCosmosPredict2_14B": MERGE_OTHER,
    "ModelMergeCosmosPredict2_2B": MERGE_OTHER,
    "ModelMergeFlux1": MERGE_OTHER,
    "ModelMergeLTXV": MERGE_OTHER,
    "ModelMergeMochiPreview": MERGE_OTHER,
    "ModelMergeQwenImage": MERGE_OTHER,
    "ModelMergeSD1": MERGE,
    "ModelMergeSD2": MERGE_OTHER,
    "ModelMergeSD35_Large": MERGE_OTHER,
    "ModelMergeSD3_2B": MERGE_OTHER,
    "ModelMergeSDXL": MERGE_OTHER,
    "ModelMergeSimple": MERGE,
    "ModelMergeSubtract": MERGE,
    "ModelMergeWAN2_1": MERGE_OTHER,
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
    "ModelSave": works(
        "saves the UNet under ComfyUI's names (reference network, LoRAs and merges included): FlashFace Load Model "
        "loads the file; ComfyUI's Load Checkpoint refuses it"
    ),
    "PatchModelAddDownscale": works("Kohya Deep Shrink on the main pass", True, block_number=1),
    "PerpNeg": CFG_FUNCTION,
    "PerpNegGuider": refused("calls the model outside FlashFace's batching: use CFGGuider", "PerpNegGuider"),
    "PerturbedAttentionGuidance": CFG_FUNCTION,
    "QwenImageDiffsynthControlnet": needs("needs a Qwen-Image model patch", "MODEL_PATCH"),
    "RenormCFG": CFG_FUNCTION,
    "RescaleCFG": CFG_FUNCTION,
    "SDTurboScheduler": works("SD1.5's sigmas"),
    "SamplerCustom": works("FlashFace's combination with its cfg as text guidance"),
    "SamplerSASolver": works("a sampler on SD1.5's sigmas"),
    "SamplingPercentToSigma": works("SD1.5's sigmas"),
    "ScaleROPE": OTHER_FAMILY,
    "SelfAttentionGuidance": CFG_FUNCTION,
    "SkipLayerGuidanceDiT": CFG_FUNCTION,
    "SkipLayerGuidanceDiTSimple": refused(
        "calls the model outside FlashFace's batching (for DiT models)", "evaluated outside"
    ),
    "SkipLayerGuidanceSD3": CFG_FUNCTION,
    "TCFG": PRE_CFG,
    "TemporalScoreRescaling": CFG_FUNCTION,
    "TomePatchModel": works("merges tokens of the main pass's self-attention (attn1 patches)", True, ratio=0.5),
    "TorchCompileModel": works("compiles the main pass (the reference pass runs as it is)"),
    "TrainLoraNode": refused(
        "trains with the positive only; FlashFace needs a negative at every step",
        "negative prompt",
        steps=1,
        batch_size=1,
    ),
    "UNetCrossAttentionMultiply": works("scales cross-attention weights (reference network's too)", True, q=0.8),
    "UNetSelfAttentionMultiply": works("scales self-attention weights (reference network's too)", True, q=0.8),
    "UNetTemporalAttentionMultiply": works(
        "scales self-attention weights (SD1.5 has no temporal ones)", True, self_structural=0.8
    ),
    "USOStyleReference": needs("needs a Flux USO model patch", "MODEL_PATCH"),
    "VideoLinearCFGGuidance": CFG_FUNCTION,
    "VideoTriangleCFGGuidance": CFG_FUNCTION,
    "WanContextWindowsManual": works("windows over a dimension of the latent, as on SD1.5"),
    "ZImageFunControlnet": needs("needs a Z-Image model patch", "MODEL_PATCH"),
    "wanBlockSwap": works("does nothing (a placeholder node)"),
}


def readme_table() -> str:
    rows = ["| node | on a FlashFace MODEL | what it does there |", "|---|---|---|"]
    for name, verdict in sorted(STOCK_MODEL_NODES.items()):
        kind = f"needs {verdict.needs}" if verdict.kind == "needs" else verdict.kind
        rows.append(f"| `{name}` | {kind} | {verdict.note} |")
    return "\n".join(rows)


if __name__ == "__main__":
    print(readme_table())
