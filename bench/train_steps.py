"""bertclf's CPU training kernels, switched on one by one, on the same MiniLM-L6 training steps in one process.

Each round runs one pass over the same length-sorted SST-2 batches (32 sentences) per variant, full steps as fit
takes them (bf16 autocast forward, backward, gradient clipping, fused AdamW, zero_grad), variants interleaved so
that the machine's drift hits each alike:
  torch       eager attention with torch's dropout (nn.Dropout and the attention probabilities')
  cheap       bertclf.modeling.cheap_dropout: 16-bit dropout masks, bf16 attention matrices
  cheap+grad  the same with resident_embedding_grad (the word-embedding gradient kept in one buffer), as fit runs
Reports the median over rounds (the first dropped) of samples per second of wall time and per second of CPU time
(this machine's neighbours steal wall time; CPU time is steadier).

    python bench/train_steps.py [--rounds 8] [--texts 640]
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import time

import torch
import torch.nn.functional as F
import transformers

from common import load_split

VARIANTS = ("torch", "cheap", "cheap+grad")


def main() -> None:
    from bertclf.batching import Collator, encode
    from bertclf.modeling import cheap_dropout, load_classifier, resident_embedding_grad, resolve_model
    from bertclf.train import _optimizer

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=8)
    parser.add_argument("--texts", type=int, default=640)
    args = parser.parse_args()
    transformers.logging.set_verbosity_error()
    texts, labels = load_split("sst2_sentences", max_train=args.texts)["train"]
    classes = sorted(set(labels))
    tokenizer, model = load_classifier(resolve_model(None), classes)
    encoded = encode(tokenizer, texts, 128)
    collate = Collator(encoded, torch.tensor([classes.index(label) for label in labels]), tokenizer.pad_token_id)
    order = sorted(range(len(texts)), key=lambda i: encoded.lengths[i])
    batches = [collate(order[i:i + 32]) for i in range(0, len(order), 32)]
    model.set_attn_implementation("eager")
    model.train()
    optimizer = _optimizer(model, 1e-5, 0.01)  # a small rate: the rounds should see a model that barely moves

    wall: dict[str, list[float]] = {v: [] for v in VARIANTS}
    cpu: dict[str, list[float]] = {v: [] for v in VARIANTS}
    for _ in range(args.rounds):
        for variant in VARIANTS:
            with contextlib.ExitStack() as kernels:
                kernels.enter_context(cheap_dropout(model, enabled=variant != "torch"))
                kernels.enter_context(resident_embedding_grad(model, enabled=variant == "cheap+grad"))
                started, cpu_started = time.perf_counter(), time.process_time()
                for batch in batches:
                    with torch.autocast("cpu", dtype=torch.bfloat16):
                        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
                    F.cross_entropy(logits.float(), batch["labels"]).backward()
                    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
                    optimizer.step()
                    optimizer.zero_grad(set_to_none=True)
                wall[variant].append(len(texts) / (time.perf_counter() - started))
                cpu[variant].append(len(texts) / (time.process_time() - cpu_started))
    base = statistics.median(wall["torch"][1:])
    for variant in VARIANTS:
        w, c = statistics.median(wall[variant][1:]), statistics.median(cpu[variant][1:])
        print(f"{variant:11s} {w:6.1f} samples/s ({w / base:.2f}x torch)  {c:6.1f} samples per CPU-s   "
              f"rounds: {', '.join(f'{x:.0f}' for x in wall[variant])}")


if __name__ == "__main__":
    main()
