"""Stage 2 — tokenise once, then batch by length so padding costs almost nothing.

Training batches are length-grouped inside shuffled windows and the batches themselves are shuffled,
so training stays stochastic while each batch is padded only to its own longest text. Inference
batches are sorted by length and cut by a token budget; callers restore the input order.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import tokenizers
import torch
from torch.utils.data import Sampler

from .errors import BertclfError


@dataclass
class Encoded:
    """Token ids per row (with the tokenizer's own special tokens) and how many texts exceeded the length limit.

    ``text_of``: where long texts were split into overlapping windows (:func:`encode` with ``overlap``), the
    position of each row's text; None when each row is one whole (or truncated) text.
    """

    input_ids: list[list[int]]
    truncated: int
    text_of: np.ndarray | None = None

    @property
    def lengths(self) -> list[int]:
        return [len(ids) for ids in self.input_ids]

    def pool(self, logits: np.ndarray) -> np.ndarray:
        """Per-text logits from per-row ones: the mean over each text's windows (as given without windows)."""
        if self.text_of is None:
            return logits
        texts = int(self.text_of.max()) + 1 if len(self.text_of) else 0
        sums = np.zeros((texts, logits.shape[1]), dtype=np.float64)
        np.add.at(sums, self.text_of, logits)
        return (sums / np.bincount(self.text_of, minlength=texts)[:, None]).astype(np.float32)


def encode(tokenizer, texts: Sequence[str], max_length: int, cache: bool = False, overlap: int | None = None,
           head: int | None = None) -> Encoded:
    """Tokenise every text once; padding happens per batch in :func:`collate`.

    A text longer than ``max_length`` tokens is truncated, or with ``overlap`` split into windows of
    ``max_length`` tokens (each with the special tokens) that share ``overlap`` tokens with the previous one,
    or with ``head`` cut to its first ``head`` tokens and as many of its last as fill ``max_length`` (reviews
    often close on their verdict; Sun et al. 2019 kept 128 + 382 of IMDB's reviews).
    ``cache``: keep the ids on disk under the texts' and tokenizer's fingerprint (see :func:`cache_dir`), so a
    rerun on the same data, and every trial of a tuning study, reads them back instead of tokenising again.
    """
    if overlap is not None and head is not None:
        raise ValueError("pass overlap (windows) or head (head and tail), not both")
    path = _cache_path(tokenizer, texts, max_length, overlap, head) if cache else None
    stored = read_arrays(path, "ids", "offsets", "truncated", *(["text_of"] if overlap is not None else []))
    if stored:  # else absent or unreadable: tokenise again and replace it
        flat, offsets = stored["ids"].tolist(), stored["offsets"].tolist()
        return Encoded([flat[a:b] for a, b in zip(offsets[:-1], offsets[1:])], int(stored["truncated"]), stored.get("text_of"))
    if head is not None:
        ids, truncated = _head_and_tail(tokenizer, texts, max_length, head)
        if path:
            _store(path, ids, truncated, None)
        return Encoded(ids, truncated)
    if overlap is not None:
        _check_overflow_windows(tokenizer)
    windows = {"stride": overlap, "return_overflowing_tokens": True} if overlap is not None else {}
    enc = tokenizer(
        list(texts),
        truncation=True,
        max_length=max_length,
        return_attention_mask=False,
        return_token_type_ids=False,
        **windows,
    )
    ids = enc["input_ids"]
    text_of = np.asarray(enc["overflow_to_sample_mapping"], dtype=np.int64) if overlap is not None else None
    if text_of is not None:
        truncated = int((np.bincount(text_of, minlength=len(texts)) > 1).sum())
    elif enc.encodings is not None:  # fast tokenizers keep what truncation cut off
        truncated = sum(1 for e in enc.encodings if e.overflowing)
    else:
        truncated = sum(1 for row in ids if len(row) >= max_length)
    if path:
        _store(path, ids, truncated, text_of)
    return Encoded(ids, truncated, text_of)


def _head_and_tail(tokenizer, texts: Sequence[str], max_length: int, head: int) -> tuple[list[list[int]], int]:
    """Ids of each text with the tokenizer's special tokens, the middle of those over ``max_length`` cut out.

    The special tokens are found from the tokenizer's own mask (leading and trailing runs), so any model's
    template ([CLS] x [SEP], <s> x </s>, ...) keeps its shape."""
    enc = tokenizer(list(texts), truncation=False, return_special_tokens_mask=True, return_attention_mask=False,
                    return_token_type_ids=False, verbose=False)
    ids, truncated = [], 0
    for row, special in zip(enc["input_ids"], enc["special_tokens_mask"]):
        if len(row) <= max_length:
            ids.append(row)
            continue
        truncated += 1
        prefix = next(i for i, s in enumerate(special) if not s)
        suffix = next(i for i, s in enumerate(reversed(special)) if not s)
        keep_head = min(head, max_length - prefix - suffix)
        keep_tail = max_length - prefix - suffix - keep_head
        ids.append(row[:prefix + keep_head] + row[len(row) - suffix - keep_tail:])
    return ids, truncated


BROKEN_OVERFLOW = ("0.23.1", "0.23.2")  # tokenizers releases whose overflow yields only a text's first two windows


def _check_overflow_windows(tokenizer) -> None:
    """Refuse the tokenizers releases that drop windows: with 0.23.1 and 0.23.2 a 150-token text split into
    32-token windows comes back as 32 + 12 tokens, the rest silently lost (0.23.3 gives all six windows)."""
    if getattr(tokenizer, "is_fast", False) and tokenizers.__version__ in BROKEN_OVERFLOW:
        raise BertclfError(f"tokenizers {tokenizers.__version__} loses the windows of long texts after the second; "
                           "run: pip install -U 'tokenizers>=0.23.3'")


def cache_dir() -> str | None:
    """``$BERTCLF_CACHE`` (``off`` disables), else ``$XDG_CACHE_HOME/bertclf`` or ``~/.cache/bertclf``."""
    value = os.environ.get("BERTCLF_CACHE", "")
    if value.lower() in ("0", "off", "no", "false"):
        return None
    return value or os.path.join(os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "bertclf")


def _cache_path(tokenizer, texts: Sequence[str], max_length: int, overlap: int | None, head: int | None) -> str | None:
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:  # slow tokenizers have no serialisable definition to key on
        return None
    # Its truncation and padding settings change with each call's arguments (max_length is keyed below).
    definition = {k: v for k, v in json.loads(backend.to_str()).items() if k not in ("truncation", "padding")}
    key = hashlib.sha256(json.dumps(definition, sort_keys=True).encode())
    # The tokenizers release too: 0.23.1-0.23.2 cut windows short, and their entries must not outlive an upgrade.
    key.update(f"{tokenizers.__version__}|{type(tokenizer).__name__}|{tokenizer.truncation_side}|{max_length}|{overlap}|{head}|".encode())
    return cached_path("encoded", key, texts)


def cached_path(kind: str, key, texts: Sequence[str]) -> str | None:
    """Where the cache keeps a ``kind`` of array computed from ``texts``: ``key`` (a hashlib object holding
    whatever else the arrays depend on) is extended with the texts themselves. None when caching is off."""
    folder = cache_dir()
    if folder is None:
        return None
    key.update(f"{len(texts)}|".encode())
    for text in texts:
        key.update(text.encode("utf-8", "surrogatepass") + b"\0")
    return os.path.join(folder, kind, key.hexdigest() + ".npz")


def read_arrays(path: str | None, *names: str) -> dict[str, np.ndarray] | None:
    """The named arrays stored at ``path`` by :func:`store_arrays`, or None if any is missing or unreadable."""
    if not path or not os.path.isfile(path):
        return None
    try:
        with np.load(path) as stored:
            return {name: stored[name] for name in names}
    except (OSError, ValueError, KeyError):
        return None


def store_arrays(path: str | None, **arrays) -> None:
    """Write ``arrays`` to ``path`` atomically (a reader never sees half a file); quietly nothing on failure."""
    if not path:
        return
    tmp = None
    try:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=os.path.dirname(path), suffix=".tmp")
        with os.fdopen(fd, "wb") as out:
            np.savez(out, **arrays)
        os.replace(tmp, path)
    except OSError:  # a cache that cannot be written is no reason to stop; the arrays are in memory
        if tmp and os.path.exists(tmp):
            os.unlink(tmp)


def _store(path: str, ids: list[list[int]], truncated: int, text_of: np.ndarray | None) -> None:
    offsets = np.cumsum([0] + [len(row) for row in ids])
    flat = np.fromiter((t for row in ids for t in row), dtype=np.int32, count=int(offsets[-1]))
    store_arrays(path, ids=flat, offsets=offsets, truncated=truncated, **({"text_of": text_of} if text_of is not None else {}))


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

    ``max_tokens`` also caps each batch's padded tokens (rows × longest row): a batch of long texts is cut
    into smaller ones, which bounds the activations a step holds (peak memory follows the largest batch in
    tokens), while short texts still come ``batch_size`` to a batch. With a large ``batch_size`` this is pure
    token-budget batching. The number of batches then differs a little between epochs; :meth:`num_batches`
    tells the schedule in advance.
    """

    def __init__(self, lengths: Sequence[int], batch_size: int, seed: int, window_batches: int = 50,
                 num_replicas: int = 1, rank: int = 0, max_tokens: int | None = None):
        if len(lengths) < num_replicas:
            raise ValueError(f"{len(lengths)} training texts cannot be shared by {num_replicas} processes")
        self.lengths = np.asarray(lengths)
        self.batch_size = batch_size
        self.seed = seed
        self.window = batch_size * window_batches
        self.num_replicas, self.rank = num_replicas, rank
        self.max_tokens = max_tokens
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.num_batches(self.epoch)

    def num_batches(self, epoch: int) -> int:
        return len(self._global_batches(epoch))

    def __iter__(self) -> Iterator[list[int]]:
        for batch in self._global_batches(self.epoch):
            yield batch[self.rank :: self.num_replicas]

    def _global_batches(self, epoch: int) -> list[list[int]]:
        rng = np.random.default_rng([self.seed, epoch])
        order = rng.permutation(len(self.lengths))
        batches = []
        for start in range(0, len(order), self.window):
            window = order[start : start + self.window]
            if self.max_tokens:
                cut = [window[b].tolist() for b in token_budget_batches(self.lengths[window], self.max_tokens, self.batch_size)]
            else:
                window = window[np.argsort(-self.lengths[window], kind="stable")]
                cut = [window[i : i + self.batch_size].tolist() for i in range(0, len(window), self.batch_size)]
            if len(cut) > 1 and len(cut[-1]) < self.num_replicas:
                cut[-2] += cut.pop()
            batches += cut
        if len(batches) > 1 and len(batches[-1]) < self.num_replicas:  # a last window smaller than the process count
            batches[-2] += batches.pop()
        return [batches[b] for b in rng.permutation(len(batches))]


def default_batch_tokens(lengths: Sequence[int], batch_size: int, factor: float = 1.25) -> int:
    """The training batch cap when none is given: ``factor`` × the padded tokens of an average batch
    (``batch_size`` × the mean text length), and never below the longest text.

    Peak memory follows the largest batch in tokens. Uncapped, a batch of the longest texts holds several times
    the tokens of a typical one (on SST-2, 32 × 80 = 2,560 against 830 on average), so a few batches set the
    peak for the whole run; capped, they are cut in two and the peak follows the typical batch. 3-epoch SST-2
    fits here peaked at 1,664 MiB uncapped (93.3 samples/s), 1,411 at 1.5x (1,210 tokens; 75.8 samples/s) and
    1,369 at 1.25x (1,008; 85.7 samples/s): speeds within this machine's run-to-run spread.
    """
    return max(int(factor * batch_size * float(np.mean(lengths))), int(max(lengths)))


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
