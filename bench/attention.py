"""Eager vs SDPA attention for MiniLM-L6 training and inference steps on this CPU, by sequence length.

Decides bertclf.modeling.training_attention. Run: python bench/attention.py
Prints samples/s per (kernel, length, batch, mode); the kernels run in this one process, interleaved. Training steps
run in train mode, dropout included (SDPA then leaves its flash kernel for the math one on CPU); "cheap" is eager
attention with bertclf's cheap dropout (modules and attention probabilities), as fit uses it on CPU.
"""

from __future__ import annotations

import time

import torch
import torch.nn.functional as F
import transformers

from bertclf.modeling import cheap_dropout, load_classifier, resolve_model

SHAPES = [(32, 32), (128, 16), (512, 4)]  # (tokens, batch): short sentences, paragraphs, long documents


def samples_per_s(model, ids, mask, train: bool, repeats: int = 6) -> float:
    labels = torch.zeros(len(ids), dtype=torch.long)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            if train:
                model.train()
                F.cross_entropy(model(input_ids=ids, attention_mask=mask).logits.float(), labels).backward()
                model.zero_grad()
            else:
                with torch.inference_mode():
                    model.eval()(input_ids=ids, attention_mask=mask)
        times.append(time.perf_counter() - start)
    return len(ids) / min(times[2:])  # the first two warm the kernels up


def main() -> None:
    transformers.logging.set_verbosity_error()
    _, model = load_classifier(resolve_model(None), ["a", "b"])
    for length, batch in SHAPES:
        ids = torch.randint(1000, 20000, (batch, length))
        mask = torch.ones_like(ids)
        mask[: batch // 2, length // 2 :] = 0  # half the rows padded, as in a real batch
        for mode in ("train", "infer"):
            row = []
            for kernel in ("eager", "cheap", "sdpa") if mode == "train" else ("eager", "sdpa"):
                model.set_attn_implementation("sdpa" if kernel == "sdpa" else "eager")
                with cheap_dropout(model, enabled=kernel == "cheap"):
                    row.append(f"{kernel} {samples_per_s(model, ids, mask, mode == 'train'):7.1f}")
            print(f"len {length:4d} batch {batch:3d} {mode:5s}  " + "  ".join(row) + " samples/s")


if __name__ == "__main__":
    main()
