"""Stage 6 — the artifact: a ``save_pretrained`` directory plus ``bertclf.json``, written atomically.

The directory loads unchanged in ``transformers.pipeline("text-classification", model=DIR)``.
It is built under a temporary name beside the target and renamed into place at the end, so an
interrupted run never leaves half an artifact.
"""

from __future__ import annotations

import contextlib
import json
import os
import platform
import shutil
import tempfile
from collections.abc import Iterator

from .errors import BertclfError

RECORD_FILE = "bertclf.json"
FORMAT_VERSION = 1


def check_output_free(output: str, overwrite: bool) -> None:
    """Fail before any work when the output exists (unless ``overwrite``) or its parent is unusable."""
    if os.path.exists(output) and not overwrite:
        raise BertclfError(f"{output}: output directory already exists; pass --overwrite or choose another --output")
    if os.path.exists(output) and not os.path.isdir(output):
        raise BertclfError(f"{output}: exists and is not a directory; choose another --output")
    parent = os.path.dirname(os.path.abspath(output))
    while not os.path.exists(parent):  # missing parents are created at save time; the nearest existing one counts
        parent = os.path.dirname(parent)
    if not os.path.isdir(parent):
        raise BertclfError(f"{parent}: is a file, so --output cannot be created under it; choose another --output")
    try:  # a real probe: os.access says yes to root even on read-only or special filesystems
        os.rmdir(tempfile.mkdtemp(prefix=".bertclf-probe-", dir=parent))
    except OSError as err:
        raise BertclfError(f"{parent}: cannot create files there ({err.strerror}); choose another --output") from None


@contextlib.contextmanager
def atomic_directory(output: str, overwrite: bool = False) -> Iterator[str]:
    """Yield a temporary directory that replaces ``output`` only if the block completes."""
    output = os.path.abspath(output)
    check_output_free(output, overwrite)
    parent, name = os.path.split(output)
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=f".{name}.tmp-", dir=parent)
    try:
        yield tmp
        if os.path.exists(output):
            old = tempfile.mkdtemp(prefix=f".{name}.old-", dir=parent)
            os.rename(output, os.path.join(old, name))
            os.rename(tmp, output)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.rename(tmp, output)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def atomic_write_text(path: str, text: str) -> None:
    """Write a file under a temporary name and rename it, so readers never see half of it."""
    directory = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", dir=directory)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def library_versions() -> dict[str, str]:
    import accelerate
    import tokenizers
    import torch
    import transformers

    from . import __version__

    return {
        "bertclf": __version__,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "tokenizers": tokenizers.__version__,
        "accelerate": accelerate.__version__,
    }


def write(directory: str, model, tokenizer, record: dict) -> None:
    """Fill ``directory`` (normally from :func:`atomic_directory`) with weights, tokenizer and record."""
    model.save_pretrained(directory, safe_serialization=True)
    tokenizer.save_pretrained(directory)
    record = {"format_version": FORMAT_VERSION, **record, "versions": library_versions()}
    with open(os.path.join(directory, RECORD_FILE), "w", encoding="utf-8") as fh:
        json.dump(record, fh, indent=2, ensure_ascii=False)
        fh.write("\n")


def read_record(directory: str) -> dict:
    path = os.path.join(directory, RECORD_FILE)
    if not os.path.isdir(directory):
        raise BertclfError(f"{directory}: no such model directory; pass the --output of a 'bertclf train' run")
    if not os.path.isfile(path):
        raise BertclfError(f"{directory}: not a bertclf model (no {RECORD_FILE}); pass the --output of a 'bertclf train' run")
    try:
        with open(path, encoding="utf-8") as fh:
            return json.load(fh)
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise BertclfError(f"{path}: damaged model record ({err}); retrain or restore the file") from None
