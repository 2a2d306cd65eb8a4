"""Eager vs torch.compile (inductor, weights frozen, dynamic shapes) bf16 inference: same model, texts, process.

    python bench/compile_inference.py [MODEL_DIR]     # default runs/sst2-minilm (scripts/demo.sh)
An experiment for issue 4, not yet a backend: prints the one-off compile time, argmax agreement with eager bf16
and texts/s per interleaved round on the SST-2 dev+test sentences.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable

import numpy as np
import pandas as pd
import torch
import torch._inductor.config as inductor_config

from common import DATASETS

from bertclf import TextClassifier
from bertclf.batching import encode
from bertclf.predict import batched_logits


def scorer(model: torch.nn.Module, encoded, pad_id: int) -> Callable[[], np.ndarray]:
    def forward(batch: dict[str, torch.Tensor]) -> np.ndarray:
        return model(**batch).logits.float().numpy()

    def run() -> np.ndarray:
        with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16):
            return batched_logits(encoded, pad_id, forward)

    return run


def main() -> None:
    clf = TextClassifier.load(sys.argv[1] if len(sys.argv) > 1 else "runs/sst2-minilm")
    frames = [pd.read_csv(DATASETS / "sst2_sentences" / f"{s}.csv", dtype=str, keep_default_na=False) for s in ("dev", "test")]
    texts = pd.concat(frames)["text"].tolist()
    encoded, pad_id = encode(clf.tokenizer_, texts, clf.max_length), clf.tokenizer_.pad_token_id
    model = clf.model_.eval()
    inductor_config.freezing = True  # weights are constants: inductor pre-packs them for oneDNN
    contenders = {"eager": scorer(model, encoded, pad_id), "compiled": scorer(torch.compile(model, dynamic=True), encoded, pad_id)}
    first = {}
    for name, run in contenders.items():
        start = time.perf_counter()
        first[name] = run()
        print(f"{name} first call (compiled: includes compiling): {time.perf_counter() - start:.1f} s", flush=True)
    agreement = (first["eager"].argmax(1) == first["compiled"].argmax(1)).mean()
    print(f"argmax agreement {agreement:.4f}, max |logit difference| {np.abs(first['eager'] - first['compiled']).max():.3f}")
    for _ in range(3):
        for name, run in contenders.items():
            start = time.perf_counter()
            run()
            print(f"{name}: {len(texts) / (time.perf_counter() - start):.1f} texts/s", flush=True)


if __name__ == "__main__":
    main()
