"""A compact FlashFace UNet file: the published checkpoint's tensors, each once, in one dtype.

The published `flashface.ckpt` (10.6 GB, fp32) stores every tensor the main and reference paths
share twice (`encoder.*` and `ori_encoder.*`, ...) and a reference middle block that never runs
(`ref_middle.*`). `convert_unet` writes a safetensors file with the official key names, each
aliased pair once (the `ori_` copy dropped, after checking the two are equal), no `ref_middle`,
weights in the chosen dtype (norm parameters stay fp32, as every loader keeps them), and metadata
saying so. `compact.compact_view` lets every loader read it as the published file: the dropped `ori_`
names answer with the tensor kept. Loading the compact file in its dtype gives the same tensors,
bit for bit, as loading the published file in that dtype.
"""

from __future__ import annotations

import json
import os
import struct
from collections.abc import Callable, Iterable
from contextlib import ExitStack
from pathlib import Path

import torch

from ..errors import InvalidInputError, ModelFileError
from .checkpoint import check_plan, checkpoint_source
from .compact import ALIAS_PREFIX, COMPACT_FORMAT, DTYPE_NAMES, SAFETENSORS_DTYPES
from .graft import GraftFiles, add_difference, check_strength, graft_shapes, open_graft
from .ops import at_least_fp32, norm_parameter_names
from .unet import FlashFaceUNet
from .unet_blocks import MODEL_NAME
from .unet_loading import infer_layout, official_key, unet_view

Progress = Callable[[int, int], None]  # (bytes written, bytes in all)


def convert_unet(
    source: str | os.PathLike,
    out: str | os.PathLike,
    dtype: torch.dtype,
    progress: Progress | None = None,
    graft: GraftFiles | None = None,
) -> Path:
    """Write the compact file of the FlashFace UNet `source` to `out` (a new .safetensors file),
    reading and writing one tensor at a time; the file appears only once complete. With `graft`, the
    fine-tune's difference is added to the published fp32 weights (`graft.graft_unet`'s sum) before
    they are stored in `dtype`."""
    out = Path(out)
    if out.suffix != ".safetensors":
        raise InvalidInputError(f"{out}: the compact file is a safetensors file; give a name ending in .safetensors.")
    if out.exists():
        raise InvalidInputError(f"{out} already exists; convert never overwrites a file: give a new name.")
    folder = out.parent
    if not folder.is_dir():
        raise InvalidInputError(f"The folder {folder} does not exist: create it, or give a path in a folder that does.")
    if not os.access(folder, os.W_OK):
        raise InvalidInputError(f"The folder {folder} cannot be written to: give a path in a folder you can write to.")
    if dtype not in SAFETENSORS_DTYPES:
        raise InvalidInputError(
            f"Cannot store weights as {dtype}; choose one of fp32, fp16, bf16, fp8_e4m3fn, fp8_e5m2."
        )
    with checkpoint_source(source) as opened:
        stored = opened.metadata()
        if stored.get("format") == COMPACT_FORMAT:
            weights = DTYPE_NAMES.get(stored.get("weights", ""), "of an unknown dtype")
            raise InvalidInputError(
                f"{opened.path} is already a compact FlashFace UNet file ({weights}, converted from "
                f"{stored.get('source', 'the published file')}): to store it in another dtype, convert that original "
                "file again (a compact file has already lost the original's precision)."
            )
        checkpoint = unet_view(opened)  # the published file, or one in ComfyUI's names (ComfyUI's ModelSave)
        layout = infer_layout(checkpoint)
        plan = layout.plan
        with torch.device("meta"):
            module = FlashFaceUNet(layout.config)
        check_plan(checkpoint, plan, MODEL_NAME, ignore=layout.unused)
        norm_keys = {key for name in norm_parameter_names(module) for key in plan[name].file_keys}
        wanted = {key for tensor_plan in plan.values() for key in tensor_plan.file_keys}
        aliased = sorted(key for key in wanted if ALIAS_PREFIX + key in wanted)
        stored = sorted(
            key for key in wanted if not (key.startswith(ALIAS_PREFIX) and key[len(ALIAS_PREFIX) :] in wanted)
        )
        metadata = {
            "format": COMPACT_FORMAT,
            "num_heads": str(layout.config.num_heads),
            "weights": SAFETENSORS_DTYPES[dtype],
            "aliased": json.dumps(aliased),
            "source": Path(checkpoint.path).name,
        }
        with ExitStack() as stack:
            graft_files, strength, grafted = None, 0.0, {}
            if graft is not None:
                strength = check_strength(graft.strength)
                graft_files = stack.enter_context(open_graft(graft.checkpoint, graft.base, graft_shapes(module)))
                grafted = {official_key(key): key for key in graft_files.shapes} if strength else {}
                metadata["grafted"] = json.dumps(
                    dict(checkpoint=Path(graft.checkpoint).name, base=Path(graft.base).name, strength=strength)
                )

            def converted(key: str, target: torch.dtype) -> torch.Tensor:
                tensor = checkpoint.tensor(key)
                if key in aliased and not torch.equal(tensor, checkpoint.tensor(ALIAS_PREFIX + key)):
                    raise ModelFileError(
                        f"{checkpoint.path}: the tensors {key} and {ALIAS_PREFIX}{key} should be identical "
                        f"copies but differ, so this is not an unmodified {MODEL_NAME} file."
                    )
                if graft_files is not None and key in grafted:
                    tensor = add_difference(tensor, graft_files.difference(grafted[key]), strength)
                return tensor.to(target)

            entries = [
                (key, at_least_fp32(dtype) if key in norm_keys else dtype, tuple(checkpoint.shape(key)))
                for key in stored
            ]
            write_safetensors(out, entries, converted, metadata, progress)
    return out


def write_safetensors(
    path: Path,
    entries: Iterable[tuple[str, torch.dtype, tuple[int, ...]]],
    tensor: Callable[[str, torch.dtype], torch.Tensor],
    metadata: dict[str, str],
    progress: Progress | None = None,
) -> None:
    """A safetensors file written tensor by tensor (the header first, from the shapes), so memory
    holds one tensor at a time; written beside `path` and renamed onto it when complete. A write
    that fails (disk full, a folder that went away) is a ModelFileError naming `path`."""
    entries = list(entries)
    header: dict[str, object] = {"__metadata__": metadata}
    offset = 0
    for key, dtype, shape in entries:
        size = torch.Size(shape).numel() * dtype.itemsize
        header[key] = {
            "dtype": SAFETENSORS_DTYPES[dtype],
            "shape": list(shape),
            "data_offsets": [offset, offset + size],
        }
        offset += size
    encoded = json.dumps(header, separators=(",", ":")).encode()
    encoded += b" " * (-len(encoded) % 8)  # the data starts 8-byte aligned
    partial = path.with_name(path.name + ".partial")
    try:
        with open(partial, "wb") as file:
            file.write(struct.pack("<Q", len(encoded)) + encoded)
            written = 0
            for key, dtype, shape in entries:
                value = tensor(key, dtype).contiguous()
                if value.dtype != dtype or tuple(value.shape) != tuple(shape):
                    raise AssertionError(f"{key}: {value.dtype} {tuple(value.shape)} is not {dtype} {shape}")
                data = value.reshape(-1).view(torch.uint8).numpy().tobytes()
                file.write(data)
                written += len(data)
                if progress is not None:
                    progress(written, offset)
            file.flush()
            os.fsync(file.fileno())
        os.replace(partial, path)
    except OSError as error:
        raise ModelFileError(f"Could not write {path}: {error.strerror or error}. Nothing was kept.") from error
    finally:
        partial.unlink(missing_ok=True)
