"""The nodes run in a process with ComfyUI's own modules (no server), for what a CPU-only server
cannot show or a 0.3.75 graph cannot send:

* they compute on the device ComfyUI's model management loads a network to, also when it loads
  the UNet only partly (--lowvram, or a small GPU): ComfyUI then keeps the smallest modules, such
  as the time embedding, on the CPU and casts their weights per call. With no GPU here the meta
  device stands in for one: whatever computes on the CPU by mistake meets meta weights and fails;
* a value of the wrong type on any input is explained (a Switch node passes any type through);
* the model lists are not walked again while the folders are unchanged."""

from __future__ import annotations

import pytest
import torch

from comfy_process import MESSAGES_OF_CALLS, TINY_FLASHFACE, run_with_comfyui

pytestmark = pytest.mark.comfyui


PARTIAL_LOAD = """
from pathlib import Path
from flashface_pack.flashface.prompts import EncodedPrompt
from flashface_pack.nodes import load_model
from flashface_pack.nodes.generator import FlashFaceGenerator

gpu = torch.device("meta")
unet = load_model._load_unet(Path({unet!r}), "fp32")
vae = load_model._load_vae(Path({vae!r}), "official")
unet.load_device = vae.load_device = gpu


def small_gpu(patchers, **options):
    # what load_models_gpu does on a GPU with room for half the UNet
    for patcher in patchers:
        if patcher is unet:
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
model = load_model.FlashFaceModel(unet=unet, vae=vae, text_encoder=None, detector=None)
width = {width}
prompt = EncodedPrompt("x", *(torch.randn(1, 77, width) for _ in range(3)))
images, latent = FlashFaceGenerator().generate(
    model, prompt, prompt, torch.rand(2, 224, 224, 3), seed=1, steps=3, solver="ddim",
    discretization="trailing", sigma_spacing="timesteps", text_guidance=7.5, reference_feature_strength=1.2,
    reference_guidance_strength=3.2, launch_timestep=750, face_x1=0.3, face_y1=0.1, face_x2=0.6, face_y2=0.4,
    width=64, height=64, batch_size=2, preset="none")
devices = {{name: p.device.type for name, p in unet.model.named_parameters()}}
result = dict(images=[images.device.type, list(images.shape)],
              latent=[latent["samples"].device.type, list(latent["samples"].shape)],
              on_cpu=sorted(name for name, device in devices.items() if device == "cpu"),
              on_gpu=sum(device == "meta" for device in devices.values()), lowvram=bool(unet.model.model_lowvram))
"""


def test_generator_runs_on_the_load_device_of_a_partially_loaded_unet(comfy_install, tiny_model_files, tmp_path):
    from tiny_flashface_models import TEXT_WIDTH

    snippet = PARTIAL_LOAD.format(
        unet=str(tiny_model_files["unet_name"]), vae=str(tiny_model_files["vae_name"]), width=TEXT_WIDTH
    )
    result = run_with_comfyui(comfy_install, snippet, tmp_path)
    assert result["lowvram"] and result["on_gpu"] > 0
    assert "diffusion_model.time_embed.0.weight" in result["on_cpu"]  # the case that used to send all to the CPU
    assert result["images"] == ["meta", [2, 64, 64, 3]]
    assert result["latent"] == ["meta", [2, 4, 8, 8]]


WRONG_TYPES = (
    MESSAGES_OF_CALLS
    + """
from flashface_pack.flashface.prompts import EncodedPrompt
from flashface_pack.nodes import detect_face, generator, load_model, text_encode

model = load_model.FlashFaceModel(unet=None, vae=None, text_encoder=None, detector=None)
prompt = EncodedPrompt("x", *(torch.zeros(1, 77, 32) for _ in range(3)))
image = torch.rand(1, 64, 64, 3)
settings = dict(seed=1, steps=2, solver="ddim", discretization="trailing", sigma_spacing="timesteps",
                text_guidance=7.5, reference_feature_strength=1.2, reference_guidance_strength=3.2,
                launch_timestep=750, face_x1=0.3, face_y1=0.1, face_x2=0.6, face_y2=0.4, width=64, height=64,
                batch_size=1, preset="none")
calls = {
    "generator positive text": lambda: generator.FlashFaceGenerator().generate(model, "a portrait", prompt, image,
                                                                               **settings),
    "generator negative conditioning": lambda: generator.FlashFaceGenerator().generate(
        model, prompt, [[torch.zeros(1, 77, 768), {}]], image, **settings),
    "generator model tensor": lambda: generator.FlashFaceGenerator().generate(image, prompt, prompt, image,
                                                                              **settings),
    "generator faces text": lambda: generator.FlashFaceGenerator().generate(model, prompt, prompt, "faces",
                                                                            **settings),
    "generator mask image": lambda: generator.FlashFaceGenerator().generate(model, prompt, prompt, image,
                                                                            face_mask=torch.rand(1, 8, 8, 3, 2),
                                                                            **settings),
    "detect photos text": lambda: detect_face.FlashFaceDetectFace().detect([model], ["a photo"], [0.6], ["largest"]),
    "detect photos nan": lambda: detect_face.FlashFaceDetectFace().detect(
        [model], [torch.full((1, 64, 64, 3), float("nan"))], [0.6], ["largest"]),
    "detect model text": lambda: detect_face.FlashFaceDetectFace().detect(["model"], [image], [0.6], ["largest"]),
    "encode model none": lambda: text_encode.FlashFaceCLIPTextEncode().encode(None, "a portrait"),
}
result = messages(calls)
"""
)


def test_a_value_of_the_wrong_type_on_any_input_is_explained(comfy_install, tmp_path):
    messages = run_with_comfyui(comfy_install, WRONG_TYPES, tmp_path)
    expected = {
        "generator positive text": "The positive input got text; connect FlashFace CLIP Text Encode",
        "generator negative conditioning": "The negative input got a list (a ComfyUI CONDITIONING is one)",
        "generator model tensor": "The flashface_model input got a tensor of shape [1, 64, 64, 3]; connect FlashFace "
        "Load Model",
        "generator faces text": "The reference_faces input got text",
        "generator mask image": "The face_mask input got a tensor of shape [1, 8, 8, 3, 2]",
        "detect photos text": "The images input got text",
        "detect photos nan": "The images input has pixel values that are not numbers",
        "detect model text": "The flashface_model input got text; connect FlashFace Load Model",
        "encode model none": "The flashface_model input got a NoneType",
    }
    for name, phrase in expected.items():
        assert phrase in messages[name], f"{name}: {messages[name]}"


LISTING = """
import os
from pathlib import Path
from flashface_pack.nodes import model_files

folder = Path(FOLDER)
folder_paths.add_model_folder_path("flashface", str(folder), is_default=True)
(folder / "deep" / "er").mkdir(parents=True, exist_ok=True)
(folder / "deep" / "er" / "first.safetensors").write_bytes(b"x")
walks = []
real_walk = os.walk
os.walk = lambda *args, **kwargs: (walks.append(args[0]), real_walk(*args, **kwargs))[1]
first = model_files.choices("unet")
walked_first = len(walks)
second = model_files.choices("unet")
walked_second = len(walks) - walked_first
(folder / "deep" / "er" / "second.safetensors").write_bytes(b"x")
third = model_files.choices("unet")
result = dict(first=first, second=second, third=third, walked_first=walked_first, walked_second=walked_second,
              walked_third=len(walks) - walked_first - walked_second)
"""


def test_model_lists_are_listed_again_only_when_a_folder_changed(comfy_install, tmp_path):
    listed = run_with_comfyui(
        comfy_install, LISTING.replace("FOLDER", repr(str(tmp_path / "models" / "flashface"))), tmp_path
    )
    assert "deep/er/first.safetensors" in listed["first"] and listed["second"] == listed["first"]
    assert listed["walked_first"] > 0 and listed["walked_second"] == 0
    assert "deep/er/second.safetensors" in listed["third"] and listed["walked_third"] > 0


PATCHERS = """
from pathlib import Path
from flashface_pack import NODE_CLASS_MAPPINGS
from flashface_pack.nodes import load_model

def patcher_classes():
    unet = load_model._load_unet(Path({unet!r}), "fp16")
    vae = load_model._load_vae(Path({vae!r}), "official")
    return unet, [type(p).__name__ for p in (unet, vae)]

had_core = hasattr(comfy.model_patcher, "CoreModelPatcher")
expected_default = (comfy.model_patcher.CoreModelPatcher if had_core else comfy.model_patcher.ModelPatcher).__name__
unet, default = patcher_classes()

class DynamicStandIn(comfy.model_patcher.ModelPatcher):
    pass

comfy.model_patcher.CoreModelPatcher = DynamicStandIn  # what ComfyUI's start-up does with dynamic VRAM
_, swapped = patcher_classes()
cast = mm.unet_manual_cast(torch.float16, mm.get_torch_device())
result = dict(default=default, expected_default=expected_default, swapped=swapped,
              manual_cast_dtype=str(unet.model.manual_cast_dtype), expected_cast=str(cast),
              weight_dtype=str(unet.model.get_dtype()),
              unet_weights=str(unet.model.diffusion_model.out[2].weight.dtype),
              aliases={{name: getattr(node, "SEARCH_ALIASES", None) for name, node in NODE_CLASS_MAPPINGS.items()}})
"""


def test_models_use_comfyuis_patcher_class_and_report_their_cast_dtype(comfy_install, tiny_model_files, tmp_path):
    """Newer ComfyUI builds models with CoreModelPatcher (its dynamic-VRAM patcher once enabled)
    and reads manual_cast_dtype for its memory estimates; older ones have neither."""
    result = run_with_comfyui(
        comfy_install,
        PATCHERS.format(unet=str(tiny_model_files["unet_name"]), vae=str(tiny_model_files["vae_name"])),
        tmp_path,
    )
    assert result["default"] == [result["expected_default"]] * 2
    assert result["swapped"] == ["DynamicStandIn"] * 2
    assert result["weight_dtype"] == result["unet_weights"] == "torch.float16"
    assert result["manual_cast_dtype"] == result["expected_cast"] == "torch.float32"  # fp16 weights, CPU computes fp32
    for name, aliases in result["aliases"].items():
        assert aliases and all(isinstance(alias, str) and alias == alias.lower() for alias in aliases), name


FP8_STORAGE = """
from pathlib import Path
from flashface_pack.nodes import load_model

sizes, dtypes = {{}}, {{}}
for name in ("fp16", "fp8_e4m3fn", "fp8_e5m2"):
    unet = load_model._load_unet(Path({unet!r}), name)
    model = unet.model.diffusion_model
    sizes[name] = unet.model_size()
    dtypes[name] = dict(stored=str(unet.model.get_dtype()), compute=str(unet.model.manual_cast_dtype),
                        layer=type(model.input_blocks[1][0].in_layers[2]).__module__)
kept_bytes = sum(p.numel() * 4 for m in model.modules() if isinstance(m, (torch.nn.GroupNorm, torch.nn.LayerNorm))
                 for p in m.parameters())  # the norms, in fp32
kept_bytes += sum(t.numel() * t.element_size() for key, t in unet.model.state_dict().items()
                  if not key.startswith("diffusion_model."))  # ComfyUI's own buffers (model sampling's sigmas)
result = dict(sizes=sizes, dtypes=dtypes, kept_bytes=kept_bytes)
"""


def test_fp8_weights_halve_the_size_comfyui_accounts_for(comfy_install, tiny_model_files, tmp_path):
    """ComfyUI's memory management (partial loading, eviction) reads the patcher's model size: fp8
    storage halves it against fp16, apart from the norms kept in fp32 (and ComfyUI's own buffers); layers are ComfyUI's
    manual-cast ones computing in fp32 on the CPU."""
    result = run_with_comfyui(comfy_install, FP8_STORAGE.format(unet=str(tiny_model_files["unet_name"])), tmp_path)
    sizes, kept = result["sizes"], result["kept_bytes"]
    for name in ("fp8_e4m3fn", "fp8_e5m2"):
        assert sizes[name] - kept == (sizes["fp16"] - kept) // 2, sizes
        assert result["dtypes"][name] == dict(
            stored=f"torch.float8_{name[4:]}", compute="torch.float32", layer="comfy.ops"
        ), result["dtypes"]


COMPACT_FILE = """
from pathlib import Path
from flashface_pack.nodes import load_model

published = load_model._load_unet(Path({published!r}), "fp16").model.diffusion_model.state_dict()
compact = load_model._load_unet(Path({compact!r}), "fp16").model.diffusion_model.state_dict()
result = dict(same_keys=list(published) == list(compact),
              equal=all(torch.equal(published[key], compact[key]) for key in published))
"""


def test_load_model_takes_the_compact_file_in_place_of_the_published_one(comfy_install, tiny_model_files, tmp_path):
    from flashface.models.convert import convert_unet

    compact = convert_unet(tiny_model_files["unet_name"], tmp_path / "compact_fp16.safetensors", torch.float16)
    result = run_with_comfyui(
        comfy_install, COMPACT_FILE.format(published=str(tiny_model_files["unet_name"]), compact=str(compact)), tmp_path
    )
    assert result == dict(same_keys=True, equal=True)


LAYOUT = """
from flashface_pack.flashface.models.model_registry import MODEL_REGISTRY, get_model_path, model_entry
from flashface_pack.flashface.utils.cache_utils import DownloadSettings
from flashface_pack.nodes.model_files import entry_folders

paths = []
for name, changes in {entries!r}:
    MODEL_REGISTRY[name] = {{**MODEL_REGISTRY[name], **changes}}
    paths.append(str(get_model_path(name, folders=entry_folders(model_entry(name)),
                                    settings=DownloadSettings(read_timeout=5, backoff_seconds=0.01))))
result = dict(paths=paths, listed=folder_paths.get_filename_list("flashface"),
              extensions=sorted(folder_paths.folder_names_and_paths["flashface"][1]))
"""


@pytest.mark.parametrize(
    "layout", ["base directory", "extra_model_paths.yaml", "legacy folders", "same name in a legacy folder"]
)
def test_model_files_in_comfyuis_installation_layouts(comfy_install, tmp_path, layout):
    """The registry's fourth scenario with ComfyUI's own folder_paths and extra_model_paths.yaml
    loader: where files are found, where downloads go, and that ComfyUI lists what was downloaded.
    An entry's url is pointed at a local server, as a developer adding it would."""
    import hashlib

    from http_fixture_server import FixtureServer
    from http_fixture_server import model_file as payload

    base, yaml_path = tmp_path / "base", None
    data = payload()
    with FixtureServer() as server:
        url = server.add("/resolve/main/sd-v1-vae.pth", data, hf="redirect")
        entries = [("vae", {"size": len(data), "url": url})]
        expected = [base / "models" / "flashface" / "sd-v1-vae.pth"]
        if layout == "extra_model_paths.yaml":  # a default shared folder for FlashFace, and an old one
            yaml_path = tmp_path / "extra_model_paths.yaml"
            yaml_path.write_text(
                "shared:\n  base_path: nas\n  is_default: true\n  flashface: flashface-models\n"
                "old:\n  base_path: old-disk\n  flashface: ff\n"
            )
            expected = [tmp_path / "nas" / "flashface-models" / "sd-v1-vae.pth"]
            kept = tmp_path / "old-disk" / "ff" / "openai-clip-vit-large-14.pth"
            clip = payload(seed=2, size=3000)
            kept.parent.mkdir(parents=True)
            kept.write_bytes(clip)
            entries.append(("clip", {"size": len(clip), "md5": hashlib.md5(clip).hexdigest()}))
            expected.append(kept)
        if layout == "legacy folders":  # earlier ports' files, one of them in an extra text_encoders folder
            files = {
                ("clip", tmp_path / "old-install" / "models" / "clip" / "openai-clip-vit-large-14.pth"): 3,
                ("retinaface", base / "models" / "face_detection" / "retinaface_resnet50.pth"): 4,
                ("retinaface_facexlib", base / "models" / "detection" / "detection_Resnet50_Final.pth"): 5,
                ("vae", base / "models" / "vae" / "sd-v1-vae.pth"): 6,
            }
            yaml_path = tmp_path / "extra_model_paths.yaml"
            yaml_path.write_text("old:\n  base_path: old-install\n  clip: models/clip\n")
            entries, expected = [], []
            for (name, path), seed in files.items():
                content = payload(seed=seed, size=2000 + seed)
                path.parent.mkdir(parents=True)
                path.write_bytes(content)
                entries.append(
                    (
                        name,
                        {
                            "size": len(content),
                            "md5": hashlib.md5(content).hexdigest(),
                            "url": "http://127.0.0.1:9/unreachable",
                        },
                    )
                )
                expected.append(path)
        theirs = base / "models" / "vae" / "sd-v1-vae.pth"
        if layout == "same name in a legacy folder":  # someone else's sd-v1-vae.pth: left alone
            theirs.parent.mkdir(parents=True)
            theirs.write_bytes(b"another file with the same name")
        result = run_with_comfyui(
            comfy_install,
            LAYOUT.format(entries=entries),
            tmp_path,
            arguments={"base_directory": str(base)},
            extra_model_paths=yaml_path,
        )
        requests = list(server.requests)
    assert result["paths"] == [str(path) for path in expected]
    assert ".ckpt" in result["extensions"] and ".safetensors" in result["extensions"]
    if layout == "legacy folders":
        assert requests == []
    else:
        assert "sd-v1-vae.pth" in result["listed"] and expected[0].read_bytes() == data  # ComfyUI lists it
    if layout == "same name in a legacy folder":
        assert theirs.read_bytes() == b"another file with the same name"


MODEL_PATH = (
    TINY_FLASHFACE
    + """
import comfy.model_base
import nodes as comfy_nodes
from flashface_pack.nodes import sampling, text_encode

_, positive, negative, _ = text_encode.FlashFaceCLIPTextEncode().encode(flashface, "a portrait")


def model_with(faces):
    return sampling.FlashFaceApply().apply(
        flashface, reference_faces=torch.rand(faces, 224, 224, 3, generator=torch.Generator().manual_seed(faces)),
        negative=negative, padding_seed=0, pad_references=False, reference_feature_strength=1.2,
        reference_feature_strength_before_launch=0.85, reference_guidance_strength=3.2, launch_timestep=750,
        face_x1=0.3, face_y1=0.1, face_x2=0.6, face_y2=0.4)[0]


one, four = model_with(1), model_with(4)
shape = [2, 4, 64, 64]
estimates = {{}}
for name, model in (("one", one), ("four", four)):
    model.model.current_patcher = model
    estimates[name] = model.model.memory_required(shape)
estimates["sd15"] = comfy.model_base.BaseModel.memory_required(four.model, shape)


def sample():
    latent = {{"samples": torch.zeros(1, 4, 8, 8)}}
    return comfy_nodes.KSampler().sample(four, 3, 3, 7.5, "euler", "normal", positive, negative, latent)[0]["samples"]


whole = sample()
mm.unload_all_models()
loaded = mm.load_models_gpu


def small_memory(patchers, **options):
    # what load_models_gpu does with room for half the UNet: the rest is cast per layer at each call
    for patcher in patchers:
        patcher.load(mm.get_torch_device(), lowvram_model_memory=patcher.model_size() // 2)


mm.load_models_gpu = small_memory
partial = sample()
cast = sum(bool(getattr(module, "comfy_cast_weights", False)) for module in four.model.modules())
result = dict(estimates=estimates, difference=float((whole - partial).abs().max()), cast_layers=cast,
              lowvram=bool(four.model.model_lowvram))
"""
)


def test_the_model_path_estimates_its_memory_and_runs_partially_loaded(comfy_install, tiny_model_files, tmp_path):
    """KSampler batches by `memory_required`: the references' tokens count (more faces, more memory,
    more than plain SD1.5); a UNet ComfyUI loads only in part gives the same samples."""
    snippet = MODEL_PATH.format(
        unet=str(tiny_model_files["unet_name"]),
        vae=str(tiny_model_files["vae_name"]),
        clip=str(tiny_model_files["clip_name"]),
    )
    result = run_with_comfyui(comfy_install, snippet, tmp_path)
    estimates = result["estimates"]
    assert estimates["four"] > estimates["one"] > estimates["sd15"] > 0
    assert result["lowvram"] and result["cast_layers"] > 0
    assert result["difference"] < 1e-5


SD15_KEYS = """
from pathlib import Path
import comfy.utils
from comfy.ldm.modules.diffusionmodules.openaimodel import UNetModel
from flashface_pack.nodes import load_model
from flashface_pack.nodes.comfy_model import ldm_unet_config

unet = load_model._load_unet(Path({unet!r}), "fp32")
config = dict(ldm_unet_config(unet.model.diffusion_model.config), in_channels=4)
del config["disable_unet_model_creation"]
with torch.device("meta"):
    sd15 = UNetModel(**config, dtype=torch.float32)
ours = {{key[len("diffusion_model."):]: list(value.shape) for key, value in unet.model.state_dict().items()
        if key.startswith("diffusion_model.")}}
result = dict(sd15={{key: list(value.shape) for key, value in sd15.state_dict().items()}}, ours=ours,
              diffusers=sorted(set(comfy.utils.unet_to_diffusers(unet.model.model_config.unet_config).values())))
"""


def test_the_main_path_has_the_names_and_shapes_of_comfyuis_sd_unet(comfy_install, tiny_model_files, tmp_path):
    """ComfyUI's own SD UNet (openaimodel.UNetModel) built with the FlashFace MODEL's unet_config
    has exactly the FlashFace main path's tensors, name for name and shape for shape: what SD1.5
    LoRAs, merges and ControlNets address is there. FlashFace's own tensors: the input conv's mask
    channel, the reference attention, the reference network."""
    result = run_with_comfyui(comfy_install, SD15_KEYS.format(unet=str(tiny_model_files["unet_name"])), tmp_path)
    sd15, ours = result["sd15"], result["ours"]
    own = {
        key
        for key in ours
        if key == "input_blocks.0.0.mask_weight"
        or ".reference_attn." in key
        or key.startswith(("reference_input_blocks.", "reference_output_blocks."))
    }
    assert {key: ours[key] for key in ours if key not in own} == sd15
    assert set(sd15) <= set(result["diffusers"])  # diffusers-named LoRAs reach every one of them
    assert len(own) > 100 and sd15["input_blocks.0.0.weight"][1] == 4
