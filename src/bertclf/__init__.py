"""bertclf: fine-tune, evaluate and run BERT-family text classifiers, properly and fast."""

import os

__version__ = "0.1.0"

# oneDNN caches a compiled kernel (and its scratch memory) per tensor shape. Length-grouped batches
# have many shapes, and the default cache of 1024 kernels cost about 300 MB of peak RSS in training
# with no speed gain over 8 (measured on SST-2, see docs/benchmarks/training.md). Set before torch loads.
os.environ.setdefault("ONEDNN_PRIMITIVE_CACHE_CAPACITY", "8")

from .errors import BertclfError  # noqa: E402
from .estimator import TextClassifier  # noqa: E402

__all__ = ["BertclfError", "TextClassifier", "__version__"]
