"""CLIP ViT-L/14 text encoder and tokenizer, as FlashFace uses them.

FlashFace conditions its UNet on the *whole* 77-token sequence after the text tower's final
LayerNorm: token embedding + learned positions -> pre-LN causal transformer blocks (QuickGELU MLP)
-> final LayerNorm. No projection, no pooling, no padding mask (padding tokens are attended like
any other under the causal mask). This equals Hugging Face ``CLIPTextModel(...).last_hidden_state``.

Two file namings are read:

* the official ``openai-clip-vit-large-14.pth``: the whole CLIP, of which only ``textual.*``
  (minus the projection ``textual.head``) is loaded; ``visual.*`` and ``log_scale`` are ignored;
* Hugging Face / ComfyUI ``clip_l.safetensors``: ``text_model.*`` (optionally under
  ``transformer.`` or ``cond_stage_model.transformer.``); q/k/v are concatenated into the one
  ``to_qkv`` projection of the official layout.

The transformer is our own small module rather than open_clip's ``TextTransformer``: the
architecture is the same, but open_clip's blocks hard-wire ``nn.MultiheadAttention`` and
``nn.Linear``, so ComfyUI's ``operations`` (``comfy.ops.manual_cast``) could not be substituted,
and its module names would need a second key mapping for the official file. The tokenizer reuses
open_clip's BPE (see `Tokenizer`).
"""

from __future__ import annotations

import functools
import heapq
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import regex
import torch
import torch.nn.functional as F
from torch import nn

from ..errors import ContractError, ModelFileError
from .checkpoint import Checkpoint, Layout, TensorPlan, count_indexed, load_layout, required_shape
from .ops import TORCH_OPERATIONS, norm_at_least_fp32

# How error messages name this network.
MODEL_NAME = "CLIP ViT-L/14 text encoder"
START_OF_TEXT, END_OF_TEXT = "<|startoftext|>", "<|endoftext|>"
START_TOKEN, END_TOKEN = 49406, 49407
CONTEXT_LENGTH = 77
HEAD_DIM = 64
OFFICIAL_PREFIX = "textual."
# Parts of the official whole-CLIP file that the text encoder does not use.
OFFICIAL_UNUSED = ("visual.", "log_scale", "textual.head")
HF_TOKEN_EMBEDDING = "text_model.embeddings.token_embedding.weight"
HF_PREFIXES = ("", "transformer.", "cond_stage_model.transformer.")
# Our (official) module names inside block N -> Hugging Face's inside text_model.encoder.layers.N.
HF_MODULE_NAMES = (
    ("norm1", "layer_norm1"),
    ("norm2", "layer_norm2"),
    ("attn.proj", "self_attn.out_proj"),
    ("mlp.0", "mlp.fc1"),
    ("mlp.2", "mlp.fc2"),
)
# Parts of a Hugging Face CLIPModel / clip_l file that the text encoder does not use.
HF_UNUSED = (
    "text_model.embeddings.position_ids",
    "text_projection.weight",
    "logit_scale",
    "vision_model.",
    "visual_projection.weight",
)
# Text towers of other CLIPs, recognised by their width, so the error can name them.
OTHER_TEXT_ENCODERS = {1024: "OpenCLIP ViT-H/14 (Stable Diffusion 2.x)", 1280: "OpenCLIP ViT-bigG/14 (SDXL)"}
EXPECTED_FILES = (
    "the official openai-clip-vit-large-14.pth (keys textual.*) or a Hugging Face / ComfyUI "
    "clip_l.safetensors (keys text_model.*)"
)


@functools.lru_cache(maxsize=1)
def _open_clip_tokenizer_module():
    """open_clip's tokenizer module, imported on first use: importing open_clip also imports its
    model zoo and timm (0.7 s), which ComfyUI would otherwise pay at every start."""
    from open_clip import tokenizer

    return tokenizer


@functools.lru_cache(maxsize=1)
def _open_clip_bpe():
    """open_clip's `SimpleTokenizer`, read once per process (its merge table and BPE cache are shared)."""
    return _open_clip_tokenizer_module().SimpleTokenizer()


def bpe_merge(symbols: Sequence[str], ranks: Mapping[tuple[str, ...], int]) -> list[str]:
    """Byte-pair merges of one word, with the result of CLIP's `SimpleTokenizer.bpe` (which
    merges every occurrence of the best-ranked pair, left to right, and repeats: quadratic, so a
    40,000-character word takes half a minute there) in O(n log n).

    A heap holds every adjacent pair by (rank, position). A pair created by a merge always ranks
    after that merge (a merge joins symbols that earlier merges made), so popping by rank, then
    position, merges the best pair everywhere, left to right, before anything it created: the
    same merges in the same order. Stale heap entries (a side already merged away) are skipped.
    """
    symbols = list(symbols)
    count = len(symbols)
    following = list(range(1, count)) + [-1]
    preceding = list(range(-1, count - 1))
    alive = [True] * count
    heap = [(ranks[pair], i) for i, pair in enumerate(zip(symbols, symbols[1:])) if pair in ranks]
    heapq.heapify(heap)
    while heap:
        rank, i = heapq.heappop(heap)
        j = following[i]
        if not alive[i] or j < 0 or ranks.get((symbols[i], symbols[j])) != rank:
            continue
        symbols[i] += symbols[j]
        alive[j] = False
        following[i] = following[j]
        if following[j] >= 0:
            preceding[following[j]] = i
        for left, right in ((preceding[i], i), (i, following[i])):
            if left >= 0 and right >= 0 and (pair := (symbols[left], symbols[right])) in ranks:
                heapq.heappush(heap, (ranks[pair], left))
    return [symbol for symbol, kept in zip(symbols, alive) if kept]


class Tokenizer:
    """The official FlashFace tokenizer: OpenAI CLIP BPE, padded with the end token to 77.

    Text cleaning, in order: ftfy.fix_text, HTML-unescape twice, strip, collapse whitespace,
    lower-case. ``<|startoftext|>``/``<|endoftext|>`` written in a prompt become the special
    tokens. The first ``context_length - 2`` BPE tokens are kept, so the end token is always there;
    words after those are not looked at, and each word costs O(n log n) (`bpe_merge`), so no
    prompt can hold up the server.

    open_clip's `SimpleTokenizer` provides the vocabulary (its packaged
    ``bpe_simple_vocab_16e6.txt.gz`` is the official file), the byte encoding and the merge ranks;
    what differs from calling open_clip's tokenizer: open_clip pads with 0, not with the end token,
    and its special tokens are spelled ``<start_of_text>``/``<end_of_text>``, so the official
    spellings in a prompt would be split into ordinary tokens there.
    """

    _PIECES = regex.compile(
        regex.escape(START_OF_TEXT)
        + "|"
        + regex.escape(END_OF_TEXT)
        + r"""|'s|'t|'re|'ve|'m|'ll|'d|\p{L}+|\p{N}|[^\s\p{L}\p{N}]+""",
        regex.IGNORECASE,
    )
    _SPECIAL_IDS = {START_OF_TEXT: START_TOKEN, END_OF_TEXT: END_TOKEN}
    _WORD_CACHE_SIZE = 8192

    def __init__(self, context_length: int = CONTEXT_LENGTH):
        self.context_length = context_length
        self._bpe = _open_clip_bpe()
        self._byte_chars = _open_clip_tokenizer_module().bytes_to_unicode()
        self._word_ids = functools.lru_cache(maxsize=self._WORD_CACHE_SIZE)(self._uncached_word_ids)

    @staticmethod
    def clean(text: str) -> str:
        module = _open_clip_tokenizer_module()
        return module.whitespace_clean(module.basic_clean(text)).lower()

    def _uncached_word_ids(self, piece: str) -> tuple[int, ...]:
        characters = "".join(self._byte_chars[b] for b in piece.encode("utf-8"))
        symbols = [*characters[:-1], characters[-1] + "</w>"]
        return tuple(self._bpe.encoder[token] for token in bpe_merge(symbols, self._bpe.bpe_ranks))

    def encode(self, text: str, limit: int | None = None) -> list[int]:
        """BPE token ids of one text, without start/end tokens; with `limit`, only the first
        `limit` ids are computed (the rest of the text is not tokenized)."""
        ids: list[int] = []
        for match in self._PIECES.finditer(self.clean(text)):
            if limit is not None and len(ids) >= limit:
                break
            piece = match.group()
            if piece in self._SPECIAL_IDS:
                ids.append(self._SPECIAL_IDS[piece])
            else:
                ids.extend(self._word_ids(piece))
        return ids if limit is None else ids[:limit]

    def __call__(self, texts: Sequence[str]) -> torch.Tensor:
        """Token ids [P, context_length] (int64) for P texts."""
        if isinstance(texts, str):
            texts = [texts]
        rows = []
        for text in texts:
            row = [START_TOKEN, *self.encode(text, self.context_length - 2), END_TOKEN]
            rows.append(row + [END_TOKEN] * (self.context_length - len(row)))
        return torch.tensor(rows, dtype=torch.long).reshape(len(rows), self.context_length)


@dataclass(frozen=True)
class TextEncoderConfig:
    """Architecture; the defaults are CLIP ViT-L/14's text tower."""

    vocab_size: int = 49408
    context_length: int = CONTEXT_LENGTH
    width: int = 768
    layers: int = 12
    num_heads: int = 12
    mlp_width: int = 3072


class QuickGELU(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.sigmoid(1.702 * x)


class CausalSelfAttention(nn.Module):
    def __init__(self, ops, width: int, num_heads: int):
        super().__init__()
        self.num_heads = num_heads
        self.to_qkv = ops.Linear(width, 3 * width)
        self.proj = ops.Linear(width, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, length, width = x.shape
        q, k, v = self.to_qkv(x).reshape(batch, length, 3, self.num_heads, -1).permute(2, 0, 3, 1, 4)
        out = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        return self.proj(out.transpose(1, 2).reshape(batch, length, width))


class TextBlock(nn.Module):
    """Pre-LN transformer block: x + attn(norm1(x)), then x + mlp(norm2(x))."""

    def __init__(self, ops, config: TextEncoderConfig):
        super().__init__()
        self.norm1 = ops.LayerNorm(config.width)
        self.attn = CausalSelfAttention(ops, config.width, config.num_heads)
        self.norm2 = ops.LayerNorm(config.width)
        self.mlp = nn.Sequential(
            ops.Linear(config.width, config.mlp_width), QuickGELU(), ops.Linear(config.mlp_width, config.width)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(norm_at_least_fp32(self.norm1, x))
        return x + self.mlp(norm_at_least_fp32(self.norm2, x))


class CLIPTextEncoder(nn.Module):
    """The text tower in the official module naming (token_embedding, pos_embedding, transformer.N, norm)."""

    def __init__(self, config: TextEncoderConfig, operations=None):
        super().__init__()
        ops = operations or TORCH_OPERATIONS
        self.config = config
        self.token_embedding = nn.Embedding(config.vocab_size, config.width)
        self.pos_embedding = nn.Parameter(torch.empty(1, config.context_length, config.width))
        self.transformer = nn.ModuleList(TextBlock(ops, config) for _ in range(config.layers))
        self.norm = ops.LayerNorm(config.width)

    @torch.no_grad()
    def forward(self, token_ids: torch.Tensor) -> torch.Tensor:
        """Embeddings [P, 77, width] after the final LayerNorm, in the weights' dtype."""
        if token_ids.dim() != 2 or token_ids.shape[1] != self.config.context_length:
            raise ContractError(
                f"{MODEL_NAME}: token ids must be [P, {self.config.context_length}], got {tuple(token_ids.shape)}."
            )
        x = self.token_embedding(token_ids) + self.pos_embedding
        for block in self.transformer:
            x = block(x)
        return norm_at_least_fp32(self.norm, x)


@functools.cache
def tokenizer(context_length: int = 77) -> Tokenizer:
    """The official tokenizer for `context_length` tokens, built once (it reads the BPE vocabulary)."""
    return Tokenizer(context_length)


def encode_texts(encoder: CLIPTextEncoder, texts: Sequence[str], device: torch.device | str) -> torch.Tensor:
    """Tokenize P texts with the official tokenizer and encode them with `encoder` on `device`
    (where the caller placed its weights, or where ComfyUI casts them to): [P, 77, width] there."""
    return encoder(tokenizer(encoder.config.context_length)(texts).to(device))


def _add_leading_dim(tensors: Sequence[torch.Tensor]) -> torch.Tensor:
    return tensors[0].unsqueeze(0)


def official_plan(config: TextEncoderConfig) -> dict[str, TensorPlan]:
    """Module key -> ``textual.<module key>`` of the official file."""
    with torch.device("meta"):
        module_keys = CLIPTextEncoder(config).state_dict()
    return {key: TensorPlan.copy(OFFICIAL_PREFIX + key) for key in module_keys}


def hf_plan(config: TextEncoderConfig, prefix: str = "") -> dict[str, TensorPlan]:
    """Module key -> Hugging Face ``text_model.*`` keys (under `prefix`); q, k, v concatenated."""
    text_model = prefix + "text_model."
    plan = {
        "token_embedding.weight": TensorPlan.copy(text_model + "embeddings.token_embedding.weight"),
        "pos_embedding": TensorPlan((text_model + "embeddings.position_embedding.weight",), _add_leading_dim),
    }
    for param in ("weight", "bias"):
        plan[f"norm.{param}"] = TensorPlan.copy(f"{text_model}final_layer_norm.{param}")
        for i in range(config.layers):
            ours, theirs = f"transformer.{i}.", f"{text_model}encoder.layers.{i}."
            plan[f"{ours}attn.to_qkv.{param}"] = TensorPlan.concat(
                *(f"{theirs}self_attn.{p}_proj.{param}" for p in "qkv")
            )
            for module, hf_module in HF_MODULE_NAMES:
                plan[f"{ours}{module}.{param}"] = TensorPlan.copy(f"{theirs}{hf_module}.{param}")
    return plan


def _hf_prefix(checkpoint: Checkpoint) -> str | None:
    for prefix in HF_PREFIXES:
        if prefix + HF_TOKEN_EMBEDDING in checkpoint:
            return prefix
    return None


def _reject(checkpoint: Checkpoint, found: str) -> ModelFileError:
    return ModelFileError(
        f"{checkpoint.path} is {found}, but FlashFace needs the {MODEL_NAME} (width 768). Select {EXPECTED_FILES}."
    )


def _check_width(checkpoint: Checkpoint, width: int) -> None:
    if width in OTHER_TEXT_ENCODERS:
        raise _reject(checkpoint, f"the text encoder of {OTHER_TEXT_ENCODERS[width]} (width {width})")


def _num_heads(checkpoint: Checkpoint, width: int, num_heads: int | None) -> int:
    if num_heads is None:
        stored = checkpoint.metadata().get("num_heads")
        num_heads = int(stored) if stored else width // HEAD_DIM
    if num_heads <= 0 or width % num_heads:
        raise ModelFileError(
            f"{checkpoint.path}: {num_heads} attention heads do not divide the text width {width}; "
            f"pass the right num_heads for this {MODEL_NAME}."
        )
    return num_heads


def _shape(checkpoint: Checkpoint, key: str, dims: int) -> tuple[int, ...]:
    return required_shape(checkpoint, key, f"This is not a complete {MODEL_NAME}: select {EXPECTED_FILES}.", dims)


def _read_config(
    checkpoint: Checkpoint,
    num_heads: int | None,
    *,
    token_embedding: str,
    position_embedding: tuple[str, int],
    layer_norm: str,
    first_mlp: str,
) -> TextEncoderConfig:
    """The config from one naming's keys: the token embedding, the position embedding with its
    dimensions ([..., context, width] in both namings), the pattern of a layer's first norm and its
    first MLP weight."""
    vocab_size, width = checkpoint.shape(token_embedding)
    _check_width(checkpoint, width)
    return TextEncoderConfig(
        vocab_size=vocab_size,
        width=width,
        context_length=_shape(checkpoint, *position_embedding)[-2],
        layers=count_indexed(checkpoint, layer_norm),
        num_heads=_num_heads(checkpoint, width, num_heads),
        mlp_width=_shape(checkpoint, first_mlp, 2)[0],
    )


def infer_layout(checkpoint: Checkpoint, num_heads: int | None = None) -> Layout[TextEncoderConfig]:
    """The layout of either naming (the vision tower and the projection unused); num_heads:
    argument > safetensors metadata "num_heads" > width / 64."""
    if OFFICIAL_PREFIX + "token_embedding.weight" in checkpoint:
        config = _read_config(
            checkpoint,
            num_heads,
            token_embedding=OFFICIAL_PREFIX + "token_embedding.weight",
            position_embedding=(OFFICIAL_PREFIX + "pos_embedding", 3),
            layer_norm=OFFICIAL_PREFIX + "transformer.{}.norm1.weight",
            first_mlp=OFFICIAL_PREFIX + "transformer.0.mlp.0.weight",
        )
        return Layout(config, official_plan(config), lambda key: key.startswith(OFFICIAL_UNUSED))
    prefix = _hf_prefix(checkpoint)
    if prefix is not None:
        layer = prefix + "text_model.encoder.layers.{}."
        config = _read_config(
            checkpoint,
            num_heads,
            token_embedding=prefix + HF_TOKEN_EMBEDDING,
            position_embedding=(prefix + "text_model.embeddings.position_embedding.weight", 2),
            layer_norm=layer + "layer_norm1.weight",
            first_mlp=layer.format(0) + "mlp.fc1.weight",
        )
        unused = tuple(prefix + key for key in HF_UNUSED)
        return Layout(config, hf_plan(config, prefix), lambda key: key.startswith(unused))
    open_clip_embedding = next((k for k in checkpoint.keys() if k.endswith("token_embedding.weight")), None)
    if open_clip_embedding is not None:
        width = checkpoint.shape(open_clip_embedding)[-1]
        _check_width(checkpoint, width)
        raise _reject(checkpoint, f"a CLIP text encoder in OpenCLIP naming (width {width}), which is not read")
    raise ModelFileError(
        f"{checkpoint.path} is not a {MODEL_NAME}: it has neither textual.token_embedding.weight nor "
        f"text_model.embeddings.token_embedding.weight. Select {EXPECTED_FILES}."
    )


def load_text_encoder(
    source: str | os.PathLike | Checkpoint,
    *,
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float32,
    operations=None,
    num_heads: int | None = None,
) -> CLIPTextEncoder:
    """Load the text tower from a path or an open `Checkpoint` into `dtype` on `device`.

    LayerNorm parameters stay fp32. The official pipeline runs this model in fp32 (the default).
    """
    ops = operations or TORCH_OPERATIONS
    return load_layout(
        lambda config: CLIPTextEncoder(config, ops),
        source,
        lambda checkpoint: infer_layout(checkpoint, num_heads),
        what=MODEL_NAME,
        device=device,
        dtype=dtype,
    )
