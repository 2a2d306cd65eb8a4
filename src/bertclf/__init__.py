"""bertclf: fine-tune, evaluate and run BERT-family text classifiers, properly and fast."""

__version__ = "0.1.0"

from .errors import BertclfError  # noqa: E402
from .estimator import TextClassifier  # noqa: E402

__all__ = ["BertclfError", "TextClassifier", "__version__"]
