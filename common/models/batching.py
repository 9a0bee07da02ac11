"""Which essays share a batch: essays of similar length together, which is what makes the dynamic padding of
`common.models.tokenization.EssayCollator` pay off.

- `LengthGroupedSampler` (training): every essay once per epoch, shuffled within mega-batches sorted by length.
- `batches_by_token_budget` (inference, and training with `batch_tokens`): batches of at most a token budget.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import numpy as np
import torch


class LengthGroupedSampler(torch.utils.data.Sampler[int]):
    """Every index once per epoch, in an order where consecutive `batch_size` runs have similar lengths.

    With shuffle: the indices are shuffled, cut into mega-batches of `batch_size * mega_batch_mult`,
    each sorted by length (longest first) and cut into batches; the batches are shuffled, except that
    the batch holding the longest essay comes first (an out-of-memory error shows at the first step)
    and the one short batch, if any, comes last (so that cutting the order into `batch_size` runs gives
    exactly these batches). The order is a function of (seed, epoch): call `set_epoch` each epoch.
    Without shuffle: every index by length, longest first (evaluation, inference).
    """

    def __init__(self, lengths: Sequence[int], batch_size: int, seed: int, shuffle: bool = True,
                 mega_batch_mult: int = 50):
        if batch_size < 1 or mega_batch_mult < 1:
            raise ValueError(f"batch_size and mega_batch_mult must be >= 1, got {batch_size}, {mega_batch_mult}")
        if seed < 0:
            raise ValueError(f"seed must be >= 0, got {seed}")
        self.lengths = np.asarray(lengths, dtype=np.int64)
        self.batch_size = batch_size
        self.seed = seed
        self.shuffle = shuffle
        self.mega_batch_mult = mega_batch_mult
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.lengths)

    def __iter__(self) -> Iterator[int]:
        return iter(self.order().tolist())

    def order(self) -> np.ndarray:
        """This epoch's order of the indices (what iterating gives)."""
        by_length = np.argsort(-self.lengths, kind="stable")
        if not self.shuffle or len(self.lengths) == 0:
            return by_length
        rng = np.random.default_rng([self.seed, self.epoch])
        shuffled = rng.permutation(len(self.lengths))
        mega = self.batch_size * self.mega_batch_mult
        batches = []
        for start in range(0, len(shuffled), mega):
            chunk = shuffled[start : start + mega]
            chunk = chunk[np.argsort(-self.lengths[chunk], kind="stable")]
            batches.extend(chunk[i : i + self.batch_size] for i in range(0, len(chunk), self.batch_size))
        short = [batches.pop()] if len(batches[-1]) < self.batch_size else []
        batches = [batches[i] for i in rng.permutation(len(batches))] + short
        first = next(i for i, b in enumerate(batches) if by_length[0] in b)
        if not short or first < len(batches) - 1:
            batches[0], batches[first] = batches[first], batches[0]
        return np.concatenate(batches)


def batches_by_token_budget(lengths: Sequence[int], max_tokens: int) -> list[list[int]]:
    """Inference batches, longest essays first, each with batch size x longest length <= max_tokens.

    An essay longer than `max_tokens` gets a batch of its own. Every index appears exactly once.
    """
    if max_tokens < 1:
        raise ValueError(f"max_tokens must be >= 1, got {max_tokens}")
    lengths = np.asarray(lengths, dtype=np.int64)
    batches: list[list[int]] = []
    current: list[int] = []
    longest = 0
    for i in np.argsort(-lengths, kind="stable").tolist():
        if current and (len(current) + 1) * longest > max_tokens:
            batches.append(current)
            current = []
        if not current:
            longest = int(lengths[i])
        current.append(i)
    if current:
        batches.append(current)
    return batches
