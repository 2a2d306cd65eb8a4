"""Stage 2 — tokenise once, then batch by length so padding costs almost nothing.

Training batches are length-grouped inside shuffled windows and the batches themselves are shuffled,
so training stays stochastic while each batch is padded only to its own longest text. Inference
batches are sorted by length and cut by a token budget; callers restore the input order.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch.utils.data import Sampler


@dataclass
class Encoded:
    """Token ids per text (with the tokenizer's own special tokens) and how many were cut short."""

    input_ids: list[list[int]]
    truncated: int

    @property
    def lengths(self) -> list[int]:
        return [len(ids) for ids in self.input_ids]


def encode(tokenizer, texts: Sequence[str], max_length: int) -> Encoded:
    """Tokenise every text once; padding happens per batch in :func:`collate`."""
    enc = tokenizer(
        list(texts),
        truncation=True,
        max_length=max_length,
        return_attention_mask=False,
        return_token_type_ids=False,
    )
    ids = enc["input_ids"]
    if enc.encodings is not None:  # fast tokenizers keep what truncation cut off
        truncated = sum(1 for e in enc.encodings if e.overflowing)
    else:
        truncated = sum(1 for row in ids if len(row) >= max_length)
    return Encoded(ids, truncated)


def collate(rows: Sequence[Sequence[int]], pad_id: int) -> dict[str, torch.Tensor]:
    """Pad to the longest row of this batch only."""
    width = max(len(r) for r in rows)
    input_ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    attention_mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, row in enumerate(rows):
        input_ids[i, : len(row)] = torch.tensor(row, dtype=torch.long)
        attention_mask[i, : len(row)] = 1
    return {"input_ids": input_ids, "attention_mask": attention_mask}


class Collator:
    """Builds a padded batch, its targets and the rows' positions from a list of row indices."""

    def __init__(self, encoded: Encoded, targets: torch.Tensor | None, pad_id: int):
        self.encoded = encoded
        self.targets = targets
        self.pad_id = pad_id

    def __call__(self, indices: list[int]) -> dict[str, torch.Tensor]:
        batch = collate([self.encoded.input_ids[i] for i in indices], self.pad_id)
        batch["index"] = torch.tensor(indices, dtype=torch.long)
        if self.targets is not None:
            batch["labels"] = self.targets[indices]
        return batch


class LengthGroupedBatches(Sampler[list[int]]):
    """Shuffled, length-grouped training batches; call :meth:`set_epoch` for a new order each epoch.

    ``batch_size`` is the global batch: with ``num_replicas`` processes every process draws the same seeded
    batches and takes rows ``rank::num_replicas`` of each, so one optimizer step sees the same texts however
    many processes share it. (accelerate's own sharding would drop the short batches that end each window.)
    A batch with fewer rows than processes is merged into its neighbour so that every process gets rows.
    (DDP averages the processes' mean losses, so where shares differ by a row its texts weigh a little more.)
    """

    def __init__(self, lengths: Sequence[int], batch_size: int, seed: int, window_batches: int = 50,
                 num_replicas: int = 1, rank: int = 0):
        if len(lengths) < num_replicas:
            raise ValueError(f"{len(lengths)} training texts cannot be shared by {num_replicas} processes")
        self.lengths = np.asarray(lengths)
        self.batch_size = batch_size
        self.seed = seed
        self.window = batch_size * window_batches
        self.num_replicas, self.rank = num_replicas, rank
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self._global_batches())

    def __iter__(self) -> Iterator[list[int]]:
        for batch in self._global_batches():
            yield batch[self.rank :: self.num_replicas]

    def _global_batches(self) -> list[list[int]]:
        rng = np.random.default_rng([self.seed, self.epoch])
        order = rng.permutation(len(self.lengths))
        batches = []
        for start in range(0, len(order), self.window):
            window = order[start : start + self.window]
            window = window[np.argsort(-self.lengths[window], kind="stable")]
            cut = [window[i : i + self.batch_size].tolist() for i in range(0, len(window), self.batch_size)]
            if len(cut) > 1 and len(cut[-1]) < self.num_replicas:
                cut[-2] += cut.pop()
            batches += cut
        if len(batches) > 1 and len(batches[-1]) < self.num_replicas:  # a last window smaller than the process count
            batches[-2] += batches.pop()
        return [batches[b] for b in rng.permutation(len(batches))]


def token_budget_batches(
    lengths: Sequence[int], max_tokens: int, max_batch: int, max_padding: int | None = None
) -> list[list[int]]:
    """Longest-first batches whose padded size (rows × longest row) stays within ``max_tokens``.

    ``max_padding`` also starts a new batch when a row would get more pad tokens than that: for a mix of
    lengths (a server's batch of unrelated requests) padding otherwise costs more than one more forward call.
    """
    order = np.argsort(-np.asarray(lengths), kind="stable").tolist()
    batches: list[list[int]] = []
    current: list[int] = []
    for i in order:
        width = lengths[current[0]] if current else lengths[i]
        too_padded = max_padding is not None and width - lengths[i] > max_padding
        if current and (len(current) + 1 > max_batch or (len(current) + 1) * width > max_tokens or too_padded):
            batches.append(current)
            current = []
        current.append(i)
    if current:
        batches.append(current)
    return batches
