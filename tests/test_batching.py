"""Length-grouped training batches and token-budget inference batches."""

from __future__ import annotations

import numpy as np
import pytest

from bertclf.batching import LengthGroupedBatches, collate, default_batch_tokens, encode, token_budget_batches


def lengths(n=1000, seed=0):
    return np.random.default_rng(seed).integers(3, 120, size=n).tolist()


def test_training_batches_cover_every_row_once_and_group_lengths():
    lens = lengths()
    sampler = LengthGroupedBatches(lens, batch_size=32, seed=1, window_batches=10)
    batches = list(sampler)
    assert len(batches) == len(sampler) == 32  # ceil(1000 / 32)
    assert sorted(i for b in batches for i in b) == list(range(1000))
    padded = sum(len(b) * max(lens[i] for i in b) for b in batches)
    random_order = np.random.default_rng(0).permutation(1000)
    padded_random = sum(32 * max(lens[i] for i in random_order[s:s + 32]) for s in range(0, 1000, 32))
    assert padded < 0.75 * padded_random  # grouping must cut padding substantially


def test_training_order_is_seeded_and_changes_per_epoch():
    a, b = LengthGroupedBatches(lengths(), 16, seed=7), LengthGroupedBatches(lengths(), 16, seed=7)
    assert list(a) == list(b)
    first = list(a)
    a.set_epoch(1)
    assert list(a) != first


def test_token_budget_batches_respect_the_budget_and_cover_all():
    lens = lengths(500)
    batches = token_budget_batches(lens, max_tokens=2048, max_batch=64)
    assert sorted(i for b in batches for i in b) == list(range(500))
    for batch in batches:
        assert len(batch) <= 64
        assert len(batch) == 1 or len(batch) * max(lens[i] for i in batch) <= 2048


def test_token_budget_batches_bound_padding_per_row():
    lens = lengths(300)
    batches = token_budget_batches(lens, max_tokens=100_000, max_batch=1000, max_padding=8)
    assert sorted(i for b in batches for i in b) == list(range(300))
    assert all(max(lens[i] for i in b) - lens[i] <= 8 for b in batches for i in b)
    assert len(batches) < len(set(lens))  # rows of near lengths still share a batch


def test_collate_pads_to_the_longest_row_only():
    batch = collate([[101, 5, 102], [101, 102]], pad_id=0)
    assert batch["input_ids"].tolist() == [[101, 5, 102], [101, 102, 0]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1], [1, 1, 0]]


def test_token_budget_training_batches_cover_every_row_and_keep_the_budget():
    lens = lengths()
    sampler = LengthGroupedBatches(lens, batch_size=64, seed=3, max_tokens=1024)
    for epoch in (1, 2, 3):
        sampler.set_epoch(epoch)
        batches = list(sampler)
        assert len(batches) == sampler.num_batches(epoch)
        assert sorted(i for b in batches for i in b) == list(range(1000))
        assert all(len(b) * max(lens[i] for i in b) <= 1024 and len(b) <= 64 for b in batches)
    sizes = [len(b) for b in batches]
    assert max(sizes) > 2 * min(sizes)  # short texts come many to a batch, long ones few


def test_token_budget_training_batches_shard_across_processes():
    lens = lengths(301)
    whole = list(LengthGroupedBatches(lens, 32, seed=5, max_tokens=900))
    shares = [list(LengthGroupedBatches(lens, 32, seed=5, max_tokens=900, num_replicas=2, rank=r)) for r in (0, 1)]
    for batch, first, second in zip(whole, *shares):
        assert sorted(first + second) == sorted(batch) and first and second


def test_default_training_cap_follows_the_average_batch_and_cuts_only_the_longest():
    lens = [20] * 950 + [100] * 50  # a few long texts, as in real data
    cap = default_batch_tokens(lens, batch_size=32)
    assert cap == int(1.25 * 32 * 24)  # mean length 24
    sampler = LengthGroupedBatches(lens, batch_size=32, seed=1, max_tokens=cap)
    batches = list(sampler)
    assert max(len(b) * max(lens[i] for i in b) for b in batches) <= cap  # uncapped: 32 x 100 = 3,200
    assert sum(len(b) == 32 for b in batches) >= 25  # short texts keep full batches
    assert default_batch_tokens([5, 6, 500], batch_size=1) == 500  # never below the longest text


class CountingTokenizer:
    """The real fast tokenizer, counting how often it is asked to tokenise."""

    def __init__(self, tokenizer):
        self.inner, self.calls = tokenizer, 0

    def __getattr__(self, name):
        return getattr(self.inner, name)

    def __call__(self, *args, **kwargs):
        self.calls += 1
        return self.inner(*args, **kwargs)


def test_encode_cache_reads_back_the_same_ids(default_model_dir, tmp_path, monkeypatch):
    from transformers import AutoTokenizer

    monkeypatch.setenv("BERTCLF_CACHE", str(tmp_path))
    tokenizer = CountingTokenizer(AutoTokenizer.from_pretrained(default_model_dir))
    texts = ["a fine film", "dull", "word " * 300, "naïve café"]
    first = encode(tokenizer, texts, 64, cache=True)
    again = encode(tokenizer, texts, 64, cache=True)
    assert tokenizer.calls == 1 and again == first and first.truncated == 1
    files = list((tmp_path / "encoded").iterdir())
    assert len(files) == 1 and files[0].suffix == ".npz"
    encode(tokenizer, texts, 32, cache=True)  # another max length: another entry
    encode(tokenizer, texts[:3], 64, cache=True)  # other texts: another entry
    assert tokenizer.calls == 3 and len(list((tmp_path / "encoded").iterdir())) == 3
    files[0].write_bytes(b"not a cache file")  # unreadable: tokenised again, entry replaced
    assert encode(tokenizer, texts, 64, cache=True) == first and tokenizer.calls == 4
    monkeypatch.setenv("BERTCLF_CACHE", "off")
    encode(tokenizer, ["something new"], 64, cache=True)
    assert len(list((tmp_path / "encoded").iterdir())) == 3


def test_long_texts_split_into_overlapping_windows_and_pool_back(default_model_dir, tmp_path, monkeypatch):
    from transformers import AutoTokenizer

    monkeypatch.setenv("BERTCLF_CACHE", str(tmp_path))
    tokenizer = AutoTokenizer.from_pretrained(default_model_dir)
    words = " ".join(f"w{i}" for i in range(60))  # about 150 word pieces
    texts = ["short one", words, "another short"]
    enc = encode(tokenizer, texts, 32, cache=True, overlap=8)
    assert enc.text_of[0] == 0 and enc.text_of[-1] == 2 and (enc.text_of == 1).sum() >= 5 and enc.truncated == 1
    assert all(len(ids) <= 32 and ids[0] == tokenizer.cls_token_id and ids[-1] == tokenizer.sep_token_id
               for ids in enc.input_ids)
    first, second = [ids for ids, t in zip(enc.input_ids, enc.text_of) if t == 1][:2]
    assert first[-9:-1] == second[1:9]  # consecutive windows share 8 tokens
    whole = tokenizer(words, add_special_tokens=False)["input_ids"]
    inner = [ids[1:-1] for ids, t in zip(enc.input_ids, enc.text_of) if t == 1]
    assert inner[0] + [tok for w in inner[1:] for tok in w[8:]] == whole  # nothing lost between windows
    again = encode(tokenizer, texts, 32, cache=True, overlap=8)  # read back from the cache, mapping included
    assert again.input_ids == enc.input_ids and (again.text_of == enc.text_of).all() and again.truncated == 1
    assert encode(tokenizer, texts, 32, cache=True).text_of is None  # truncation is its own cache entry
    logits = np.arange(2 * len(enc.input_ids), dtype=np.float32).reshape(-1, 2)
    pooled = enc.pool(logits)
    assert pooled.shape == (3, 2) and np.allclose(pooled[1], logits[enc.text_of == 1].mean(axis=0))
    assert np.allclose(pooled[[0, 2]], logits[[0, -1]])


def test_head_and_tail_keep_both_ends_of_long_texts_only(default_model_dir, tmp_path, monkeypatch):
    from transformers import AutoTokenizer

    monkeypatch.setenv("BERTCLF_CACHE", str(tmp_path))
    tokenizer = AutoTokenizer.from_pretrained(default_model_dir)
    words = " ".join(f"w{i}" for i in range(60))  # about 150 word pieces
    texts = ["short one", words]
    enc = encode(tokenizer, texts, 32, cache=True, head=8)
    whole = tokenizer(words, add_special_tokens=False)["input_ids"]
    assert enc.truncated == 1 and enc.text_of is None
    assert enc.input_ids[0] == tokenizer("short one")["input_ids"]  # a text that fits is untouched
    assert enc.input_ids[1] == [tokenizer.cls_token_id, *whole[:8], *whole[-22:], tokenizer.sep_token_id]
    assert encode(tokenizer, texts, 32, cache=True, head=8).input_ids == enc.input_ids  # read back from the cache
    assert encode(tokenizer, texts, 32, cache=True).input_ids[1][1:-1] == whole[:30]  # truncation: its own entry
    assert encode(tokenizer, texts, 32, head=40).input_ids[1][1:-1] == whole[:30]  # a head past the limit: the start
    with pytest.raises(ValueError, match="not both"):
        encode(tokenizer, texts, 32, overlap=8, head=8)


def test_tokenizers_that_drop_windows_are_refused(default_model_dir, monkeypatch):
    import tokenizers
    from transformers import AutoTokenizer

    from bertclf import BertclfError

    tokenizer = AutoTokenizer.from_pretrained(default_model_dir)
    monkeypatch.setattr(tokenizers, "__version__", "0.23.2")
    with pytest.raises(BertclfError, match="tokenizers>=0.23.3"):
        encode(tokenizer, ["a long text"], 32, overlap=8)
    assert encode(tokenizer, ["a long text"], 32).text_of is None  # truncation alone is unaffected


def test_the_encode_cache_is_keyed_on_the_tokenizers_release(default_model_dir, monkeypatch):
    import tokenizers
    from transformers import AutoTokenizer

    from bertclf.batching import _cache_path

    tokenizer = AutoTokenizer.from_pretrained(default_model_dir)
    before = _cache_path(tokenizer, ["a text"], 32, 8, None)
    monkeypatch.setattr(tokenizers, "__version__", "0.23.2")  # windows cached by a broken release are not read back
    assert _cache_path(tokenizer, ["a text"], 32, 8, None) != before
