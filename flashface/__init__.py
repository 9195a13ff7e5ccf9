"""FlashFace: identity-preserving portrait generation (Zhang et al. 2024), as a plain library.

No ComfyUI import anywhere in this package; the ComfyUI nodes in ``nodes/`` are thin adapters.
All imports inside the package are relative, so it works both as the top-level package
``flashface`` (command line, tests) and as a sub-package of the ComfyUI node pack.
"""

import re

MINIMUM_TORCH = (2, 4)  # the oldest torch the tests pass on (2.2 lacks fp16 matmul on the CPU and fp8 comparisons)


def torch_version_problem(installed: str) -> str | None:
    """Why torch of version `installed` (e.g. "2.4.1+cu121") cannot run FlashFace, or None. Reads the
    version string only, so it can be asked before torch is imported."""
    numbers = re.match(r"(\d+)\.(\d+)", installed)
    if numbers is None or tuple(int(n) for n in numbers.groups()) >= MINIMUM_TORCH:
        return None  # a version we cannot read (a source build) is left to try
    wanted = ".".join(str(n) for n in MINIMUM_TORCH)
    return (
        f"FlashFace needs torch {wanted} or later, and this Python has torch {installed}. Update the torch of "
        "ComfyUI's Python (portable build: update\\update_comfyui_and_python_dependencies.bat; elsewhere "
        "pip install --upgrade torch torchvision, with the index URL for your GPU from pytorch.org), then restart."
    )
