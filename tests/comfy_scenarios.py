"""Scenarios run in a child process with ComfyUI's own modules and this pack imported as
``flashface_pack`` (`comfy_process.run_with_comfyui`, `child.py`); each returns what its test
checks, as JSON-serializable values. Imported only there: ComfyUI's modules are not importable in
the test process."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import comfy.ldm.modules.attention
import comfy.model_base
import comfy.model_management as mm
import comfy.model_patcher
import comfy.utils
import folder_paths
import torch
from flashface_pack import NODE_CLASS_MAPPINGS
from flashface_pack.flashface.errors import FlashFaceError
from flashface_pack.flashface.models.model_registry import MODEL_REGISTRY, get_model_path, model_entry
from flashface_pack.flashface.prompts import EncodedPrompt
from flashface_pack.flashface.utils.cache_utils import DownloadSettings
from flashface_pack.nodes import detect_face, generator, load_model, model_files, people, sampling, text_encode
from flashface_pack.nodes.comfy_model import ldm_unet_config

FACE_BOX = dict(face_x1=0.3, face_y1=0.1, face_x2=0.6, face_y2=0.4)  # one person's place
LEFT = dict(face_x1=0.05, face_y1=0.2, face_x2=0.35, face_y2=0.5)
RIGHT = dict(face_x1=0.6, face_y1=0.2, face_x2=0.9, face_y2=0.5)
# FlashFace Apply's reference settings, official
APPLY_SETTINGS = dict(
    reference_feature_strength=1.2,
    reference_feature_strength_before_launch=0.85,
    reference_guidance_strength=3.2,
    launch_timestep=750,
)
GENERATOR_SETTINGS = dict(
    solver="ddim",
    discretization="trailing",
    sigma_spacing="timesteps",
    text_guidance=7.5,
    reference_feature_strength=1.2,
    reference_guidance_strength=3.2,
    launch_timestep=750,
    preset="none",
)


def tiny_flashface(unet: str, vae: str, clip: str):
    """The tiny models loaded as Load Model loads them: the FLASHFACE_MODEL."""
    return load_model.FlashFaceModel(
        unet=load_model._load_unet(Path(unet), "fp32"),
        vae=load_model._load_vae(Path(vae), "official"),
        text_encoder=load_model._load_text_encoder(Path(clip)),
        detector=None,
    )


def messages(calls: dict[str, Callable[[], object]]) -> dict[str, str]:
    """Each call's FlashFaceError message, "no error", or "RAW <type>: <message>" for another error."""
    found = {}
    for name, call in calls.items():
        try:
            call()
            found[name] = "no error"
        except FlashFaceError as error:
            found[name] = str(error)
        except Exception as error:
            found[name] = f"RAW {type(error).__name__}: {error}"
    return found


def ksample(model, positive, negative, latent_shape: tuple[int, ...]) -> torch.Tensor:
    """Stock KSampler on `model` from a zero latent: 3 euler steps, seed 3, cfg 7.5."""
    import nodes as comfy_nodes  # ComfyUI's (imported once the pack is)

    latent = {"samples": torch.zeros(latent_shape)}
    return comfy_nodes.KSampler().sample(model, 3, 3, 7.5, "euler", "normal", positive, negative, latent)[0]["samples"]


def difference(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max())


def partial_load(unet: str, vae: str, width: int) -> dict:
    """The Generator with the UNet loaded half onto a stand-in GPU (the meta device) and its first
    layer left on the CPU, cast per call: where each part of the run computes."""
    gpu = torch.device("meta")
    unet_patcher = load_model._load_unet(Path(unet), "fp32")
    vae_patcher = load_model._load_vae(Path(vae), "official")
    unet_patcher.load_device = vae_patcher.load_device = gpu

    def small_gpu(patchers, **options):
        # what load_models_gpu does on a GPU with room for half the UNet
        for patcher in patchers:
            if patcher is unet_patcher:
                patcher.load(gpu, lowvram_model_memory=patcher.model_size() // 2)
                # whatever ComfyUI's order of loading, the first parameter stays behind, cast per call
                first = patcher.model.diffusion_model.time_embed.to_empty(device="cpu")
                for module in first.modules():
                    if hasattr(module, "comfy_cast_weights"):
                        module.comfy_cast_weights = True
            else:
                patcher.load(gpu, full_load=True)

    mm.load_models_gpu = small_gpu
    mm.intermediate_device = lambda: gpu
    # the attention ComfyUI computes with on a GPU (the CPU's sub-quadratic one asks the stand-in device for its memory)
    comfy.ldm.modules.attention.optimized_attention = comfy.ldm.modules.attention.attention_pytorch
    model = load_model.FlashFaceModel(unet=unet_patcher, vae=vae_patcher, text_encoder=None, detector=None)
    prompt = EncodedPrompt("x", *(torch.randn(1, 77, width) for _ in range(3)))
    images, latent = generator.FlashFaceGenerator().generate(
        model,
        prompt,
        prompt,
        torch.rand(2, 224, 224, 3),
        seed=1,
        steps=3,
        **FACE_BOX,
        width=64,
        height=64,
        batch_size=2,
        **GENERATOR_SETTINGS,
    )
    devices = {name: p.device.type for name, p in unet_patcher.model.named_parameters()}
    return dict(
        images=[images.device.type, list(images.shape)],
        latent=[latent["samples"].device.type, list(latent["samples"].shape)],
        on_cpu=sorted(name for name, device in devices.items() if device == "cpu"),
        on_gpu=sum(device == "meta" for device in devices.values()),
        lowvram=bool(unet_patcher.model.model_lowvram),
    )


def wrong_types() -> dict[str, str]:
    """The nodes given a value of the wrong type on each input (a Switch passes any type through)."""
    model = load_model.FlashFaceModel(unet=None, vae=None, text_encoder=None, detector=None)
    prompt = EncodedPrompt("x", *(torch.zeros(1, 77, 32) for _ in range(3)))
    image = torch.rand(1, 64, 64, 3)
    settings = dict(
        seed=1,
        steps=2,
        **FACE_BOX,
        width=64,
        height=64,
        batch_size=1,
        **GENERATOR_SETTINGS,
    )
    generate = generator.FlashFaceGenerator().generate
    detect = detect_face.FlashFaceDetectFace().detect
    return messages(
        {
            "generator positive text": lambda: generate(model, "a portrait", prompt, image, **settings),
            "generator negative conditioning": lambda: generate(
                model, prompt, [[torch.zeros(1, 77, 768), {}]], image, **settings
            ),
            "generator model tensor": lambda: generate(image, prompt, prompt, image, **settings),
            "generator faces text": lambda: generate(model, prompt, prompt, "faces", **settings),
            "generator mask image": lambda: generate(
                model, prompt, prompt, image, face_mask=torch.rand(1, 8, 8, 3, 2), **settings
            ),
            "detect photos text": lambda: detect([model], ["a photo"], [0.6], ["largest"]),
            "detect photos nan": lambda: detect(
                [model], [torch.full((1, 64, 64, 3), float("nan"))], [0.6], ["largest"]
            ),
            "detect model text": lambda: detect(["model"], [image], [0.6], ["largest"]),
            "encode model none": lambda: text_encode.FlashFaceCLIPTextEncode().encode(None, "a portrait"),
        }
    )


def listing(folder: str) -> dict:
    """The UNet choices listed three times, a file added before the third: the folders walked each time."""
    models = Path(folder)
    folder_paths.add_model_folder_path("flashface", str(models), is_default=True)
    (models / "deep" / "er").mkdir(parents=True, exist_ok=True)
    (models / "deep" / "er" / "first.safetensors").write_bytes(b"x")
    walks = []
    real_walk = os.walk

    def counting_walk(*args, **kwargs):
        walks.append(args[0])
        return real_walk(*args, **kwargs)

    os.walk = counting_walk
    first = model_files.choices("unet")
    walked_first = len(walks)
    second = model_files.choices("unet")
    walked_second = len(walks) - walked_first
    (models / "deep" / "er" / "second.safetensors").write_bytes(b"x")
    third = model_files.choices("unet")
    return dict(
        first=first,
        second=second,
        third=third,
        walked_first=walked_first,
        walked_second=walked_second,
        walked_third=len(walks) - walked_first - walked_second,
    )


def patchers(unet: str, vae: str) -> dict:
    """The patcher classes the models get (also once ComfyUI swaps CoreModelPatcher), the UNet's cast
    dtype, and the nodes' search aliases."""

    def patcher_classes():
        unet_patcher = load_model._load_unet(Path(unet), "fp16")
        vae_patcher = load_model._load_vae(Path(vae), "official")
        return unet_patcher, [type(p).__name__ for p in (unet_patcher, vae_patcher)]

    had_core = hasattr(comfy.model_patcher, "CoreModelPatcher")
    expected_default = (comfy.model_patcher.CoreModelPatcher if had_core else comfy.model_patcher.ModelPatcher).__name__
    unet_patcher, default = patcher_classes()

    class DynamicStandIn(comfy.model_patcher.ModelPatcher):
        pass

    comfy.model_patcher.CoreModelPatcher = DynamicStandIn  # what ComfyUI's start-up does with dynamic VRAM
    _, swapped = patcher_classes()
    cast = mm.unet_manual_cast(torch.float16, mm.get_torch_device())
    return dict(
        default=default,
        expected_default=expected_default,
        swapped=swapped,
        manual_cast_dtype=str(unet_patcher.model.manual_cast_dtype),
        expected_cast=str(cast),
        weight_dtype=str(unet_patcher.model.get_dtype()),
        unet_weights=str(unet_patcher.model.diffusion_model.out[2].weight.dtype),
        aliases={name: getattr(node, "SEARCH_ALIASES", None) for name, node in NODE_CLASS_MAPPINGS.items()},
    )


def fp8_storage(unet: str) -> dict:
    """The UNet loaded in fp16 and both fp8 kinds: ComfyUI's model size, dtypes and layer kind of each."""
    sizes, dtypes = {}, {}
    for name in ("fp16", "fp8_e4m3fn", "fp8_e5m2"):
        patcher = load_model._load_unet(Path(unet), name)
        sizes[name] = patcher.model_size()
        dtypes[name] = dict(
            stored=str(patcher.model.get_dtype()),
            compute=str(patcher.model.manual_cast_dtype),
            layer=type(patcher.model.diffusion_model.input_blocks[1][0].in_layers[2]).__module__,
        )
    model = patcher.model.diffusion_model
    norms = (torch.nn.GroupNorm, torch.nn.LayerNorm)
    kept_bytes = sum(p.numel() * 4 for m in model.modules() if isinstance(m, norms) for p in m.parameters())
    kept_bytes += sum(  # ComfyUI's own buffers (model sampling's sigmas)
        t.numel() * t.element_size()
        for key, t in patcher.model.state_dict().items()
        if not key.startswith("diffusion_model.")
    )
    return dict(sizes=sizes, dtypes=dtypes, kept_bytes=kept_bytes)


def compact_file(published: str, compact: str) -> dict:
    """The published and the compact UNet file through Load Model: the same tensors?"""
    ours = load_model._load_unet(Path(published), "fp16").model.diffusion_model.state_dict()
    theirs = load_model._load_unet(Path(compact), "fp16").model.diffusion_model.state_dict()
    return dict(same_keys=list(ours) == list(theirs), equal=all(torch.equal(ours[key], theirs[key]) for key in ours))


def layout(entries: list) -> dict:
    """Registry entries changed as given, each file looked for (and downloaded) in ComfyUI's folders."""
    paths = []
    for name, changes in entries:
        MODEL_REGISTRY[name] = {**MODEL_REGISTRY[name], **changes}
        settings = DownloadSettings(read_timeout=5, backoff_seconds=0.01)
        folders = model_files.entry_folders(model_entry(name))
        paths.append(str(get_model_path(name, folders=folders, settings=settings)))
    return dict(
        paths=paths,
        listed=folder_paths.get_filename_list("flashface"),
        extensions=sorted(folder_paths.folder_names_and_paths["flashface"][1]),
    )


def apply_with_faces(flashface, negative, faces: int):
    """FlashFace Apply's MODEL with `faces` random reference faces, unpadded."""
    return sampling.FlashFaceApply().apply(
        flashface,
        reference_faces=torch.rand(faces, 224, 224, 3, generator=torch.Generator().manual_seed(faces)),
        negative=negative,
        padding_seed=0,
        pad_references=False,
        **APPLY_SETTINGS,
        **FACE_BOX,
    )[0]


def model_path(unet: str, vae: str, clip: str) -> dict:
    """The MODEL's memory estimates with one and four faces, and KSampler's samples with the UNet
    loaded whole and half."""
    flashface = tiny_flashface(unet, vae, clip)
    _, positive, negative, _ = text_encode.FlashFaceCLIPTextEncode().encode(flashface, "a portrait")
    one, four = apply_with_faces(flashface, negative, 1), apply_with_faces(flashface, negative, 4)
    shape = [2, 4, 64, 64]
    estimates = {}
    for name, model in (("one", one), ("four", four)):
        model.model.current_patcher = model
        estimates[name] = model.model.memory_required(shape)
    estimates["sd15"] = comfy.model_base.BaseModel.memory_required(four.model, shape)

    def sample():
        return ksample(four, positive, negative, (1, 4, 8, 8))

    whole = sample()
    mm.unload_all_models()

    def small_memory(patchers, **options):
        # what load_models_gpu does with room for half the UNet: the rest is cast per layer at each call
        for patcher in patchers:
            patcher.load(mm.get_torch_device(), lowvram_model_memory=patcher.model_size() // 2)

    mm.load_models_gpu = small_memory
    partial = sample()
    cast = sum(bool(getattr(module, "comfy_cast_weights", False)) for module in four.model.modules())
    return dict(
        estimates=estimates,
        difference=difference(whole, partial),
        cast_layers=cast,
        lowvram=bool(four.model.model_lowvram),
    )


def untaken_conditioning(unet: str, vae: str, clip: str) -> dict[str, str]:
    """The MODEL evaluated with conditioning its UNet has no input for (c_concat, y, another model's
    input), and KSampler given a conditioning entry meant to become c_concat."""
    from flashface_pack.nodes.comfy_model import BATCHED_BY_FLASHFACE

    flashface = tiny_flashface(unet, vae, clip)
    _, positive, negative, _ = text_encode.FlashFaceCLIPTextEncode().encode(flashface, "a portrait")
    model = apply_with_faces(flashface, negative, 1)
    options = {**model.model_options["transformer_options"], BATCHED_BY_FLASHFACE: True}
    x, t, text = torch.zeros(2, 4, 8, 8), torch.full((2,), 5.0), positive[0][0].expand(2, -1, -1)

    def evaluate(**given):
        return model.model.apply_model(x, t, c_crossattn=text, transformer_options=options, **given)

    inpainting = [[positive[0][0], {**positive[0][1], "concat_latent_image": torch.zeros(1, 4, 8, 8)}]]
    return messages(
        {
            "c_concat": lambda: evaluate(c_concat=torch.zeros(2, 5, 8, 8)),
            "y": lambda: evaluate(y=torch.zeros(2, 2816)),
            "other": lambda: evaluate(guidance=torch.ones(2)),
            "controlnet text": lambda: evaluate(crossattn_controlnet=text),
            "inpaint conditioning": lambda: ksample(model, inpainting, negative, (1, 4, 8, 8)),
        }
    )


def sd15_keys(unet: str) -> dict:
    """ComfyUI's own SD UNet built with the FlashFace MODEL's unet_config: its tensors, ours, and
    the diffusers names ComfyUI maps."""
    from comfy.ldm.modules.diffusionmodules.openaimodel import UNetModel

    patcher = load_model._load_unet(Path(unet), "fp32")
    config = dict(ldm_unet_config(patcher.model.diffusion_model.config), in_channels=4)
    del config["disable_unet_model_creation"]
    with torch.device("meta"):
        sd15 = UNetModel(**config, dtype=torch.float32)
    ours = {
        key[len("diffusion_model.") :]: list(value.shape)
        for key, value in patcher.model.state_dict().items()
        if key.startswith("diffusion_model.")
    }
    from flashface_pack.flashface.models.graft import graft_shapes

    return dict(
        sd15={key: list(value.shape) for key, value in sd15.state_dict().items()},
        ours=ours,
        grafted={key: list(shape) for key, shape in graft_shapes(patcher.model.diffusion_model).items()},
        diffusers=sorted(set(comfy.utils.unet_to_diffusers(patcher.model.model_config.unet_config).values())),
    )


def two_people(unet: str, vae: str, clip: str) -> dict:
    """FlashFace Person chained, the Generator and Apply + KSampler with one person given as a
    Person (against the faces given directly) and with two, and wrong people wiring."""
    flashface = tiny_flashface(unet, vae, clip)
    _, positive, negative, _ = text_encode.FlashFaceCLIPTextEncode().encode(flashface, "two people")
    encoded, _, _, _ = text_encode.FlashFaceCLIPTextEncode().encode(flashface, "two people")
    faces_a = torch.rand(2, 224, 224, 3, generator=torch.Generator().manual_seed(1))
    faces_b = torch.rand(1, 224, 224, 3, generator=torch.Generator().manual_seed(2))
    (one,) = people.FlashFacePerson().person(faces_a, **LEFT)
    (two,) = people.FlashFacePerson().person(faces_b, people=one, **RIGHT)
    settings = dict(seed=3, steps=3, width=96, height=64, batch_size=1, **GENERATOR_SETTINGS)

    def generate(box=LEFT, **given):
        return generator.FlashFaceGenerator().generate(flashface, encoded, encoded, **given, **settings, **box)[0]

    def sampled(box=LEFT, **given):
        model = sampling.FlashFaceApply().apply(
            flashface,
            negative=negative,
            padding_seed=3,
            pad_references=True,
            **APPLY_SETTINGS,
            **given,
            **box,
        )[0]
        return ksample(model, positive, negative, (1, 4, 8, 12))

    def person_with_no_box():
        return people.FlashFacePerson().person(faces_b, people=one, face_x1=0.0, face_y1=0.0, face_x2=0.0, face_y2=0.0)[
            0
        ]

    result: dict = dict(
        chained=[len(one), len(two), [len(p.faces) for p in two], [p.face_box for p in two]],
        generator_one=difference(generate(reference_faces=faces_a), generate(people=one, box=RIGHT)),
        generator_two=difference(generate(reference_faces=faces_a), generate(people=two)),
        model_one=difference(sampled(reference_faces=faces_a), sampled(people=one, box=RIGHT)),
        model_two=difference(sampled(reference_faces=faces_a), sampled(people=two)),
    )
    result.update(
        messages(
            {
                "neither": lambda: generate(),
                "both": lambda: generate(reference_faces=faces_a, people=two),
                "people text": lambda: generate(people="me"),
                "chain text": lambda: people.FlashFacePerson().person(faces_a, people=[1, 2], **LEFT),
                "mask beside people": lambda: generate(people=two, face_mask=torch.ones(1, 64, 64)),
                "zero box": lambda: generate(people=person_with_no_box()),
                "apply neither": lambda: sampled(),
            }
        )
    )
    return result


def dpmpp_2m_sde_against_comfyui(seed: int, other_seed: int) -> dict:
    """ComfyUI's own dpmpp_2m_sde (k-diffusion's loop and its Brownian-tree noise seeded with the
    sampler's seed) and the library's on the same denoiser, start and levels: the largest
    difference of their results for the same seed, and for another seed of ComfyUI's."""
    import math
    from types import SimpleNamespace

    import comfy.k_diffusion.sampling as k_sampling
    import comfy.model_sampling
    from flashface_pack.flashface.sampling.noise_levels import vp_to_ve
    from flashface_pack.flashface.sampling.schedule import NoiseSchedule, sampling_sigmas
    from flashface_pack.flashface.sampling.solvers import get_solver

    mean, spread = 0.7, 0.5  # Gaussian data: its exact denoiser, in VE terms D(y, s)

    def ve_denoiser(y, s):
        return mean + spread**2 / (spread**2 + s**2) * (y - mean)

    def vp_denoiser(x, sigma):
        alpha = math.sqrt(1 - sigma**2)
        return ve_denoiser(x / alpha, sigma / alpha)

    vp_levels = sampling_sigmas(NoiseSchedule(), 12)
    ve_levels = torch.tensor([vp_to_ve(float(v)) for v in vp_levels], dtype=torch.float32)
    noise = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(seed))
    ours = get_solver("dpmpp_2m_sde")(
        vp_denoiser, noise, vp_levels, generator=torch.Generator().manual_seed(seed)
    ).float()

    class Model:  # what ComfyUI's samplers call: the model, and the model sampling its patcher holds
        inner_model = SimpleNamespace(
            model_patcher=SimpleNamespace(get_model_object=lambda name: comfy.model_sampling.EPS())
        )

        def __call__(self, y, sigma, **extra):
            return ve_denoiser(y, sigma[0, None, None, None])

    def comfyui(noise_seed: int) -> torch.Tensor:
        start = noise / math.sqrt(1 - float(vp_levels[0]) ** 2)  # ComfyUI's noise scaling at full denoise
        return k_sampling.sample_dpmpp_2m_sde(
            Model(), start, ve_levels, extra_args={"seed": noise_seed}, disable=True
        ).float()

    return dict(
        same_seed=difference(ours, comfyui(seed)),
        other_seed=difference(ours, comfyui(other_seed)),
        scale=float(ours.abs().max()),
    )


def pack_import_with_torch(version: str) -> str:
    """The pack imported again as ComfyUI imports a custom node, with torch saying it is `version`:
    the ImportError's message ComfyUI shows, or "imported"."""
    import importlib.util
    import sys

    from child import REPO_ROOT

    torch.__version__ = version  # pyright: ignore[reportAttributeAccessIssue]
    spec = importlib.util.spec_from_file_location(
        "flashface_pack_again", REPO_ROOT / "__init__.py", submodule_search_locations=[str(REPO_ROOT)]
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    try:
        spec.loader.exec_module(module)
    except ImportError as error:
        return str(error)
    return "imported"


def graft_node(unet: str, vae: str, clip: str, folder: str, strength: float) -> dict:
    """FlashFace Graft Checkpoint on the tiny models with the tiny SD1.5 checkpoints "custom.safetensors"
    and "base.ckpt" of `folder` (added to ComfyUI's checkpoints folders): the loaded UNet's weights
    against the graft by hand (the plain UNet + strength * (custom - base) read from the files), with
    the stock LoRA "lora.safetensors" on top against the changes it makes ("lora_changes.safetensors",
    by UNet key) added by hand, Load Model's own UNet left as it was, and strength 0."""
    import comfy.sd
    from flashface_pack.nodes import graft

    full_checkpoint = "model.diffusion_model."  # the SD1.5 UNet's tensors in a single-file checkpoint

    folder_paths.add_model_folder_path("checkpoints", folder)
    flashface = tiny_flashface(unet, vae, clip)
    plain = {key: value.clone() for key, value in flashface.unet.model.diffusion_model.state_dict().items()}
    custom = comfy.utils.load_torch_file(os.path.join(folder, "custom.safetensors"))
    base = comfy.utils.load_torch_file(os.path.join(folder, "base.ckpt"))
    by_hand = dict(plain)
    for key in plain:
        if full_checkpoint + key in custom:
            by_hand[key] = plain[key] + strength * (
                custom[full_checkpoint + key].float() - base[full_checkpoint + key].float()
            )
    (grafted,) = graft.FlashFaceGraftCheckpoint().graft(flashface, "custom.safetensors", "base.ckpt", strength)

    def loaded(patcher) -> dict[str, torch.Tensor]:
        mm.load_models_gpu([patcher])
        return {key: value.clone() for key, value in patcher.model.diffusion_model.state_dict().items()}

    weights = loaded(grafted.unet)
    lora = comfy.utils.load_torch_file(os.path.join(folder, "lora.safetensors"))
    with_lora, _ = comfy.sd.load_lora_for_models(grafted.unet, None, lora, 1.0, 0)
    changes = comfy.utils.load_torch_file(os.path.join(folder, "lora_changes.safetensors"))
    lora_by_hand = {key: value + changes[key] if key in changes else value for key, value in by_hand.items()}
    lora_weights = loaded(with_lora)
    after = loaded(flashface.unet)
    (unchanged,) = graft.FlashFaceGraftCheckpoint().graft(flashface, "custom.safetensors", "base.ckpt", 0.0)
    return dict(
        grafted=max(difference(weights[key], by_hand[key]) for key in weights),
        changed=sum(not torch.equal(weights[key], plain[key]) for key in weights),
        sd15_tensors=sum(1 for key in custom if key.startswith(full_checkpoint)),
        with_lora=max(difference(lora_weights[key], lora_by_hand[key]) for key in lora_weights),
        load_model_unet=max(difference(after[key], plain[key]) for key in after),
        strength_zero_is_the_input=unchanged is flashface,
    )


def comfyui_attention_is_used(unet: str) -> dict:
    """The UNet Load Model loads, called once (reference pass, then a main pass of 2 rows): how many
    attentions ComfyUI's optimized_attention computed, and how many self- and cross-attentions the
    two passes have (FlashFace's reference attention is its own)."""
    import comfy.ldm.modules.attention as attention
    from flashface_pack.flashface.models.row_plan import RowPlan
    from flashface_pack.flashface.models.unet_pass import TransformerBlock

    model = load_model._load_unet(Path(unet), "fp32").model.diffusion_model
    calls = []
    original = attention.optimized_attention

    def counting(q, k, v, heads, *args, **kwargs):
        calls.append(tuple(q.shape))
        return original(q, k, v, heads, *args, **kwargs)

    attention.optimized_attention = counting
    try:
        generator = torch.Generator().manual_seed(0)
        config = model.config
        references = model.encode_references(
            torch.randn(1, 4, 8, 8, generator=generator),
            500,
            torch.randn(1, 77, config.context_dim, generator=generator),
        )
        reference_pass = len(calls)
        model(
            torch.randn(2, 4, 8, 8, generator=generator),
            500,
            torch.randn(2, 77, config.context_dim, generator=generator),
            None,
            references,
            RowPlan.unshared([1.0, 1.0]),
        )
    finally:
        attention.optimized_attention = original
    main_blocks = sum(
        isinstance(m, TransformerBlock) for name, m in model.named_modules() if not name.startswith("reference_")
    )
    reference_blocks = sum(
        isinstance(m, TransformerBlock) for name, m in model.named_modules() if name.startswith("reference_")
    )
    return dict(
        reference_pass=reference_pass,
        main_pass=len(calls) - reference_pass,
        main_blocks=main_blocks,
        reference_blocks=reference_blocks,
    )
