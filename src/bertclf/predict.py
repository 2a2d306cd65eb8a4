"""Stage 7 — predict: batched inference in input order, and the output files that carry it."""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable, Sequence

import numpy as np
import pandas as pd
import torch

from .batching import Encoded, collate, token_budget_batches
from .errors import BertclfError
from .modeling import release_memory

MAX_BATCH_TOKENS = 4096  # padded tokens per forward pass: fills the cores; 16384 was slower and used more memory
MAX_BATCH_ROWS = 128
MAX_PADDING = 8  # pad tokens one row may get before a new batch starts; measured on mixed SST-2 batches:
# random 32-text batches of onnx-int8 ran 1.5-2x faster split this way than padded to their longest text


def batched_logits(
    encoded: Encoded, pad_id: int, forward: Callable[[dict[str, torch.Tensor]], np.ndarray], progress: bool = False,
    max_rows: int = MAX_BATCH_ROWS,
) -> np.ndarray:
    """Run ``forward`` on longest-first token-budget batches; return the logits in input order."""
    from tqdm.auto import tqdm

    out: np.ndarray | None = None
    batches = token_budget_batches(encoded.lengths, MAX_BATCH_TOKENS, max_rows, MAX_PADDING)
    for rows in tqdm(batches, desc="predict", disable=not progress, file=sys.stderr, leave=False):
        release_memory()
        logits = forward(collate([encoded.input_ids[i] for i in rows], pad_id))
        if out is None:
            out = np.empty((len(encoded.input_ids), logits.shape[1]), dtype=np.float32)
        out[rows] = logits
    return out if out is not None else np.empty((0, 0), dtype=np.float32)


def predict_logits(model: torch.nn.Module, encoded: Encoded, pad_id: int, progress: bool = False,
                   min_rows: int = 1) -> np.ndarray:
    """Logits of a torch model for every row, in input order (the model is left in the mode it was in).

    ``min_rows``: smaller batches are padded with copies of their rows (a compiled model specialises on a batch
    of one and would compile again for it)."""
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()

    def forward(batch: dict[str, torch.Tensor]) -> np.ndarray:
        rows = len(batch["input_ids"])
        copies = -(-min_rows // rows)
        inputs = {k: (v.repeat(copies, 1) if copies > 1 else v).to(device) for k, v in batch.items()}
        return model(**inputs).logits[:rows].float().cpu().numpy()

    with torch.inference_mode():
        out = batched_logits(encoded, pad_id, forward, progress)
    model.train(was_training)
    return out


def probabilities(logits: np.ndarray, multilabel: bool) -> np.ndarray:
    """Sigmoid per label for multi-label, softmax across classes otherwise (as the HF pipeline does)."""
    t = torch.from_numpy(logits)
    return (torch.sigmoid(t) if multilabel else torch.softmax(t, dim=-1)).numpy()


def decide(logits: np.ndarray, multilabel: bool, thresholds: Sequence[float] | None = None) -> np.ndarray:
    """Class ids (single-label) or a 0/1 indicator matrix (multi-label, per-label thresholds)."""
    if not multilabel:
        return logits.argmax(axis=1)
    cut = np.asarray(thresholds if thresholds is not None else [0.5] * logits.shape[1])
    return (probabilities(logits, True) >= cut).astype(int)


def output_format(path: str) -> str:
    suffix = os.path.splitext(path)[1].lower()
    formats = {".csv": "csv", ".tsv": "tsv", ".jsonl": "jsonl", ".ndjson": "jsonl", ".parquet": "parquet"}
    if suffix not in formats:
        raise BertclfError(f"{path}: unknown output type '{suffix or '(none)'}'; use .csv, .tsv, .jsonl or .parquet")
    return formats[suffix]


def prediction_frame(
    inputs: pd.DataFrame, probs: np.ndarray, predicted: list, classes: Sequence[str], top_k: int | None, flat: bool,
    label_sep: str = "|",
) -> pd.DataFrame:
    """The input columns, then ``predicted``, a ``prob_<class>`` column per class, and optional top-k.

    ``flat`` (CSV/TSV) joins multi-label predictions with ``label_sep`` and spreads top-k over columns.
    """
    frame = inputs.copy()
    multilabel = bool(predicted) and isinstance(predicted[0], list)
    frame["predicted"] = [label_sep.join(p) for p in predicted] if multilabel and flat else predicted
    for j, name in enumerate(classes):
        frame[f"prob_{name}"] = probs[:, j].astype(float)
    if top_k:
        order = np.argsort(-probs, axis=1, kind="stable")[:, :top_k]
        if flat:
            for r in range(order.shape[1]):
                frame[f"top{r + 1}_label"] = [classes[i] for i in order[:, r]]
                frame[f"top{r + 1}_prob"] = probs[np.arange(len(probs)), order[:, r]].astype(float)
        else:
            frame["top_k"] = [
                [{"label": classes[i], "score": float(probs[row, i])} for i in order[row]] for row in range(len(probs))
            ]
    return frame


class PredictionWriter:
    """Appends prediction frames to ``path`` (by extension) under a temporary name; renamed into place on success.

    ``None`` or '-' streams JSONL to stdout. Used as a context manager: an exception removes the partial file.
    """

    def __init__(self, path: str | None):
        self.path = None if path in (None, "-") else path
        self.format = output_format(path) if self.path else "jsonl"
        self.tmp = f"{self.path}.tmp-{os.getpid()}" if self.path else None
        self.handle = None
        self.parquet = None
        self.rows = 0

    def __enter__(self) -> PredictionWriter:
        if self.tmp and self.format != "parquet":
            self.handle = open(self.tmp, "w", encoding="utf-8", newline="")
        return self

    def write(self, frame: pd.DataFrame) -> None:
        if self.format == "parquet":
            import pyarrow as pa
            import pyarrow.parquet as pq

            table = pa.Table.from_pandas(frame, preserve_index=False)
            if self.parquet is None:
                self.parquet = pq.ParquetWriter(self.tmp, table.schema)
            self.parquet.write_table(table.cast(self.parquet.schema))
        elif self.format == "jsonl":
            out = self.handle or sys.stdout
            for record in frame.to_dict(orient="records"):
                out.write(json.dumps(record, ensure_ascii=False) + "\n")
        else:
            frame.to_csv(self.handle, index=False, header=self.rows == 0, sep="," if self.format == "csv" else "\t")
        self.rows += len(frame)

    def __exit__(self, kind, error, trace) -> None:
        if self.handle:
            self.handle.close()
        if self.parquet:
            self.parquet.close()
        if self.tmp and error is None:
            os.replace(self.tmp, self.path)
        elif self.tmp and os.path.exists(self.tmp):
            os.unlink(self.tmp)


# ----------------------------------------------------------------------------------------- shards
SHARD_COLUMN = "input_row"  # 0-based position of the row in the input file, written by 'predict --shard'


def parse_shard(spec: str) -> tuple[int, int]:
    """'I/N' → (I, N), 0-based like SLURM_ARRAY_TASK_ID with --array=0-(N-1)."""
    try:
        index, count = (int(part) for part in spec.split("/"))
    except ValueError:
        raise BertclfError(f"--shard {spec}: expected I/N, e.g. 0/4 for the first of 4 shards") from None
    if count < 1 or not 0 <= index < count:
        raise BertclfError(f"--shard {spec}: shards are numbered 0 to N-1 (e.g. 0/{max(count, 1)} … {max(count, 1) - 1}/{max(count, 1)})")
    return index, count


def merge_predictions(paths: Sequence[str], output: str, chunk_rows: int = 8192) -> int:
    """Join 'predict --shard I/N' outputs into input order, refusing gaps and overlaps; returns the row count.

    Shard i holds rows i, i+N, i+2N, … in order, so reading the same number of rows from every shard covers
    one contiguous run of input rows: the merge streams chunk by chunk and checks each run is complete.
    """
    from .data import iter_tables

    output_format(output)
    if len(set(map(os.path.abspath, paths))) != len(paths):
        raise BertclfError("the same shard file is listed twice; list each shard output once")
    readers = [iter_tables(path, chunk_rows) for path in paths]
    expected = 0
    with PredictionWriter(output) as writer:
        while chunks := [(path, table) for path, table in zip(paths, (next(r, None) for r in readers)) if table is not None]:
            for path, table in chunks:
                if SHARD_COLUMN not in table.frame.columns:
                    raise BertclfError(f"{path}: no {SHARD_COLUMN} column; is it the output of 'bertclf predict --shard I/N'?")
            frame = pd.concat([table.frame for _, table in chunks], ignore_index=True)
            rows = pd.to_numeric(frame[SHARD_COLUMN], errors="coerce").to_numpy()
            owner = np.concatenate([[path] * len(table.frame) for path, table in chunks])
            order = np.argsort(rows, kind="stable")
            rows, owner, frame = rows[order], owner[order], frame.iloc[order]
            _check_run(rows, owner, expected)
            expected += len(rows)
            writer.write(frame.drop(columns=SHARD_COLUMN).reset_index(drop=True))
    return expected


def _check_run(rows: np.ndarray, owner: np.ndarray, start: int) -> None:
    """``rows`` (sorted) must be exactly start, start+1, …; otherwise name the first gap or duplicate."""
    want = np.arange(start, start + len(rows))
    if np.array_equal(rows, want):
        return
    if np.isnan(rows).any():
        raise BertclfError(f"{owner[np.isnan(rows)][0]}: {SHARD_COLUMN} holds a value that is not a row number")
    repeated = np.flatnonzero(rows[1:] == rows[:-1])
    if repeated.size:
        i = repeated[0]
        raise BertclfError(f"input row {int(rows[i])} is in both {owner[i]} and {owner[i + 1]}: shards overlap; "
                           "list each shard once, all made with the same N")
    missing = int(want[np.flatnonzero(rows != want)[0]])
    raise BertclfError(f"input row {missing} is in none of the shard files: a shard is missing or incomplete; "
                       f"pass all N outputs of 'predict --shard I/N'")
