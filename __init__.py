"""ComfyUI-FlashFace: identity-preserving portraits from reference photos (FlashFace, SD1.5).

ComfyUI imports this file when it starts. Importing loads no model, touches no GPU and downloads
nothing: models are loaded by the FlashFace Load Model node when a workflow runs.
"""

import importlib.util

WEB_DIRECTORY = "./web"  # the frontend extension: the face box drawn on the nodes that place a face

if importlib.util.find_spec("folder_paths") is None:
    # Imported outside ComfyUI: pytest imports the repository root as a package because of this
    # file. The nodes need ComfyUI's modules, so there is nothing to register.
    NODE_CLASS_MAPPINGS = {}
    NODE_DISPLAY_NAME_MAPPINGS = {}
else:
    import torch

    from .flashface import torch_version_problem

    if problem := torch_version_problem(torch.__version__):
        raise ImportError(problem)  # ComfyUI lists the pack as failed to import, with this message
    from .nodes import NODE_CLASS_MAPPINGS, NODE_DISPLAY_NAME_MAPPINGS

__all__ = ["NODE_CLASS_MAPPINGS", "NODE_DISPLAY_NAME_MAPPINGS", "WEB_DIRECTORY"]
