"""The Python API: a scikit-learn-shaped estimator over the pipeline stages.

Constructor arguments are the hyperparameters and nothing else; everything learned by :meth:`fit`
ends in an underscore. The CLI is a thin layer over this class.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch

from . import artifact, backends
from .batching import Encoded, cached_path, default_batch_tokens, encode, read_arrays, store_arrays
from .checkpoints import Checkpointing
from .data import (check_classes, check_known_labels, content_sha256, imbalance, infer_task, label_counts,
                   read_table)
from .errors import BertclfError
from .metrics import check_metric, compute, headline, tune_thresholds
from .modeling import (DEFAULT_MODEL, cheap_dropout, device_type, head_of, init_label_priors, is_main_process, keeps_head,
                       load_classifier, load_tokenizer, process_state, resident_embedding_grad, resolve_max_length, resolve_model,
                       resolve_precision, training_attention)
from .predict import decide, probabilities


@dataclass(eq=False)
class TextClassifier:
    """Fine-tune a BERT-family encoder for binary, multi-class or multi-label text classification."""

    model: str | None = None  # HF id or local dir; None = the packaged all-MiniLM-L6-v2
    task: str = "auto"  # auto | binary | multiclass | multilabel
    max_length: int | None = None  # tokens per text, special tokens included; longer texts are truncated (and
    # counted). None: the model's limit (512 for BERT-family models), since length-grouped batches pad only to their
    # longest text, so short texts cost nothing for it and long ones are read as far as the model can
    epochs: int | None = None  # None: from the training set's size and the task (see default_epochs)
    batch_size: int = 32
    batch_tokens: int | None = None  # cap on a training batch's padded tokens (bounds memory); None: 1.25x an
    # average batch's (batch_size x mean text length, see batching.default_batch_tokens); 0 = no cap
    lr: float | None = None  # peak AdamW rate; None: 1e-4 for small encoders (hidden ≤ 512), else 3e-5
    weight_decay: float = 0.01
    layer_lr_decay: float = 1.0  # rate of each encoder layer = the one above's x this (embeddings lowest); 1 = one rate
    warmup_ratio: float = 0.1
    label_smoothing: float = 0.0  # share of each label's target spread over the classes (multi-label: toward 0.5)
    ema_decay: float = 0.0  # > 0: dev scores, and the model keeps, a moving average of the weights over the steps
    # (memory about 1 / (1 - ema_decay) steps; see train.WeightAverage); 0 = the weights as the last step left them
    grad_accum: int = 1
    max_grad_norm: float = 1.0
    seed: int = 42
    patience: int = 2  # epochs without dev improvement before stopping; 0 = never stop early
    metric: str = "macro_f1"  # dev metric that picks the best epoch
    val_fraction: float = 0.2  # seeded stratified dev split when no eval_set is given; 0 = no dev set
    class_weight: str = "auto"  # none | balanced: weight the loss by inverse class (label) frequency; auto: balanced
    # for single-label data whose largest class has ≥ 3x the smallest's texts, else none (see derived_class_weight)
    long_texts: str = "truncate"  # truncate | head-tail: keep a quarter of max_length from the start, the rest from
    # the end | chunks: split longer texts into overlapping windows, mean of their logits
    tune_thresholds: bool = True  # multi-label with a dev set: per-label thresholds that maximise dev F1 (else 0.5)
    refit: bool = False  # after dev picks the best epoch, train again from the pretrained weights on train + dev
    teacher: str | None = None  # a bertclf model directory (same classes) whose predictions the model also learns
    # from: knowledge distillation, e.g. from a larger, slower model into the small one you will serve; or a file of
    # such predictions as `bertclf predict` writes them (text and prob_<class> columns), scored elsewhere
    distill_weight: float = 0.5  # share of the loss that matches the teacher (the rest fits the labels)
    distill_temperature: float = 2.0  # softens both models' outputs before they are compared (Hinton et al. 2015)
    precision: str = "auto"  # auto | fp32 | bf16 | fp16
    compile: bool = False  # torch.compile the model: faster steps after a one-off compile of about a minute
    verbose: bool = True

    # ------------------------------------------------------------------ sklearn contract
    def get_params(self, deep: bool = True) -> dict:
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}

    @classmethod
    def default_params(cls) -> dict:
        """Each hyperparameter's default: what a setting newer than a config or checkpoint means there."""
        return {f.name: f.default for f in dataclasses.fields(cls)}

    def set_params(self, **params) -> TextClassifier:
        for name, value in params.items():
            if name not in self.get_params():
                raise BertclfError(f"unknown parameter '{name}'; known: {', '.join(self.get_params())}")
            setattr(self, name, value)
        return self

    # ------------------------------------------------------------------ fit
    def fit(
        self,
        texts: Sequence[str],
        labels: Sequence,
        eval_set: tuple[Sequence[str], Sequence] | None = None,
        *,
        unlabeled_texts: Sequence[str] | None = None,
        data_info: dict | None = None,
        checkpointing: Checkpointing | None = None,
        on_epoch: Callable[[dict], None] | None = None,
    ) -> TextClassifier:
        """Train on ``texts``/``labels``; pick the best epoch on ``eval_set`` (or a seeded split of the data).

        ``labels`` are class names, or lists of names for multi-label. ``data_info`` lets a caller record
        file fingerprints ({"train": {...}, "dev": {...}}) instead of the content hashes used by default.
        ``checkpointing`` saves resumable checkpoints and, with ``resume_from``, continues from one.
        ``on_epoch`` is called with each epoch's record (train loss, dev metrics); raising in it stops training.
        ``unlabeled_texts``: more texts of the same kind, without labels, that only the ``teacher`` teaches (its
        predictions on them are their whole loss): distillation gains most on texts beyond the labelled ones (the
        augmented transfer sets of Tang et al. 2019 and TinyBERT, Jiao et al. 2020). They train in every epoch beside
        the labelled texts.
        """
        self._check_params()
        texts = _checked_texts(texts, "training texts")
        unlabeled = _checked_texts(unlabeled_texts, "unlabeled texts") if unlabeled_texts is not None else []
        if unlabeled and not (self.teacher and self.distill_weight > 0):
            raise BertclfError("unlabeled texts learn only from a teacher's predictions; pass --teacher DIR "
                               "(a model trained on the same labels) with a --distill-weight above 0, or leave them out")
        if len(labels) != len(texts):
            raise BertclfError(f"{len(texts)} texts but {len(labels)} labels; pass one label (or list) per text")
        self.task_ = infer_task(labels, self.task, label_sep=None)
        labels = _as_names(labels, self.task_ == "multilabel")
        multilabel = self.task_ == "multilabel"
        check_metric(self.metric, multilabel)
        self.classes_ = check_classes(labels, multilabel, "training data")
        if self.task_ == "binary" and len(self.classes_) != 2:
            raise BertclfError(f"--task binary but the training labels have {len(self.classes_)} classes; use multiclass")

        data_info = dict(data_info or {})
        if eval_set is not None:
            dev_texts = _checked_texts(eval_set[0], "dev texts")
            dev_labels = _as_names(eval_set[1], multilabel)
            check_known_labels(dev_labels, multilabel, self.classes_, data_info.get("dev", {}).get("path", "dev data"))
            train_texts, train_labels = texts, labels
        elif self.val_fraction > 0:
            train_idx, dev_idx, how = holdout_split(labels, multilabel, self.val_fraction, self.seed)
            train_texts, train_labels = [texts[i] for i in train_idx], [labels[i] for i in train_idx]
            dev_texts, dev_labels = [texts[i] for i in dev_idx], [labels[i] for i in dev_idx]
            data_info.setdefault("dev", {})["split"] = f"{how} {self.val_fraction:g} of the training data, seed {self.seed}"
            self._say(f"no dev set given: holding out a {how} {self.val_fraction:.0%} of the training data (seed {self.seed})")
        else:
            train_texts, train_labels, dev_texts, dev_labels = texts, labels, None, None
        if self.refit and dev_texts is None:
            raise BertclfError("--refit needs a dev set to pick the epoch count; pass --dev or a --val-fraction above 0")
        counts = label_counts(train_labels, multilabel)
        self.class_weight_ = derived_class_weight(self.class_weight, counts, multilabel)
        if self.class_weight == "auto" and self.class_weight_ == "balanced":
            self._say(f"class weights balanced: the largest class has {imbalance(counts):.1f}x the smallest's texts "
                      "(--class-weight none turns them off)")

        source = resolve_model(self.model)
        tokenizer = load_tokenizer(source)
        self.max_length_ = resolve_max_length(self.max_length, tokenizer, source)
        if self.batch_tokens and self.batch_tokens < self.max_length_:
            raise BertclfError(f"--batch-tokens {self.batch_tokens} is out of range: a batch must hold one text of "
                               f"--max-length {self.max_length_} tokens")
        train_encoded = self._encode_with(tokenizer, train_texts + unlabeled, cache=True)
        dev_encoded = self._encode_with(tokenizer, dev_texts, cache=True) if dev_texts else None
        teacher = self._teacher_logits({"train": train_texts, "dev": dev_texts if self.refit else None,
                                        "unlabeled": unlabeled}) if self.teacher else None

        def taught(*labelled_parts: str) -> torch.Tensor | None:
            """The teacher's logits in training-row order: the labelled parts' (train, and dev in a refit), then the
            unlabeled texts'."""
            return torch.cat([teacher[p] for p in (*labelled_parts, "unlabeled") if p in teacher]) if teacher else None

        self.truncated_ = {"train": train_encoded.truncated, "dev": dev_encoded.truncated if dev_encoded else 0}
        if any(self.truncated_.values()):
            how = {"chunks": "split into windows of", "head-tail": "cut to their first and last"}.get(self.long_texts, "truncated to")
            if self.long_texts == "chunks":
                hint = ""
            elif self.max_length_ < tokenizer.model_max_length:
                hint = " (raise --max-length, or --long-texts chunks, to keep more)"
            else:
                hint = " (the model's limit; --long-texts chunks reads all of them)"
            self._say(f"{how} {self.max_length_} tokens: {self.truncated_['train']} train and "
                      f"{self.truncated_['dev']} dev texts{hint}")

        result, record = self._train_run(
            source, tokenizer, train_encoded, train_labels, dev_encoded, dev_labels, self.epochs,
            teacher_logits=taught("train"), unlabeled_rows=len(unlabeled),
            checkpointing=checkpointing, on_epoch=on_epoch,
            fingerprint={
                **{k: v for k, v in self.get_params().items() if k not in ("verbose", "refit")},
                "train data": content_sha256(train_texts, train_labels),
                "dev data": content_sha256(dev_texts, dev_labels) if dev_texts else None,
                **({"unlabeled data": content_sha256(unlabeled)} if unlabeled else {}),
            },
        )
        tokenizer.model_max_length = self.max_length_  # the artifact's tokenizer truncates as training did
        self.model_, self.tokenizer_ = result.model, tokenizer
        self.thresholds_ = [0.5] * len(self.classes_) if multilabel else None
        self.precision_ = result.precision
        # Scored from here on (dev, test, predict) as the reloaded artifact's --backend auto scores it.
        self.backend_, self._backend_logits = backends.as_trained(self.precision_), None
        self.history_, self.best_epoch_ = result.history, result.best_epoch
        self.training_ = record
        self.data_ = {
            "train": {
                **data_info.get("train", {"rows": len(texts), "sha256": content_sha256(texts, labels)}),
                "rows_used": len(train_texts),  # after the dev split, if one was held out
                "label_counts": dict(sorted(counts.items())),
            }
        }
        if dev_texts:
            self.data_["dev"] = {"rows": len(dev_texts), **data_info.get("dev", {})}
        if unlabeled:
            self.data_["unlabeled"] = {"rows": len(unlabeled), **data_info.get("unlabeled", {})}
        # Final dev metrics come from the saved weights through the same path as predict().
        self.metrics_ = {}
        if dev_texts:
            dev_logits, dev_targets = self._forward(dev_encoded), self._targets(dev_labels).numpy()
            if multilabel and self.tune_thresholds:
                self.thresholds_ = tune_thresholds(probabilities(dev_logits, True), dev_targets, self.label_smoothing)
            self.metrics_["dev"] = self._scores(dev_logits, dev_targets)
        self.refit_ = None
        if self.refit:
            self._refit(source, train_texts + dev_texts, train_labels + dev_labels, unlabeled,
                        taught("train", "dev"))
        return self

    def _teacher_logits(self, parts: dict[str, list[str] | None]) -> dict[str, torch.Tensor]:
        """``self.teacher``'s logits for each part's texts (parts without texts are left out), columns in
        ``classes_`` order.

        Scoring every training text with a large teacher takes minutes on a CPU, so the logits are kept in the
        cache (see :func:`batching.cache_dir`) under the teacher's record and the texts: a second student of the
        same teacher (another seed, a refit) reads them back."""
        if os.path.isfile(self.teacher):
            return self._predicted_logits(parts)
        record = artifact.read_record(self.teacher)
        multilabel = self.task_ == "multilabel"
        if (record["task"] == "multilabel") != multilabel or set(record["classes"]) != set(self.classes_):
            raise BertclfError(f"{self.teacher}: the teacher predicts {record['task']} {record['classes']}, the training "
                               f"data has {self.task_} {self.classes_}; distil from a model trained on the same labels")
        order = [record["classes"].index(name) for name in self.classes_]
        key = hashlib.sha256(json.dumps(record, sort_keys=True).encode())
        loaded, out = None, {}
        for part, texts in parts.items():
            if not texts:
                continue
            path = cached_path("teacher", key.copy(), texts)
            logits = (read_arrays(path, "logits") or {}).get("logits")
            if logits is None or logits.shape != (len(texts), len(order)):
                if loaded is None:
                    backend = "torch-bf16" if resolve_precision(self.precision, device_type()) == "bf16" else "torch"
                    loaded = TextClassifier.load(self.teacher, backend=backend)
                    loaded.verbose = self.verbose
                self._say(f"teacher {self.teacher}: scoring {len(texts)} {part} texts ({loaded.backend_})")
                logits = loaded._logits(texts)[:, order]
                store_arrays(path, logits=logits)
            out[part] = torch.from_numpy(np.ascontiguousarray(logits, dtype=np.float32))
        return out

    def _predicted_logits(self, parts: dict[str, list[str] | None]) -> dict[str, torch.Tensor]:
        """The teacher's logits from a predictions file (``text`` and a ``prob_<class>`` column per class, as
        `bertclf predict` writes), for a teacher scored elsewhere: on a GPU, by another tool, or cross-fitted, each
        text by a teacher that did not learn it (bench/crossfit_teacher.py). Probabilities become logits (log p;
        multi-label, log-odds), which the softened comparison reads as the teacher's own; a text listed twice takes
        the mean of its rows' probabilities."""
        table = read_table(self.teacher)
        if "text" not in table.frame.columns:
            raise BertclfError(f"{self.teacher}: no 'text' column; a teacher's predictions file is what bertclf predict "
                               "writes from a file whose text column is 'text'")
        columns = [c for c in table.frame.columns if str(c).startswith("prob_")]
        if sorted(c[len("prob_"):] for c in columns) != sorted(self.classes_):
            raise BertclfError(f"{self.teacher}: the teacher's columns {columns} do not match the training data's "
                               f"classes {self.classes_}; write one prob_<class> column per class with bertclf predict")
        probs = table.frame[["text", *(f"prob_{name}" for name in self.classes_)]]
        numbers = probs.iloc[:, 1:].apply(pd.to_numeric, errors="coerce")
        bad = [i for i, ok in enumerate(((numbers >= 0) & (numbers <= 1)).all(axis=1)) if not ok]
        if bad:
            raise BertclfError(f"{table.where(bad)}: a probability is missing or outside 0..1; rescore with bertclf predict")
        by_text = numbers.groupby(probs["text"].astype(str)).mean()
        clipped = np.clip(by_text.to_numpy(dtype=np.float64), 1e-7, 1 - 1e-7)
        logits = np.log(clipped / (1 - clipped)) if self.task_ == "multilabel" else np.log(clipped)
        row_of = {text: i for i, text in enumerate(by_text.index)}
        out = {}
        for part, texts in parts.items():
            if not texts:
                continue
            missing = [t for t in texts if t not in row_of]
            if missing:
                raise BertclfError(f"{self.teacher}: no prediction for {len(missing)} of the {len(texts)} {part} texts "
                                   f"(first: {missing[0][:80]!r}); score every training text with bertclf predict")
            chosen = logits[[row_of[t] for t in texts]]
            out[part] = torch.from_numpy(np.ascontiguousarray(chosen, dtype=np.float32))
        return out

    def _refit(self, source: str, texts: list[str], labels: list, unlabeled: list[str],
               teacher_logits: torch.Tensor | None = None) -> None:
        """Replace the selected model with one trained from the pretrained weights on ``texts`` (train + dev) for
        the selected number of epochs. Dev metrics and thresholds stay those of the selection run: the dev texts
        are now training data, so they can no longer score the model; the test set still scores it honestly."""
        epochs = self.best_epoch_
        self._say(f"refit: training again from {self.model or DEFAULT_MODEL} on all {len(texts)} train + dev texts "
                  f"for the best epoch count, {epochs}")
        self.model_ = None  # the selected model's memory back before the second one is built
        encoded = self._encode_with(self.tokenizer_, texts + unlabeled, cache=True)
        result, record = self._train_run(source, self.tokenizer_, encoded, labels, None, None, epochs,
                                         teacher_logits=teacher_logits, unlabeled_rows=len(unlabeled))
        self.model_ = result.model
        self.refit_ = {"rows": len(texts), "history": result.history, **record}
        self.data_["train"]["rows_used"] = len(texts)

    def _train_run(self, source: str, tokenizer, train_encoded: Encoded, train_labels: list, dev_encoded: Encoded | None,
                   dev_labels: list | None, epochs: int | None, *, teacher_logits: torch.Tensor | None = None,
                   unlabeled_rows: int = 0, checkpointing: Checkpointing | None = None,
                   on_epoch: Callable[[dict], None] | None = None, fingerprint: dict | None = None) -> tuple:
        """One training run from the pretrained weights and a freshly seeded head (the model's own where it is a
        classifier of these labels, see :func:`keeps_head`): the loop of :mod:`train`
        with this estimator's settings, keeping the best epoch on ``dev_encoded`` (the last without one).
        The last ``unlabeled_rows`` texts of ``train_encoded`` have no label (``train_labels`` covers the others).
        Returns the loop's result and the run's settings and speed, as the artifact records them."""
        from accelerate.utils import set_seed

        from .train import train

        multilabel = self.task_ == "multilabel"
        set_seed(self.seed)  # before the head is created, so its initial weights are reproducible
        model = load_classifier(source, self.classes_, multilabel)[1]
        kept_head = keeps_head(head_of(source), self.classes_, multilabel)
        self.lr_ = self.lr or default_lr(model.config)
        self._say(f"model {self.model or DEFAULT_MODEL}: {sum(p.numel() for p in model.parameters()) / 1e6:.1f}M parameters, "
                  f"task {self.task_}, {len(self.classes_)} classes, lr {self.lr_:g}, {len(train_labels)} train / "
                  f"{len(dev_labels) if dev_labels else 0} dev texts" + (f" / {unlabeled_rows} unlabeled" if unlabeled_rows else "")
                  + ("; starting from its classification head, which has these labels" if kept_head else ""))
        train_targets = self._targets(train_labels)
        if multilabel and not kept_head and not init_label_priors(model, train_targets):
            self._say("could not find the model's output layer: its label biases start at zero, not at the label "
                      "frequencies (multi-label training may learn slowly)")
        labelled = None
        if unlabeled_rows:  # placeholder targets, masked out of the label loss
            train_targets = torch.cat([train_targets, train_targets.new_zeros((unlabeled_rows, *train_targets.shape[1:]))])
            labelled = torch.arange(len(train_targets)) < len(train_labels)
        if train_encoded.text_of is not None:  # every window learns its text's label (and its teacher's logits)
            windows = torch.from_numpy(train_encoded.text_of)
            train_targets = train_targets[windows]
            teacher_logits = teacher_logits[windows] if teacher_logits is not None else None
            labelled = labelled[windows] if labelled is not None else None

        if self.batch_tokens is None:
            batch_tokens = default_batch_tokens(train_encoded.lengths, self.batch_size)
        else:
            batch_tokens = self.batch_tokens or None  # 0: no cap
        if not epochs:
            epochs = default_epochs(len(train_encoded.input_ids), self.batch_size * self.grad_accum, multilabel)
            self._say(f"{epochs} epochs for {len(train_encoded.input_ids)} training examples (--epochs sets them)")

        attention = training_attention(device_type())
        model.set_attn_implementation(attention)
        cpu_eager = device_type() == "cpu" and not self.compile  # GPUs and torch.compile have their own kernels
        with cheap_dropout(model, enabled=cpu_eager), \
                resident_embedding_grad(model, enabled=cpu_eager and process_state().num_processes == 1):
            result = train(
                model,
                train_encoded,
                train_targets,
                dev_encoded,
                self._targets(dev_labels).numpy() if dev_labels is not None else None,
                classes=self.classes_,
                multilabel=multilabel,
                pad_id=tokenizer.pad_token_id,
                params=self,
                lr=self.lr_,
                epochs=epochs,
                batch_tokens=batch_tokens,
                checkpointing=checkpointing,
                class_weights=self._class_weights(train_labels),
                teacher_logits=teacher_logits,
                labelled=labelled,
                on_epoch=on_epoch,
                fingerprint=fingerprint,
            )
        result.model.set_attn_implementation("sdpa")  # the transformers default, for prediction and the artifact
        return result, {
            "lr": self.lr_,
            "max_length": self.max_length_,
            "epochs": epochs,
            "batch_tokens": batch_tokens,
            "seconds": round(result.train_seconds, 2),
            "samples_per_s": result.samples_per_s,
            "stopped_early": result.stopped_early,
            "device": device_type(),
            "attention": attention,
            "threads": torch.get_num_threads(),
            "class_weight": self.class_weight_,
            "teacher": self.teacher,
        }

    # ------------------------------------------------------------------ predict
    def predict_proba(self, texts: Sequence[str]) -> np.ndarray:
        """Probabilities, one column per class in ``classes_`` order (= the artifact's id2label)."""
        return self.predict_with_proba(texts)[1]

    def predict(self, texts: Sequence[str]) -> list:
        """Label names in input order; lists of names for multi-label (per-label thresholds)."""
        return self.predict_with_proba(texts)[0]

    def predict_with_proba(self, texts: Sequence[str]) -> tuple[list, np.ndarray]:
        """Labels and probabilities from one forward pass over ``texts``."""
        logits = self._logits(texts)
        multilabel = self.task_ == "multilabel"
        return self._names(decide(logits, multilabel, self.thresholds_)), probabilities(logits, multilabel)

    def evaluate(self, texts: Sequence[str], labels: Sequence, where: str = "evaluation data") -> dict:
        """Accuracy, F1 (macro/micro/weighted), per-class scores and the confusion matrix."""
        multilabel = self.task_ == "multilabel"
        labels = _as_names(labels, multilabel)
        check_known_labels(labels, multilabel, self.classes_, where)
        return self._scores(self._logits(texts), self._targets(labels).numpy())

    def _scores(self, logits: np.ndarray, targets: np.ndarray) -> dict:
        """Metrics at the model's thresholds; with tuned multi-label thresholds also the headline at 0.5."""
        multilabel = self.task_ == "multilabel"
        metrics = compute(targets, decide(logits, multilabel, self.thresholds_), self.classes_, multilabel)
        if multilabel and set(self.thresholds_) != {0.5}:
            metrics["at_0.5"] = headline(compute(targets, decide(logits, True), self.classes_, True))
        return metrics

    # ------------------------------------------------------------------ artifact
    def save(self, path: str, overwrite: bool = False, extra: dict | None = None) -> str:
        """Write a transformers-loadable directory plus ``bertclf.json``; atomic (see :mod:`artifact`)."""
        self._check_fitted()
        record = {
            "task": self.task_,
            "classes": self.classes_,
            "thresholds": self.thresholds_,
            "base_model": self.model or DEFAULT_MODEL,
            "params": self.get_params(),
            "precision": self.precision_,
            "data": self.data_,
            "truncated": self.truncated_,
            "history": self.history_,
            "best_epoch": self.best_epoch_,
            "training": self.training_,
            "refit": self.refit_,
            "metrics": self.metrics_,
            **(extra or {}),
        }
        try:
            with artifact.atomic_directory(path, overwrite) as tmp:
                artifact.write(tmp, self.model_, self.tokenizer_, record)
        except OSError as err:  # disk full, quota, permissions changed during training: nothing half-written stays
            raise BertclfError(f"{path}: could not write the model ({err.strerror or err}); free space or choose "
                               "another output (a 'bertclf train' run keeps its checkpoints for --resume)") from None
        return os.path.abspath(path)

    @classmethod
    def load(cls, path: str, backend: str = "auto", threads: int | None = None) -> TextClassifier:
        """Rebuild a fitted classifier from a directory written by :meth:`save`.

        ``backend``: torch, torch-bf16, torch-int8, torch-bf16-compiled, torch-int8-compiled, onnx, onnx-int8 (the
        last two after ``bertclf export``) or auto: the fastest one whose accuracy export checked (never a compiled
        one), without an export the training precision's (torch-bf16 for a bf16-trained model where the CPU has
        native bf16, else torch), as the fitted classifier scored before it was saved. ``threads``: CPU threads
        for inference (default: all cores).
        """
        record = artifact.read_record(path)
        tokenizer, model = load_classifier(path)
        names = [model.config.id2label[i] for i in range(model.config.num_labels)]
        if names != record["classes"]:
            raise BertclfError(f"{path}: config.json labels {names} disagree with bertclf.json {record['classes']}; the artifact was edited")
        known = {f.name for f in dataclasses.fields(cls)}
        clf = cls(**{k: v for k, v in record["params"].items() if k in known})
        clf.backend_ = backends.choose(record, backend)
        clf.model_, clf.tokenizer_ = model.to(backends.device_for(clf.backend_)).eval(), tokenizer
        clf.max_length_ = tokenizer.model_max_length  # saved as training truncated (fit sets it)
        clf.task_, clf.classes_, clf.thresholds_ = record["task"], record["classes"], record["thresholds"]
        clf.precision_, clf.data_, clf.truncated_ = record["precision"], record["data"], record["truncated"]
        clf.history_, clf.best_epoch_ = record["history"], record["best_epoch"]
        clf.training_, clf.metrics_ = record["training"], record["metrics"]
        clf.refit_ = record.get("refit")  # absent from artifacts written before refit existed
        clf._backend_logits = backends.make(clf.backend_, path, clf.model_, tokenizer.pad_token_id, threads)
        return clf

    # ------------------------------------------------------------------ helpers
    def _logits(self, texts: Sequence[str]) -> np.ndarray:
        return self._forward(self._encode(texts))

    def _encode(self, texts: Sequence[str]) -> Encoded:
        """Token ids as training made them (same tokenizer, same truncation); refuses non-strings clearly."""
        self._check_fitted()
        texts = [t if isinstance(t, str) else _not_a_string(t) for t in texts]
        try:
            return self._encode_with(self.tokenizer_, texts)
        except TypeError:  # the Rust tokenizer's only complaint about a str: one that is not valid Unicode
            bad = [i for i, t in enumerate(texts) if not _encodable(t)]
            raise BertclfError(f"texts at positions {bad[:10]} are not valid Unicode (lone surrogates); clean them") from None

    def _encode_with(self, tokenizer, texts: Sequence[str], cache: bool = False) -> Encoded:
        quarter = self.max_length_ // 4  # the windows' overlap, or the head kept (128 of 512, as Sun et al. 2019)
        return encode(tokenizer, texts, self.max_length_, cache=cache, overlap=quarter if self.long_texts == "chunks" else None,
                      head=quarter if self.long_texts == "head-tail" else None)

    def _forward(self, encoded: Encoded) -> np.ndarray:
        """Logits per text in input order from the loaded backend (right after fit, the torch backend of the
        training precision, on the current model); a text split into windows gets the mean of its windows' logits."""
        run = getattr(self, "_backend_logits", None)
        if run is None:
            progress = self.verbose and len(encoded.input_ids) > 5000
            run = backends.make(self.backend_, None, self.model_, self.tokenizer_.pad_token_id, progress=progress)
        return encoded.pool(run(encoded))

    def _targets(self, labels: Sequence) -> torch.Tensor:
        index = {name: i for i, name in enumerate(self.classes_)}
        if self.task_ != "multilabel":
            return torch.tensor([index[y] for y in labels], dtype=torch.long)
        hot = torch.zeros((len(labels), len(self.classes_)), dtype=torch.float32)
        for row, names in enumerate(labels):
            hot[row, [index[n] for n in names]] = 1.0
        return hot

    def _class_weights(self, labels: Sequence) -> torch.Tensor | None:
        """'balanced': n / (classes × count) per class, as scikit-learn; multi-label: negatives / positives per label."""
        if self.class_weight_ == "none":
            return None
        targets = self._targets(labels)
        if self.task_ == "multilabel":
            positives = targets.sum(dim=0).clamp(min=1)
            return (len(labels) - positives) / positives
        counts = torch.bincount(targets, minlength=len(self.classes_)).clamp(min=1).float()
        return len(labels) / (len(self.classes_) * counts)

    def _names(self, decided: np.ndarray) -> list:
        if self.task_ == "multilabel":
            return [[self.classes_[j] for j in np.flatnonzero(row)] for row in decided]
        return [self.classes_[i] for i in decided]

    def _check_fitted(self) -> None:
        if not hasattr(self, "model_"):
            raise BertclfError("this TextClassifier is not fitted yet; call fit() or TextClassifier.load(dir)")

    def _check_params(self) -> None:
        rules = {
            "epochs": self.epochs is None or self.epochs >= 1, "batch_size": self.batch_size >= 1,
            "batch_tokens": self.batch_tokens is None or self.batch_tokens >= 0, "lr": self.lr is None or self.lr > 0,
            "grad_accum": self.grad_accum >= 1, "max_length": self.max_length is None or self.max_length >= 8,
            "val_fraction": 0 <= self.val_fraction < 1, "warmup_ratio": 0 <= self.warmup_ratio < 1,
            "label_smoothing": 0 <= self.label_smoothing < 1, "ema_decay": 0 <= self.ema_decay < 1,
            "weight_decay": self.weight_decay >= 0, "layer_lr_decay": 0 < self.layer_lr_decay <= 1,
            "distill_weight": 0 <= self.distill_weight <= 1, "distill_temperature": self.distill_temperature > 0,
            "patience": self.patience >= 0,
            "class_weight": self.class_weight in ("auto", "none", "balanced"),
            "long_texts": self.long_texts in ("truncate", "head-tail", "chunks"),
        }
        bad = [name for name, ok in rules.items() if not ok]
        if bad:
            name = bad[0]
            raise BertclfError(f"--{name.replace('_', '-')} {getattr(self, name)!r} is out of range; see 'bertclf train --help'")

    def _say(self, message: str) -> None:
        if self.verbose and is_main_process():
            print(message, file=sys.stderr)


def _encodable(text: str) -> bool:
    try:
        text.encode("utf-8")
        return True
    except UnicodeEncodeError:
        return False


def _not_a_string(value) -> str:
    raise BertclfError(f"texts must be strings, got {type(value).__name__} ({value!r:.40})")


AUTO_BALANCE_IMBALANCE = 3.0  # largest / smallest class from which class_weight="auto" weights the loss


def derived_class_weight(setting: str, counts: dict, multilabel: bool) -> str:
    """'none' or 'balanced'; 'auto' picks balanced for clearly imbalanced single-label data.

    Measured with MiniLM-L6 (docs/benchmarks/accuracy.md): balanced weights lifted emotion (9.4x) test macro-F1
    from 0.880 to 0.897 and Banking77 (5.3x) refit accuracy from 0.9287 to 0.9310, and left TREC (14.5x) where
    it was (0.9600 against 0.9607) except with refit (0.9607 against 0.9687: its weighted selection runs stop at
    earlier epochs); near-balanced sets (SST-2, IMDB, MR) have nothing to reweight. Multi-label
    stays unweighted: BCE pos_weight cut GoEmotions' dev macro-F1 from 0.369 to 0.162 (bench/multilabel_pilot.py).
    """
    if setting != "auto":
        return setting
    return "balanced" if not multilabel and imbalance(counts) >= AUTO_BALANCE_IMBALANCE else "none"


MIN_STEPS = 2000  # optimizer steps that default_epochs aims for: 8 epochs of Banking77 (8,002 texts / 32 = 251 each)


def default_epochs(examples: int, batch: int, multilabel: bool = False) -> int:
    """Epochs when none are given: enough passes for ``MIN_STEPS`` optimizer steps of ``batch`` examples,
    at least 3 (5 for multi-label) and at most 10 (patience stops a run that no longer improves on dev).

    Steps are counted as examples / batch; the token cap splits some batches, so a run makes somewhat more
    (Banking77: 284 an epoch against 251 counted). Three epochs, the usual recipe, undertrain small data: on
    Banking77 (8,002 training texts, 77 intents, seed 42) dev accuracy was 0.849 after a 3-epoch run and 0.918
    after an 8-epoch one (test 0.827 against 0.919); GLUE SST-2 (67,349 texts, 2,105 steps counted) keeps 3.
    Multi-label heads learn their rare labels slowly even on large data: on GoEmotions (43,410 texts, 1,357 steps
    an epoch, seed 42) dev macro-F1 at 0.5 still rose at a 3-epoch run's last epoch (0.413); 5 epochs reached
    0.445, and test macro-F1 with tuned thresholds 0.488 against 0.471.
    """
    steps_per_epoch = max(1, math.ceil(examples / batch))
    return min(10, max(5 if multilabel else 3, math.ceil(MIN_STEPS / steps_per_epoch)))


def default_lr(config) -> float:
    """Small encoders (MiniLM, 384 wide) want a larger step than base-size BERTs (768+), which diverge at 1e-4."""
    return 1e-4 if getattr(config, "hidden_size", 768) <= 512 else 3e-5


def _as_names(labels: Sequence, multilabel: bool) -> list:
    """Labels as strings (names are what the artifact stores); lists of strings for multi-label."""
    if not multilabel:
        return [str(y) for y in labels]
    bad = [i for i, y in enumerate(labels) if isinstance(y, str) or not hasattr(y, "__iter__")]
    if bad:
        raise BertclfError(f"multi-label labels must be lists of names; positions {bad[:10]} are not")
    return [sorted({str(name) for name in y}) for y in labels]


def _checked_texts(texts: Sequence[str], what: str) -> list[str]:
    texts = list(texts)
    if not texts:
        raise BertclfError(f"no {what}; pass at least one")
    bad = [i for i, t in enumerate(texts) if not isinstance(t, str) or not t.strip()]
    if bad:
        raise BertclfError(f"{what} at positions {bad[:10]} are empty or not strings; remove or fill them")
    return texts


def holdout_split(labels: Sequence, multilabel: bool, fraction: float, seed: int) -> tuple[list[int], list[int], str]:
    """Seeded dev split, stratified by class where every class has at least two examples."""
    from sklearn.model_selection import train_test_split

    positions = list(range(len(labels)))
    if not multilabel:
        try:
            train_idx, dev_idx = train_test_split(positions, test_size=fraction, random_state=seed, stratify=list(labels))
            return sorted(train_idx), sorted(dev_idx), "stratified"
        except ValueError:
            pass  # a class with a single example cannot be stratified; fall through to a random split
    train_idx, dev_idx = train_test_split(positions, test_size=fraction, random_state=seed)
    return sorted(train_idx), sorted(dev_idx), "random"
