"""Tokenisation cache: tokenising a train file vs reading its ids back from bertclf's cache (same process).

    python bench/tokenise_cache.py
Prints one line per dataset; the ids read back must equal the tokenizer's.
"""

from __future__ import annotations

import os
import tempfile
import time

import pandas as pd

from common import DATASETS

os.environ["BERTCLF_CACHE"] = tempfile.mkdtemp()  # a fresh cache, not the user's
from transformers import AutoTokenizer  # noqa: E402

from bertclf.batching import encode  # noqa: E402
from bertclf.modeling import resolve_model  # noqa: E402

tok = AutoTokenizer.from_pretrained(resolve_model(None))
for name, ml in (("imdb", 512), ("sst2_sentences", 256), ("goemotions", 256)):
    texts = pd.read_csv(DATASETS / name / "train.csv", dtype=str, keep_default_na=False)["text"].tolist()
    t = time.perf_counter(); a = encode(tok, texts, ml, cache=False); plain = time.perf_counter() - t
    t = time.perf_counter(); encode(tok, texts, ml, cache=True); store = time.perf_counter() - t
    t = time.perf_counter(); b = encode(tok, texts, ml, cache=True); load = time.perf_counter() - t
    assert a == b
    print(f"{name}: {len(texts)} texts, tokenise {plain:.2f} s, tokenise+store {store:.2f} s, read back {load:.2f} s ({plain / load:.1f}x)")
