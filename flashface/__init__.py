"""FlashFace: identity-preserving portrait generation (Zhang et al. 2024), as a plain library.

No ComfyUI import anywhere in this package; the ComfyUI nodes in ``nodes/`` are thin adapters.
All imports inside the package are relative, so it works both as the top-level package
``flashface`` (command line, tests) and as a sub-package of the ComfyUI node pack.
"""
