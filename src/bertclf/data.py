"""Stage 1 — data: read a labelled table (CSV, TSV, JSONL, Parquet), validate it, fingerprint it.

Every problem is raised as a one-line :class:`BertclfError` naming the file, the rows and the fix,
before any model is loaded, so a bad file fails in seconds.
"""

from __future__ import annotations

import csv
import hashlib
import json
import math
import os
import re
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from .errors import BertclfError

FORMATS = {".csv": "csv", ".tsv": "tsv", ".jsonl": "jsonl", ".ndjson": "jsonl", ".parquet": "parquet"}
TASKS = ("auto", "binary", "multiclass", "multilabel")
_SHOWN_ROWS = 10  # how many offending row numbers an error message lists


@dataclass
class Table:
    """A file read into memory, with the row numbers a user sees in an editor."""

    path: str
    frame: pd.DataFrame
    row_numbers: list[int]  # CSV/TSV: header is row 1; JSONL: line number; Parquet: 1-based row
    row_word: str  # "row" or "line", used in messages
    sha256: str = ""  # of the whole file; empty for a chunk of it

    def subset(self, keep: Sequence[bool]) -> Table:
        """The rows where ``keep`` is true, with their original row numbers."""
        numbers = [n for n, k in zip(self.row_numbers, keep) if k]
        return Table(self.path, self.frame[list(keep)].reset_index(drop=True), numbers, self.row_word, "")

    def where(self, positions: Sequence[int]) -> str:
        """Name rows (by position in the frame) the way the user will find them."""
        shown = ", ".join(str(self.row_numbers[p]) for p in positions[:_SHOWN_ROWS])
        more = f" and {len(positions) - _SHOWN_ROWS} more" if len(positions) > _SHOWN_ROWS else ""
        plural = "s" if len(positions) > 1 else ""
        note = " (the header is row 1)" if self.row_word == "row" and self.path_format in ("csv", "tsv") else ""
        return f"{self.path} {self.row_word}{plural} {shown}{more}{note}"

    @property
    def path_format(self) -> str:
        return FORMATS.get(Path(self.path).suffix.lower(), "")


@dataclass
class LabeledData:
    """Texts and their label names, plus where they came from (for the artifact's record)."""

    texts: list[str]
    labels: list  # str per row, or list[str] per row for multi-label
    source: dict = field(default_factory=dict)  # path, rows, sha256, dropped_empty


def file_format(path: str | os.PathLike) -> str:
    suffix = Path(path).suffix.lower()
    if suffix not in FORMATS:
        raise BertclfError(
            f"{path}: unknown file type '{suffix or '(none)'}'; use one of {', '.join(sorted(FORMATS))}"
        )
    return FORMATS[suffix]


def _not_utf8(path: str, line: int, byte: int) -> BertclfError:
    return BertclfError(
        f"{path} line {line}: byte 0x{byte:02X} is not valid UTF-8; re-save the file as UTF-8 (e.g. iconv -f latin1 -t utf-8)"
    )


def _decode_utf8(path: str, raw: bytes) -> str:
    try:
        return raw.decode("utf-8-sig")  # a BOM (Excel's habit) is valid UTF-8 and is dropped
    except UnicodeDecodeError as err:
        raise _not_utf8(path, raw[: err.start].count(b"\n") + 1, raw[err.start]) from None


def file_sha256(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def read_table(path: str | os.PathLike) -> Table:
    """Read a whole supported file into a DataFrame of strings (lists kept for JSONL/Parquet labels)."""
    chunks = list(iter_tables(path, chunk_rows=1 << 20))
    frame = pd.concat([c.frame for c in chunks], ignore_index=True) if len(chunks) > 1 else chunks[0].frame
    rows = [n for c in chunks for n in c.row_numbers]
    return Table(str(path), frame, rows, chunks[0].row_word, file_sha256(str(path)))


def iter_tables(path: str | os.PathLike, chunk_rows: int = 4096) -> Iterator[Table]:
    """The file in chunks of at most ``chunk_rows`` rows, so memory stays flat whatever its size.

    Each chunk is checked as it is read; row numbers continue across chunks. Chunks carry no sha256.
    """
    path = str(path)
    fmt = file_format(path)
    if not os.path.exists(path):
        raise BertclfError(f"{path}: no such file; check the path")
    if os.path.isdir(path):
        raise BertclfError(f"{path}: is a directory, expected a {fmt.upper()} file")
    if os.path.getsize(path) == 0:
        raise BertclfError(f"{path}: the file is empty; it needs a header and at least one data row")
    if fmt == "jsonl":
        chunks = _iter_jsonl(path, chunk_rows)
    elif fmt == "parquet":
        chunks = _iter_parquet(path, chunk_rows)
    else:
        chunks = _iter_delimited(path, "," if fmt == "csv" else "\t", chunk_rows)
    rows = 0
    for frame, row_numbers, row_word in chunks:
        rows += len(frame)
        yield Table(path, frame.reset_index(drop=True), row_numbers, row_word, "")
    if rows == 0:
        raise BertclfError(f"{path}: no data rows, only a header; add labelled rows")


def _iter_delimited(path: str, sep: str, chunk_rows: int) -> Iterator[tuple[pd.DataFrame, list[int], str]]:
    kind = "CSV" if sep == "," else "TSV"
    try:
        with open(path, encoding="utf-8-sig", newline="") as fh:  # a BOM (Excel's habit) is valid UTF-8, dropped
            header = next(csv.reader(fh, delimiter=sep), [])
            duplicated = sorted({name for name in header if header.count(name) > 1})
            if duplicated:
                raise BertclfError(f"{path} row 1: duplicate column name(s) {duplicated}; rename them so each is unique")
            fh.seek(0)
            first = 0
            # keep_default_na=False: the text "NA" or "null" is a text, not a missing value.
            for frame in pd.read_csv(fh, sep=sep, dtype=str, keep_default_na=False, na_filter=False, chunksize=chunk_rows):
                yield frame, [first + i + 2 for i in range(len(frame))], "row"
                first += len(frame)
    except UnicodeDecodeError:
        with open(path, "rb") as fh:
            _decode_utf8(path, fh.read())  # raises, naming the line
        raise
    except pd.errors.ParserError as err:
        message = str(err).strip().replace("\n", " ")
        unclosed = re.search(r"EOF inside string starting at row (\d+)", message)
        if unclosed:  # pandas counts lines from 0 here
            raise BertclfError(
                f"{path} line {int(unclosed.group(1)) + 1}: a quoted field starts here and is never closed; "
                'close the quote, or write a quote inside a quoted field as ""'
            ) from None
        raise BertclfError(
            f"{path}: malformed {kind} ({message}); quote fields that contain the separator, quotes or newlines"
        ) from None
    except pd.errors.EmptyDataError:
        raise BertclfError(f"{path}: the file is empty; it needs a header and at least one data row") from None


def _iter_jsonl(path: str, chunk_rows: int) -> Iterator[tuple[pd.DataFrame, list[int], str]]:
    records, numbers = [], []
    with open(path, "rb") as fh:
        for number, raw in enumerate(fh, start=1):
            try:
                line = raw.decode("utf-8-sig" if number == 1 else "utf-8")
            except UnicodeDecodeError as err:
                raise _not_utf8(path, number, raw[err.start]) from None
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as err:
                raise BertclfError(f"{path} line {number}: invalid JSON ({err.msg}); each line must be one JSON object") from None
            if not isinstance(record, dict):
                raise BertclfError(f"{path} line {number}: expected a JSON object like {{\"text\": ..., \"label\": ...}}")
            records.append(record)
            numbers.append(number)
            if len(records) >= chunk_rows:
                yield pd.DataFrame.from_records(records), numbers, "line"
                records, numbers = [], []
    if records:
        yield pd.DataFrame.from_records(records), numbers, "line"


def _iter_parquet(path: str, chunk_rows: int) -> Iterator[tuple[pd.DataFrame, list[int], str]]:
    import pyarrow.parquet as pq

    try:
        batches = pq.ParquetFile(path).iter_batches(batch_size=chunk_rows)
        first = 0
        for batch in batches:
            frame = batch.to_pandas()
            yield frame, [first + i + 1 for i in range(len(frame))], "row"
            first += len(frame)
    except (OSError, ValueError) as err:  # pyarrow's ArrowInvalid is a ValueError, ArrowIOError an OSError
        raise BertclfError(f"{path}: not a readable Parquet file ({err}); re-export it") from None


def _missing(value) -> bool:
    if value is None:
        return True
    if isinstance(value, float) and math.isnan(value):
        return True
    return isinstance(value, str) and not value.strip()


def require_column(table: Table, column: str, role: str, flag: str) -> None:
    if column not in table.frame.columns:
        found = ", ".join(repr(c) for c in table.frame.columns)
        raise BertclfError(
            f"{table.path}: no {role} column '{column}' (columns found: {found}); pass {flag} NAME"
        )


def read_texts(table: Table, text_column: str, empty: str = "error") -> tuple[list[str], list[int]]:
    """The text column as strings, and the frame positions kept.

    ``empty`` says what an empty text does: "error" (name the rows), "drop" (the user asked with
    --drop-empty) or "keep" (prediction: one output per input row, the text scored as "").
    """
    require_column(table, text_column, "text", "--text-column")
    values = table.frame[text_column].tolist()
    not_strings = [i for i, v in enumerate(values) if not _missing(v) and not isinstance(v, str)]
    if not_strings:
        raise BertclfError(f"{table.where(not_strings)}: text is not a string; quote it or convert it to text")
    blank = [i for i, v in enumerate(values) if _missing(v)]
    if blank and empty == "error":
        raise BertclfError(
            f"{table.where(blank)}: empty text; fill or remove these rows, or pass --drop-empty to skip them"
        )
    if empty == "keep":
        return ["" if _missing(v) else v for v in values], list(range(len(values)))
    blank_positions = set(blank)
    keep = [i for i in range(len(values)) if i not in blank_positions]
    if not keep:
        raise BertclfError(f"{table.path}: every text is empty; check --text-column")
    return [values[i] for i in keep], keep


def _raw_labels(table: Table, label_column: str, positions: list[int]) -> list:
    values = table.frame[label_column].tolist()
    # numpy scalars and arrays (from Parquet) become plain Python values and lists
    chosen = [values[i].tolist() if hasattr(values[i], "tolist") else values[i] for i in positions]
    missing = [p for p, v in zip(positions, chosen) if not isinstance(v, (list, tuple)) and _missing(v)]
    if missing:
        raise BertclfError(f"{table.where(missing)}: missing label; every row needs a label")
    numbers = [p for p, v in zip(positions, chosen) if not isinstance(v, (str, list, tuple))]
    if numbers and len(numbers) < len(chosen) and any(isinstance(v, str) for v in chosen):
        raise BertclfError(
            f"{table.where(numbers)}: label is a number here but a string elsewhere; use one type for all labels"
        )
    return chosen


def infer_task(raw_labels: Sequence, task: str, label_sep: str | None) -> str:
    """auto: lists or separator-joined strings mean multi-label; else 2 classes binary, more multiclass."""
    if task not in TASKS:
        raise BertclfError(f"unknown task '{task}'; use one of {', '.join(TASKS)}")
    if task != "auto":
        return task
    if any(isinstance(v, (list, tuple)) or (label_sep is not None and isinstance(v, str) and label_sep in v) for v in raw_labels):
        return "multilabel"
    return "binary" if len({str(v).strip() for v in raw_labels}) <= 2 else "multiclass"


def normalize_labels(table: Table, raw_labels: Sequence, positions: list[int], multilabel: bool, label_sep: str) -> list:
    """Label names as stripped strings, or lists of them for multi-label."""
    if not multilabel:
        lists = [p for p, v in zip(positions, raw_labels) if isinstance(v, (list, tuple))]
        if lists:
            raise BertclfError(f"{table.where(lists)}: a list of labels in a single-label task; pass --task multilabel")
        return [str(v).strip() for v in raw_labels]
    out, bad = [], []
    for p, v in zip(positions, raw_labels):
        parts = [str(x).strip() for x in v] if isinstance(v, (list, tuple)) else str(v).split(label_sep)
        parts = [x.strip() for x in parts]
        if not parts or any(not x for x in parts):
            bad.append(p)
        out.append(sorted(set(parts)))
    if bad:
        raise BertclfError(
            f"{table.where(bad)}: empty label in a multi-label row (e.g. 'a{label_sep}{label_sep}b' or an empty list); "
            f"remove the stray '{label_sep}' or give the row at least one label"
        )
    return out


def load_labeled(
    path: str | os.PathLike,
    text_column: str = "text",
    label_column: str = "label",
    drop_empty: bool = False,
) -> tuple[Table, list[str], list, list[int]]:
    """Read texts and raw label values (not yet split or typed: that needs the task)."""
    table = read_table(path)
    if label_column == "label" and "label" not in table.frame.columns and "labels" in table.frame.columns:
        label_column = "labels"  # the multi-label convention (e.g. GoEmotions)
    require_column(table, label_column, "label", "--label-column")
    texts, positions = read_texts(table, text_column, "drop" if drop_empty else "error")
    raw = _raw_labels(table, label_column, positions)
    return table, texts, raw, positions


def read_unlabeled(path: str | os.PathLike, text_column: str = "text", drop_empty: bool = False) -> LabeledData:
    """Texts without labels (distillation's transfer set): the text column only; ``labels`` stays empty."""
    table = read_table(path)
    texts, _ = read_texts(table, text_column, "drop" if drop_empty else "error")
    return LabeledData(texts, [], _source(table, len(texts)))


def _source(table: Table, rows: int) -> dict:
    """Where a split's ``rows`` texts came from, as the artifact records it."""
    return {"path": os.path.abspath(table.path), "rows": rows, "sha256": table.sha256, "dropped_empty": len(table.frame) - rows}


def read_labeled(
    path: str | os.PathLike,
    *,
    text_column: str = "text",
    label_column: str = "label",
    task: str = "auto",
    label_sep: str = "|",
    drop_empty: bool = False,
) -> tuple[LabeledData, str]:
    """Read a labelled file and return the data and its resolved task."""
    table, texts, raw, positions = load_labeled(path, text_column, label_column, drop_empty)
    resolved = infer_task(raw, task, label_sep)
    labels = normalize_labels(table, raw, positions, resolved == "multilabel", label_sep)
    return LabeledData(texts, labels, _source(table, len(texts))), resolved


def class_names(labels: Sequence, multilabel: bool) -> list[str]:
    """Sorted label names (scikit-learn's convention), so the order never depends on row order."""
    names = {name for row in labels for name in row} if multilabel else set(labels)
    return sorted(names)


def check_classes(labels: Sequence, multilabel: bool, where: str) -> list[str]:
    classes = class_names(labels, multilabel)
    if len(classes) < 2:
        raise BertclfError(
            f"{where}: only one class ({classes[0]!r}) in the training labels; a classifier needs at least two"
        )
    if len(classes) > 100 and len(classes) > len(labels) / 2:
        raise BertclfError(
            f"{where}: {len(classes)} distinct labels in {len(labels)} rows, so most classes have one example; "
            "this looks like a text or id column: check --label-column"
        )
    return classes


def read_splits(
    train_file: str, dev_file: str | None = None, test_file: str | None = None, *, task: str = "auto", **options
) -> tuple[dict[str, LabeledData], str, list[str]]:
    """Read and cross-check train/dev/test: the task comes from train; dev/test labels must occur in train."""
    train, task = read_labeled(train_file, task=task, **options)
    multilabel = task == "multilabel"
    classes = check_classes(train.labels, multilabel, train_file)
    splits = {"train": train}
    for name, path in (("dev", dev_file), ("test", test_file)):
        if path:
            splits[name], _ = read_labeled(path, task=task, **options)
            check_known_labels(splits[name].labels, multilabel, classes, path)
    return splits, task, classes


def check_known_labels(labels: Sequence, multilabel: bool, classes: Sequence[str], where: str) -> None:
    """Refuse labels the model never saw (the HF example script silently adds them)."""
    unseen = sorted(set(class_names(labels, multilabel)) - set(classes))
    if unseen:
        shown = ", ".join(repr(u) for u in unseen[:_SHOWN_ROWS])
        raise BertclfError(
            f"{where}: label(s) {shown} never occur in the training data; "
            "fix the labels or add training examples of them"
        )


def label_counts(labels: Sequence, multilabel: bool) -> Counter:
    return Counter(name for row in labels for name in row) if multilabel else Counter(labels)


def imbalance(counts: Counter) -> float:
    """Texts of the largest class over texts of the smallest (1.0 = balanced)."""
    return max(counts.values()) / min(counts.values())


def content_sha256(texts: Sequence[str], labels: Sequence | None = None) -> str:
    """Fingerprint of in-memory data, for runs that did not come from a file."""
    digest = hashlib.sha256()
    for i, text in enumerate(texts):
        digest.update(text.encode("utf-8") + b"\x00")
        if labels is not None:
            digest.update(json.dumps(labels[i], ensure_ascii=False).encode("utf-8") + b"\x01")
    return digest.hexdigest()
