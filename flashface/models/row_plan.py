"""The rows of a UNet call as the caller laid them out, and computing identical rows once.

A sampler's call stacks branches (``[pos + references | pos | neg]``, B samples each): the
rows of one sample have the same latent, face-position mask and timestep, and the two positive
branches the same text. The caller knows this and says it in a `RowPlan`; the UNet then computes
each row once for as long as it is identical to others (`RowSpaces`). Nothing is compared and
no value is read back from the device: rows are picked by slicing (`take_rows`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from ..errors import ContractError

# The row spaces of a main pass, coarsest first: rows with the same input (latent, mask,
# timestep); with the same input and text; with the same input, text and reference weight;
# all rows.
INPUT, TEXT, WEIGHT, ROWS = range(4)


@dataclass(frozen=True)
class RowPlan:
    """For each row of a main-pass call: `samples[r]`, its sample (rows of one sample are given
    the same latent, face-position mask and timestep); `texts[r]`, its text (rows of one sample
    and text are given the same context); `weights[r]`, its reference weight (a host number)."""

    samples: tuple[int, ...]
    texts: tuple[int, ...]
    weights: tuple[float, ...]

    def __post_init__(self):
        if not len(self.samples) == len(self.texts) == len(self.weights):
            raise ContractError(
                f"A row plan needs a sample, a text and a weight for each row; got "
                f"{len(self.samples)}, {len(self.texts)} and {len(self.weights)}."
            )
        if not all(math.isfinite(weight) for weight in self.weights):
            raise ContractError(f"Reference weights must be finite numbers, got {list(self.weights)}.")

    @classmethod
    def unshared(cls, weights: Sequence[float]) -> RowPlan:
        """Rows that may all differ, with these reference weights."""
        rows = tuple(range(len(weights)))
        return cls(rows, rows, tuple(float(weight) for weight in weights))

    @classmethod
    def of_chunks(cls, chunk_texts: Sequence[int], batch: int, weights: Sequence[float]) -> RowPlan:
        """Rows stacked chunk after chunk, `batch` each: row b of every chunk is sample b, and
        chunks with equal entries in `chunk_texts` have the same text."""
        return cls(
            tuple(sample for _ in chunk_texts for sample in range(batch)),
            tuple(text for text in chunk_texts for _ in range(batch)),
            tuple(float(weight) for weight in weights),
        )

    @property
    def rows(self) -> int:
        return len(self.weights)


def take_rows(tensor: torch.Tensor, indices: Sequence[int]) -> torch.Tensor:
    """``tensor[indices]`` for host indices, as slices of runs of consecutive rows (joined when
    there are several): no index tensor, so nothing goes to the device."""
    if list(indices) == list(range(tensor.shape[0])):
        return tensor
    runs: list[list[int]] = []
    for index in indices:
        if runs and runs[-1][1] == index:
            runs[-1][1] += 1
        else:
            runs.append([index, index + 1])
    pieces = [tensor[start:stop] for start, stop in runs]
    return pieces[0] if len(pieces) == 1 else torch.cat(pieces)


def _groups(keys: Sequence) -> tuple[list[int], list[int]]:
    """(group of each key, first position of each group), groups in order of first appearance."""
    first: dict = {}
    group_of = [first.setdefault(key, len(first)) for key in keys]
    representatives = [0] * len(first)
    for position, group in reversed(list(enumerate(group_of))):
        representatives[group] = position
    return group_of, representatives


class RowSpaces:
    """Which rows of a call are computed as one, space by space (INPUT, TEXT, WEIGHT, ROWS).

    Up to the first cross-attention a row depends on its input alone (space INPUT: one row per
    sample); the encoder never reads references, so up to the first reference attention on its
    input and text (TEXT); from there on on its reference weight too (WEIGHT); ROWS are the rows
    asked for. Tensors move to a finer space by taking rows (`expand`).
    """

    def __init__(self, plan: RowPlan):
        keys = (
            plan.samples,
            list(zip(plan.samples, plan.texts)),
            list(zip(plan.samples, plan.texts, plan.weights)),
            range(plan.rows),
        )
        grouped = [_groups(list(space_keys)) for space_keys in keys]
        self.weights = plan.weights
        self.first_rows = [first for _, first in grouped]
        # for each row of a finer space, its row in the next coarser one
        self._coarser = [[grouped[space][0][row] for row in grouped[space + 1][1]] for space in range(ROWS)]

    def representatives(self, space: int) -> list[int]:
        """For each row of `space`, one row of the call it stands for."""
        return self.first_rows[space]

    def weights_of(self, space: int) -> list[float]:
        """The reference weight of each row of `space` (equal for the rows it stands for from WEIGHT on)."""
        return [self.weights[row] for row in self.first_rows[space]]

    def expand(self, tensor: torch.Tensor, from_space: int, to_space: int) -> torch.Tensor:
        for space in range(from_space, to_space):
            tensor = take_rows(tensor, self._coarser[space])
        return tensor
