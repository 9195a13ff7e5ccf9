"""The FlashFace UNet computed as its formulas read: the oracle of the library's UNet.

Every row is computed on its own from start to end (no rows shared), every copy of a reference
is attended to (no merging by counts), attention is an explicit softmax, and both terms of the
reference attention are computed for every row, ``w * SA1(y, [y; refs]) + (1 - w) * SA1(y)``.
With several people a query's logits to other people's references are masked out. It walks the
library's modules (same weights, same layers) but none of its pass logic.
"""

import torch
import torch.nn.functional as F

from flashface.models.ops import at_least_fp32, norm_at_least_fp32, through_layers
from flashface.models.unet_blocks import ResBlock, Upsample, timestep_embedding
from flashface.models.unet_pass import SpatialTransformer
from flashface.people import NO_REGION


def explicit_attention(attention, x, context, allowed=None):
    """softmax(q k^T / sqrt(d)) v with `attention`'s projections; `allowed` [Lq, Lk] masks keys."""
    q, k, v = attention.to_q(x), attention.to_k(context), attention.to_v(context)
    b, lq, c = q.shape
    heads = attention.num_heads
    q, k, v = (t.reshape(b, -1, heads, c // heads).transpose(1, 2) for t in (q, k, v))
    scores = (q @ k.transpose(-1, -2)).to(at_least_fp32(q.dtype)) * (c // heads) ** -0.5
    if allowed is not None:
        scores = scores.masked_fill(~allowed, float("-inf"))
    out = scores.softmax(-1).to(v.dtype) @ v
    return attention.to_out(out.transpose(1, 2).reshape(b, lq, c))


def straightforward_reference_attention(sa1, y, references, weights, owners=None, labels=None):
    """Per row r: w_r * SA1(y_r, [y_r; every reference]) + (1 - w_r) * SA1(y_r). With several people
    (`owners` of the references, `labels` [L] the person of each query position, NO_REGION: none),
    each query attends to its own row's tokens and its person's references only."""
    rows, tokens, width = y.shape
    context = torch.cat([y, references.reshape(1, -1, width).expand(rows, -1, -1)], 1)
    plain = explicit_attention(sa1, y, y)
    w = torch.as_tensor(weights, dtype=torch.float32).to(y.dtype).view(rows, 1, 1)
    if owners is None:
        return w * explicit_attention(sa1, y, context) + (1 - w) * plain
    key_owner = torch.tensor([-2] * tokens + [owner for owner in owners for _ in range(references.shape[1])])
    out = plain.clone()
    for person in range(max(owners) + 1):
        allowed = (key_owner == -2) | (key_owner == person)
        with_refs = explicit_attention(sa1, y, context, allowed.expand(tokens, -1))
        where = labels == person
        out[:, where] = (w * with_refs + (1 - w) * plain)[:, where]
    assert torch.equal(out[:, labels == NO_REGION], plain[:, labels == NO_REGION])
    return out


def _spatial_transformer(layer, x, context, reference_site):
    _, c, h, w = x.shape
    tokens = layer.proj_in(norm_at_least_fp32(layer.norm, x)).flatten(2).transpose(1, 2)
    for block in layer.transformer_blocks:
        y = norm_at_least_fp32(block.norm1, tokens)
        tokens = tokens + explicit_attention(block.attn1, y, y)
        if block.feature_key is not None:
            tokens = tokens + reference_site(block, y, (h, w))
        tokens = tokens + explicit_attention(block.attn2, norm_at_least_fp32(block.norm2, tokens), context)
        tokens = tokens + block.ff(norm_at_least_fp32(block.norm3, tokens))
    return layer.proj_out(tokens.transpose(1, 2).reshape(-1, c, h, w)) + x


def _block(block, x, emb, context, reference_site, upsample_size=None):
    for layer in block:
        if isinstance(layer, ResBlock):
            x = layer(x, emb)
        elif isinstance(layer, SpatialTransformer):
            x = _spatial_transformer(layer, x, context, reference_site)
        elif isinstance(layer, Upsample):
            x = layer(x, upsample_size)
        else:
            x = layer(x)
    return x


def _through_blocks(model, x, emb, context, input_blocks, output_blocks, reference_site):
    skips = []
    for block in input_blocks:
        x = _block(block, x, emb, context, reference_site)
        skips.append(x)
    x = _block(model.middle_block, x, emb, context, reference_site)
    for block in output_blocks:
        x = torch.cat([x, skips.pop()], 1)
        x = _block(block, x, emb, context, reference_site, skips[-1].shape[-2:] if skips else None)
    return x


def _embedding(model, t, rows):
    t = torch.as_tensor(t).expand(rows) if torch.as_tensor(t).dim() == 0 else torch.as_tensor(t)
    return model.time_embed(timestep_embedding(t, model.config.dim).to(model.compute_dtype))


@torch.no_grad()
def reference_tokens(model, reference_latents, t, reference_context):
    """The reference pass on every reference as given: the normed tokens of each feature block."""
    recorded = {}

    def record(block, y, grid):
        recorded[block.feature_key] = y
        return 0

    dtype = model.compute_dtype
    _through_blocks(
        model,
        reference_latents.to(dtype),
        _embedding(model, t, len(reference_latents)),
        reference_context.to(dtype),
        model.reference_input_blocks,
        model.reference_output_blocks,
        record,
    )
    return recorded


@torch.no_grad()
def straightforward_eps(
    model, x, t, context, mask, reference_latents, reference_context, weights, owners=None, regions=None
):
    """The predicted noise of every row of a call, each reference copy given as its own latent."""
    rows, dtype = x.shape[0], model.compute_dtype
    tokens = reference_tokens(model, reference_latents, t if torch.as_tensor(t).dim() == 0 else t[0], reference_context)

    def read(block, y, grid):
        labels = None
        if regions is not None:
            labels = F.interpolate(regions[None, None].float(), size=grid, mode="nearest").flatten().long()
        return straightforward_reference_attention(
            block.reference_attn, y, tokens[block.feature_key], weights, owners, labels
        )

    inputs = torch.cat([x, (torch.zeros_like(x[:, :1]) if mask is None else mask[:, None].to(x.dtype))], 1)
    out = _through_blocks(
        model,
        inputs.to(dtype),
        _embedding(model, t, rows),
        context.to(dtype),
        model.input_blocks,
        model.output_blocks,
        read,
    )
    return through_layers(model.out, out).to(x.dtype)
