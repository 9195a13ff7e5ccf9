"""FlashFace's reference attention: how a main-pass row reads the reference faces' tokens.

Every middle and decoder transformer block of the main pass adds, after its own self-attention,
``w_r * SA1(y_r, [y_r; references]) + (1 - w_r) * SA1(y_r)`` for row r with reference weight
w_r, where SA1 is the block's extra self-attention (``reference_attn``) and y_r its normed input.
The references are the tokens the reference pass recorded at the same block (`ReferenceFeatures`).

Computed as the formula reads, less the work that cannot change the result: SA1's projections of
a row's tokens serve both terms, the references are projected once for all rows, a row of
weight 0 gets SA1(y_r) alone, and a reference that stands several times (the official padding of
1-3 faces to four) is attended to once with the log of its count added to its logits: the same
softmax. The oracle that spells all of it out is in the tests (``tests/straightforward_unet.py``).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch

from .ops import host_to_device
from .row_plan import take_rows
from .unet_blocks import Attention


@dataclass(frozen=True)
class ReferenceFeatures:
    """Result of the reference pass: per transformer block key, tokens [N, L_ref, C] of the N
    references; how many times each stands (`copies`, None: each once); whose each is (`owners`,
    the person of each reference when there are several people, see `flashface.people`)."""

    tokens: Mapping[str, torch.Tensor]
    copies: tuple[int, ...] | None = None
    owners: tuple[int, ...] | None = None


def reference_bias(
    own_tokens: int, ref_tokens: int, copies: Sequence[int] | None, like: torch.Tensor
) -> torch.Tensor | None:
    """Additive logit bias [1, 1, 1, keys] that makes attending to each reference once the same as
    attending to all its copies (log of its count), or None when every count is 1."""
    if copies is None or all(count == 1 for count in copies):
        return None
    bias = torch.zeros(own_tokens + ref_tokens * len(copies), dtype=like.dtype, device=like.device)
    for index, count in enumerate(copies):
        start = own_tokens + index * ref_tokens
        bias[start : start + ref_tokens] = math.log(count)
    return bias.view(1, 1, 1, -1)


def reference_attention(
    sa1: Attention,
    y: torch.Tensor,
    references: torch.Tensor,
    weights: Sequence[float],
    copies: Sequence[int] | None = None,
    owners: Sequence[int] | None = None,
    positions: Sequence[torch.Tensor] | None = None,
) -> torch.Tensor:
    """Per row r of y [R, L, C]: w_r * SA1(y_r, [y_r; references]) + (1 - w_r) * SA1(y_r).

    `references` [N, L_ref, C] are shared by every row (flattened along the tokens, reference 1
    first), reference i standing `copies[i]` times. One person: every query attends to all
    references. Several people (`owners`: the person of each reference, `positions`: each
    person's token positions, on y's device): a query in person p's region attends to p's
    references alone, and a position in no region gets SA1(y_r). Each person's queries are
    gathered and attend once (no masked logits: the work of one person, fused kernels usable).
    """
    rows, own_tokens, width = y.shape
    count, ref_len, _ = references.shape
    q, k, v = sa1.to_q(y), sa1.to_k(y), sa1.to_v(y)
    plain = sa1.attend(q, k, v)
    active = [row for row, weight in enumerate(weights) if weight != 0]
    if not active:
        return plain
    q, k, v, plain_active = (take_rows(tensor, active) for tensor in (q, k, v, plain))
    # float32 first, as the weights of every call have always been (the same rounding in fp16)
    w = host_to_device(torch.tensor([weights[row] for row in active], dtype=torch.float32), y.device)
    w = w.to(y.dtype).view(-1, 1, 1)
    ref_tokens = references.reshape(1, -1, width)
    ref_k, ref_v = sa1.to_k(ref_tokens), sa1.to_v(ref_tokens)

    def attend_to(mine: list[int], queries: torch.Tensor) -> torch.Tensor:
        """The active rows' `queries` attending to their own tokens and references `mine`."""
        ref_keys, ref_values = (
            take_rows(ref.view(count, ref_len, -1), mine).reshape(1, -1, ref.shape[-1]) for ref in (ref_k, ref_v)
        )
        keys = torch.cat([k, ref_keys.expand(len(active), -1, -1)], 1)
        values = torch.cat([v, ref_values.expand(len(active), -1, -1)], 1)
        bias = reference_bias(own_tokens, ref_len, None if copies is None else [copies[i] for i in mine], y)
        return sa1.attend(queries, keys, values, bias)

    if positions is None or owners is None:
        mixed = attend_to(list(range(count)), q) * w + (1 - w) * plain_active
    else:
        mixed = plain_active.clone()
        for person, where in enumerate(positions):
            if len(where):
                mine = [index for index, owner in enumerate(owners) if owner == person]
                mixed[:, where] = attend_to(mine, q[:, where]) * w + (1 - w) * plain_active[:, where]
    if len(active) == rows:
        return mixed
    place = {row: rows + index for index, row in enumerate(active)}  # rows of [plain; mixed]
    return take_rows(torch.cat([plain, mixed]), [place.get(row, row) for row in range(rows)])
