"""The ComfyUI nodes (V1 API). Thin: validate, convert, call `flashface`, report progress.

The four core nodes (Load Model, Detect Face, CLIP Text Encode, Generator: the official run), and
the MODEL path into ComfyUI's own sampling (Apply, Sigmas, VAE Encode / Decode), Person (several
people in one picture) and Graft Checkpoint (a user's SD1.5 checkpoint grafted onto the UNet)."""

import folder_paths

from .detect_face import FlashFaceDetectFace
from .examples import copy_example_photos
from .generator import FlashFaceGenerator
from .graft import FlashFaceGraftCheckpoint
from .latents import FlashFaceVAEDecode, FlashFaceVAEEncode
from .load_model import FlashFaceLoadModel
from .model_files import register_flashface_folder
from .people import FlashFacePerson
from .sampling import FlashFaceApply, FlashFaceSigmas
from .text_encode import FlashFaceCLIPTextEncode

register_flashface_folder()
copy_example_photos(folder_paths.get_input_directory(), folder_paths.get_user_directory())

NODE_CLASS_MAPPINGS = {
    "FlashFace_LoadModel": FlashFaceLoadModel,
    "FlashFace_DetectFace": FlashFaceDetectFace,
    "FlashFace_CLIPTextEncode": FlashFaceCLIPTextEncode,
    "FlashFace_Generator": FlashFaceGenerator,
    "FlashFace_Apply": FlashFaceApply,
    "FlashFace_Sigmas": FlashFaceSigmas,
    "FlashFace_VAEEncode": FlashFaceVAEEncode,
    "FlashFace_VAEDecode": FlashFaceVAEDecode,
    "FlashFace_Person": FlashFacePerson,
    "FlashFace_GraftCheckpoint": FlashFaceGraftCheckpoint,
}
NODE_DISPLAY_NAME_MAPPINGS = {
    "FlashFace_LoadModel": "FlashFace Load Model",
    "FlashFace_DetectFace": "FlashFace Detect Face",
    "FlashFace_CLIPTextEncode": "FlashFace CLIP Text Encode",
    "FlashFace_Generator": "FlashFace Generator",
    "FlashFace_Apply": "FlashFace Apply (MODEL for KSampler)",
    "FlashFace_Sigmas": "FlashFace Sigmas",
    "FlashFace_VAEEncode": "FlashFace VAE Encode",
    "FlashFace_VAEDecode": "FlashFace VAE Decode",
    "FlashFace_Person": "FlashFace Person (experimental)",
    "FlashFace_GraftCheckpoint": "FlashFace Graft Checkpoint (experimental)",
}
