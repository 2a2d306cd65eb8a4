"""bertclf: fine-tune, evaluate and run BERT-family text classifiers, properly and fast."""

import os

__version__ = "0.1.0"

# oneDNN caches a compiled kernel (and its scratch memory) per tensor shape. Length-grouped batches
# have many shapes, and the default cache of 1024 kernels cost about 300 MB of peak RSS in training
# with no speed gain over 8 (measured on SST-2, see docs/benchmarks/training.md). Set before torch loads.
os.environ.setdefault("ONEDNN_PRIMITIVE_CACHE_CAPACITY", "8")
# PyTorch's ideep layer keeps a second per-shape cache (bf16 matmuls go through it; pytorch/pytorch#27971),
# read at its first use. At its default 1,024 entries bf16 predict's RSS crept up with every new batch shape
# (+39 MiB over 65k SST-2 phrases, still rising); at 16 it stayed flat, and a 1-epoch 2,000-text fit peaked at
# 1,053-1,055 MiB instead of 1,224-1,233, at the same samples/s (1 thread, interleaved runs; the streaming figures are in docs/benchmarks/inference.md).
os.environ.setdefault("LRU_CACHE_CAPACITY", "16")

from .errors import BertclfError  # noqa: E402
from .estimator import TextClassifier  # noqa: E402

__all__ = ["BertclfError", "TextClassifier", "__version__"]
