"""The command line: a thin layer over :class:`bertclf.TextClassifier` and the data readers.

Every user error prints one line ``error: ...`` and exits with code 2, with nothing written.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import shutil
import sys
from pathlib import Path

from . import __version__
from .data import TASKS
from .errors import BertclfError
from .metrics import MULTI_LABEL_METRICS, SINGLE_LABEL_METRICS

METRICS = tuple(dict.fromkeys(SINGLE_LABEL_METRICS + MULTI_LABEL_METRICS))  # check_metric narrows them by task

EXIT_USAGE = 2
EXIT_INTERRUPTED = 130


class BertclfInterrupted(Exception):
    """Ctrl-C, with what survived it."""


def _quiet_transformers() -> None:
    """transformers' load report and progress bars would drown our own one-line messages."""
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    import transformers

    transformers.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()


# ---------------------------------------------------------------------------------------------- train
def _add_data_flags(p: argparse.ArgumentParser, drop_empty: bool = True) -> None:
    p.add_argument("--text-column", help="column holding the text (default: text)")
    p.add_argument("--label-column", help="column holding the label(s) (default: label, or labels if only that exists)")
    p.add_argument("--label-sep", help="separator of multi-label names in CSV/TSV cells (default: |)")
    if drop_empty:
        p.add_argument("--drop-empty", action="store_true", default=None,
                       help="skip rows whose text is empty instead of refusing the file (the count is reported)")


def _train_parser(sub) -> None:
    from .estimator import MIN_STEPS, TextClassifier

    defaults = {f.name: f.default for f in dataclasses.fields(TextClassifier)}
    p = sub.add_parser(
        "train",
        help="fine-tune a model on a labelled file and save it",
        description="Fine-tune a BERT-family encoder on TRAIN_FILE (CSV, TSV, JSONL or Parquet with text and label "
        "columns), pick the best epoch on the dev set, score the test set and save a transformers-loadable "
        "model directory. Flags override --config.",
    )
    p.add_argument("train_file", metavar="TRAIN_FILE")
    p.add_argument("--dev", metavar="FILE", help="dev file that picks the best epoch (default: a seeded split, see --val-fraction)")
    p.add_argument("--test", metavar="FILE", help="test file scored once with the best model")
    p.add_argument("--output", "-o", required=True, metavar="DIR", help="model directory to write")
    p.add_argument("--overwrite", action="store_true", help="replace --output if it exists")
    p.add_argument("--config", metavar="FILE.yaml", help="YAML file with any of these options (dashes or underscores)")
    p.add_argument("--model", help="HF model id or local directory, a saved bertclf model too: its head is kept where "
                                   "its labels are these (default: the packaged all-MiniLM-L6-v2)")
    _add_data_flags(p)
    p.add_argument("--task", choices=TASKS,
                   help=f"auto: lists or --label-sep in labels → multilabel, 2 classes → binary (default: {defaults['task']})")
    hyper = {
        "max_length": (int, "tokens per text incl. special tokens; longer texts are truncated and counted. Default: the "
                            "model's limit (512 for BERT-family models); batches pad only to their longest text, so "
                            "short texts cost nothing for it"),
        "epochs": (int, f"training epochs; default: from the data, enough for {MIN_STEPS:,} optimizer steps, 3 (multi-label 5) to 10 "
                        "(--patience stops earlier)"),
        "batch_size": (int, "texts per optimizer step (times --grad-accum)"),
        "batch_tokens": (int, "cap on padded tokens (texts x longest) per step, at least --max-length: batches of long "
                                "texts are cut, bounding memory; with a large --batch-size, pure token-budget batching. "
                                "Default: 1.25 x an average batch (--batch-size x mean text length); 0 = no cap"),
        "lr": (float, "peak AdamW learning rate; default: 1e-4 for small encoders (hidden ≤ 512), 3e-5 for larger"),
        "weight_decay": (float, "AdamW weight decay (not on biases and LayerNorm)"),
        "layer_lr_decay": (float, "layer-wise rate decay: the head and pooler train at --lr, the top encoder layer at "
                                  "--lr x this, each layer below x this again, the embeddings lowest; 1 = one rate"),
        "warmup_ratio": (float, "share of steps with linear warmup, then linear decay"),
        "label_smoothing": (float, "share of each label's target spread evenly over the classes (multi-label: toward "
                                   "0.5), so the model is not pushed to certainty on the training texts; 0 = off"),
        "ema_decay": (float, "keep an exponential moving average of the weights over the optimizer steps (memory about "
                             "1 / (1 - this) steps, e.g. 0.99: 100); dev scores it and the model is it. 0 = off"),
        "distill_weight": (float, "with --teacher: share of the loss that matches the teacher, the rest fits the labels"),
        "distill_temperature": (float, "with --teacher: both models' logits are divided by this before they are "
                                       "compared (softer targets), the loss multiplied by its square"),
        "grad_accum": (int, "gradient accumulation steps"),
        "seed": (int, "seed for the split, head initialisation, dropout and batch order"),
        "patience": (int, "stop after this many epochs without dev improvement; 0 = never"),
        "val_fraction": (float, "dev share held out (stratified) when there is no --dev; 0 = none"),
    }
    for name, (kind, text) in hyper.items():
        shown = "" if defaults[name] is None else f" (default: {defaults[name]})"
        p.add_argument(f"--{name.replace('_', '-')}", type=kind, help=text + shown)
    p.add_argument("--metric", choices=METRICS,
                   help=f"dev metric that picks the best epoch (default: {defaults['metric']})")
    p.add_argument("--class-weight", choices=("auto", "none", "balanced"),
                   help="balanced: weight the loss by inverse class frequency (emotion test macro-F1 0.897 against "
                        "0.880 unweighted; Banking77, whose train is imbalanced and test is not, refit test accuracy "
                        "0.931 against 0.929); auto: balanced for single-label data whose largest class has at least "
                        "3x the smallest's texts, else none (on multi-label data, BCE pos_weight, it hurt GoEmotions). "
                        "TREC with --refit scored 0.8 point less weighted than with none "
                        f"(default: {defaults['class_weight']})")
    p.add_argument("--long-texts", choices=("truncate", "head-tail", "chunks"),
                   help="texts longer than --max-length: truncate (keep the start); head-tail: keep the first quarter "
                        "of --max-length tokens and the last three quarters (128 + 382 of 512); or chunks: split into windows overlapping by a "
                        "quarter of --max-length, each trained on with its text's label; a text's score is the mean "
                        "of its windows' logits (dev, test, predict, serve) (default: truncate)")
    p.add_argument("--tune-thresholds", action=argparse.BooleanOptionalAction, default=None,
                   help="multi-label: per-label decision thresholds that maximise dev F1, stored in the model "
                        "(default: on; --no-tune-thresholds keeps 0.5)")
    p.add_argument("--refit", action="store_true", default=None,
                   help="after the dev set picks the best epoch, train again from the pretrained weights on train + "
                        "dev for that many epochs (about twice the time; the model learns from every labelled text, "
                        "most useful where the dev set is held out of a small training file). Dev metrics and "
                        "thresholds stay those of the selection run")
    p.add_argument("--teacher", metavar="DIR|FILE",
                   help="knowledge distillation: a model directory from 'bertclf train' on the same labels (e.g. a larger, "
                        "slower model); this model also learns to match its predictions on the training texts. The "
                        "teacher scores them once (kept in the cache for the next run). Or a file of its predictions "
                        "on every training text, as 'bertclf predict' writes it (text, prob_<class> columns): scored "
                        "on another machine, or cross-fitted by bench/crossfit_teacher.py")
    p.add_argument("--unlabeled", metavar="FILE",
                   help="with --teacher: more texts of the same kind without labels (a file with the text column; "
                        "other columns are not read) that learn from the teacher's predictions alone, in every epoch "
                        "beside the labelled texts: distillation gains most on texts beyond the labelled ones")
    p.add_argument("--precision", choices=("auto", "fp32", "bf16", "fp16"),
                   help="auto: bf16 on CPUs/GPUs that have it, fp16 on older GPUs, else fp32 (default: auto)")
    p.add_argument("--compile", action="store_true", default=None,
                   help="torch.compile the model: faster steps after a one-off compile (pays on long runs)")
    p.add_argument("--checkpoint-every", type=int, default=0, metavar="STEPS",
                   help="also checkpoint every STEPS optimizer steps (always at epoch ends); in OUTPUT.checkpoints")
    p.add_argument("--keep-checkpoints", type=int, default=2, metavar="K", help="keep the newest K checkpoints (default: 2)")
    p.add_argument("--resume", nargs="?", const=True, metavar="PATH",
                   help="continue from the newest complete checkpoint in OUTPUT.checkpoints (or in PATH)")
    p.add_argument("--quiet", action="store_true", help="no progress bars or per-epoch lines")
    p.set_defaults(run=cmd_train)


def cmd_train(args: argparse.Namespace) -> int:
    from . import checkpoints
    from .artifact import check_output_free
    from .checkpoints import Checkpointing, directory_for
    from .config import DATA_KEYS, merge
    from . import validation
    from .data import read_splits, read_unlabeled
    from .estimator import TextClassifier
    from .metrics import check_metric, render
    from .modeling import is_main_process

    options = merge(args.config, vars(args))
    check_output_free(args.output, args.overwrite)
    data_options = {k: options.pop(k) for k in DATA_KEYS}
    options["verbose"] = not args.quiet

    splits, task, _ = read_splits(args.train_file, args.dev, args.test, task=options["task"], **data_options)
    unlabeled = read_unlabeled(args.unlabeled, data_options["text_column"], data_options["drop_empty"]) if args.unlabeled else None
    train, multilabel = splits["train"], task == "multilabel"
    check_metric(options["metric"], multilabel)
    if options["verbose"] and is_main_process():
        _report_dropped({**splits, **({"unlabeled": unlabeled} if unlabeled else {})})
        lines = validation.warnings(validation.report(splits, multilabel))
        for line in lines + (validation.unlabeled_warnings(unlabeled, splits) if unlabeled else []):
            print(f"warning: {line}", file=sys.stderr)

    if args.checkpoint_every < 0 or args.keep_checkpoints < 1:
        raise BertclfError("--checkpoint-every must be ≥ 0 and --keep-checkpoints ≥ 1")
    resume_from = None
    if args.resume:
        resume_from = checkpoints.latest(directory_for(args.output) if args.resume is True else args.resume)
    checkpointing = Checkpointing(directory_for(args.output), args.checkpoint_every, args.keep_checkpoints, resume_from)

    clf = TextClassifier(**{**options, "task": task})
    dev = splits.get("dev")
    try:
        clf.fit(
            train.texts,
            train.labels,
            eval_set=(dev.texts, dev.labels) if dev else None,
            unlabeled_texts=unlabeled.texts if unlabeled else None,
            data_info={"train": train.source, **({"dev": dev.source} if dev else {}),
                       **({"unlabeled": unlabeled.source} if unlabeled else {})},
            checkpointing=checkpointing,
        )
    except KeyboardInterrupt:
        kept = checkpoints.complete(directory_for(args.output))
        hint = f"; the last checkpoint is {kept[-1]}: rerun with --resume" if kept else ""
        raise BertclfInterrupted(f"interrupted: no model was written{hint}") from None
    if not is_main_process():  # under accelerate launch / torchrun, rank 0 alone scores the test set and writes
        return 0
    if "test" in splits:
        test = splits["test"]
        clf.metrics_["test"] = clf.evaluate(test.texts, test.labels, where=args.test)
        clf.data_["test"] = {**test.source, "backend": clf.backend_}
    path = clf.save(args.output, overwrite=args.overwrite, extra={"data_options": data_options})
    shutil.rmtree(directory_for(args.output), ignore_errors=True)  # the artifact supersedes its checkpoints

    for split, metrics in clf.metrics_.items():
        render(metrics, clf.classes_, f"{split} ({metrics['rows']} texts, backend {clf.backend_})")
        if "at_0.5" in metrics:
            print(f"{split} macro-F1 {metrics['macro_f1']:.4f} with per-label thresholds tuned on dev, "
                  f"{metrics['at_0.5']['macro_f1']:.4f} at 0.5 (predict uses the tuned thresholds)")
    t = clf.training_
    print(f"best epoch {clf.best_epoch_} of {len(clf.history_)}; trained {t['seconds']:.0f} s at "
          f"{t['samples_per_s']:.0f} samples/s ({clf.precision_}, {t['device']}, {t['threads']} threads)")
    if clf.refit_:
        r = clf.refit_
        print(f"refit on {r['rows']} train + dev texts for {r['epochs']} epochs in {r['seconds']:.0f} s: the saved model "
              "(dev metrics above are the selection run's; test scores the saved model)")
    print(f"saved model to {path}")
    return 0


def _data_options(args: argparse.Namespace) -> dict:
    """The data flags a command was given, defaults filled in (train merges them with --config instead)."""
    from .config import DATA_KEYS

    return {k: default if getattr(args, k, None) is None else getattr(args, k) for k, default in DATA_KEYS.items()}


def _report_dropped(splits: dict) -> None:
    for data in splits.values():
        if data.source["dropped_empty"]:
            print(f"--drop-empty: skipped {data.source['dropped_empty']} rows with empty text in {data.source['path']}",
                  file=sys.stderr)


def _add_backend_flags(p: argparse.ArgumentParser) -> None:
    # backends.BACKENDS, spelled out so that building the parser does not import torch (a test keeps them equal)
    p.add_argument("--backend", default="auto",
                   choices=("auto", "torch", "torch-bf16", "torch-int8", "torch-bf16-compiled", "torch-int8-compiled",
                            "onnx", "onnx-int8"),
                   help="inference engine; auto: the fastest one 'bertclf export' checked on the dev set (never a "
                        "*-compiled one: they compile for 13-27 s on their first call here), else the training "
                        "precision's: torch-bf16 for a bf16-trained model on a CPU with native bf16, else torch")
    p.add_argument("--threads", type=int, help="CPU threads for inference (default: all cores)")


# -------------------------------------------------------------------------------- merge-predictions
def _merge_parser(sub) -> None:
    p = sub.add_parser(
        "merge-predictions",
        help="join the outputs of 'predict --shard I/N' back into one file in input order",
        description="Reads the N shard outputs (any order on the command line), checks that together they hold every "
        "input row exactly once (no shard missing, none overlapping), and writes them in input order without "
        "the input_row column: the same rows an unsharded 'bertclf predict' writes. Streams; memory stays flat.",
    )
    p.add_argument("shards", nargs="+", metavar="SHARD_FILE")
    p.add_argument("--output", "-o", required=True, metavar="OUT", help="merged .csv/.tsv/.jsonl/.parquet")
    p.add_argument("--chunk-rows", type=int, default=8192, metavar="N", help="rows read per shard at a time")
    p.set_defaults(run=cmd_merge)


def cmd_merge(args: argparse.Namespace) -> int:
    from .predict import merge_predictions

    rows = merge_predictions(args.shards, args.output, args.chunk_rows)
    print(f"merged {len(args.shards)} shards: {rows} rows to {args.output}", file=sys.stderr)
    return 0


# ----------------------------------------------------------------------------------------------- tune
def _tune_parser(sub) -> None:
    p = sub.add_parser(
        "tune",
        help="search hyperparameters (Optuna) within a time or trial budget; keep the best model",
        description="Searches learning rate (log scale), batch size, epochs, warmup, weight decay and, where they can "
        "matter, max length and class weighting, each trial an ordinary training run scored on the dev set "
        "(--metric), pruning trials whose per-epoch dev score trails the median. The first trial is the defaults. "
        "The study is stored in OUTPUT/study.db (or --storage URL) and resumed by rerunning the same command. "
        "Writes OUTPUT/best.yaml (for 'train --config'), OUTPUT/model (the best trial's model), report.md, "
        "report.png and trials.csv.",
    )
    p.add_argument("train_file", metavar="TRAIN_FILE")
    p.add_argument("--dev", metavar="FILE", help="dev file that scores every trial (default: a seeded split)")
    p.add_argument("--test", metavar="FILE", help="test file, scored for the report only (never used to choose)")
    p.add_argument("--output", "-o", required=True, metavar="DIR", help="study directory; rerun with it to resume")
    p.add_argument("--budget", metavar="TIME", help="total search time across runs of this study: 90s, 45m, 1h")
    p.add_argument("--trials", type=int, metavar="N", help="stop once the study has N finished trials")
    p.add_argument("--storage", metavar="URL", help="SQLAlchemy URL of a shared study database, e.g. "
                   "postgresql://user:pw@host/db, so several machines work on one study (default: OUTPUT/study.db)")
    p.add_argument("--study-name", default="bertclf", help="study name inside the storage (default: bertclf)")
    p.add_argument("--space", metavar="FILE.yaml", help="search-space overrides, e.g. 'lr: {low: 1e-5, high: 1e-4, log: true}', "
                   "'batch-size: [16, 32]', 'epochs: 3' (fixed)")
    p.add_argument("--config", metavar="FILE.yaml", help="fixed settings for every trial (same keys as train)")
    p.add_argument("--model", help="HF model id or local directory (default: the packaged all-MiniLM-L6-v2)")
    p.add_argument("--task", choices=TASKS)
    p.add_argument("--metric", choices=METRICS,
                   help="dev metric to maximise (default: macro_f1, as train)")
    p.add_argument("--seed", type=int, help="seed of every trial and of the sampler (default: 42)")
    _add_data_flags(p)
    p.add_argument("--quiet", action="store_true", help="no per-trial lines")
    p.set_defaults(run=cmd_tune)


def cmd_tune(args: argparse.Namespace) -> int:
    from .config import DATA_KEYS, merge
    from .data import read_splits
    from .metrics import check_metric
    from .tune import parse_budget, tune

    options = merge(args.config, vars(args))
    data_options = {k: options.pop(k) for k in DATA_KEYS}
    budget = parse_budget(args.budget) if args.budget else None
    splits, task, _ = read_splits(args.train_file, args.dev, args.test, task=options["task"], **data_options)
    check_metric(options["metric"], task == "multilabel")
    train, dev, test = splits["train"], splits.get("dev"), splits.get("test")
    result = tune(
        train.texts, train.labels, {**options, "task": task}, args.output,
        dev=(dev.texts, dev.labels) if dev else None, test=(test.texts, test.labels) if test else None,
        trials=args.trials, budget_s=budget, storage=args.storage, study_name=args.study_name, space_file=args.space,
        data_info={"train": train.source, **({"dev": dev.source} if dev else {})},
        extra_record={"data_options": data_options}, verbose=not args.quiet,
    )
    versus = f" (defaults: {result.default_value:.4f})" if result.default_value is not None else ""
    print(f"best dev {options['metric']} {result.best_value:.4f}{versus} after {result.trials} trials")
    print(f"best settings: {result.best_yaml}; model: {result.model_dir}; report: {os.path.join(args.output, 'report.md')}")
    return 0


# --------------------------------------------------------------------------------------------- export
def _export_parser(sub) -> None:
    p = sub.add_parser(
        "export",
        help="add ONNX (and int8) inference models to a saved model, checked against torch on its dev set",
        description="Writes MODEL_DIR/onnx/model.onnx (fp32, ONNX Runtime fusions) and, with --int8, a dynamically "
        "quantised model-int8.onnx. Each backend (the torch ones too; torch-bf16 and torch-int8 only where the CPU "
        "has bf16 or int8 dot-product instructions, else they run slower than fp32) is scored on the model's dev set "
        "(texts/s, accuracy, agreement with torch fp32) and recorded in bertclf.json, where "
        "'predict --backend auto' finds them. A backend losing more than 0.5 point of dev accuracy is never picked by "
        "auto; an int8 ONNX model doing so is refused unless --force.",
    )
    p.add_argument("model_dir", metavar="MODEL_DIR")
    p.add_argument("--onnx", action="store_true", required=True, help="export to ONNX (the only format for now)")
    p.add_argument("--int8", action="store_true", help="also export a dynamically quantised int8 model")
    p.add_argument("--force", action="store_true", help="keep an int8 model that failed the accuracy check")
    p.add_argument("--dev", metavar="FILE", help="labelled file to check on (default: the dev data the model was selected on)")
    p.set_defaults(run=cmd_export)


def cmd_export(args: argparse.Namespace) -> int:
    from .export import export

    results = export(args.model_dir, int8=args.int8, force=args.force, dev_file=args.dev)
    for name, row in results.items():
        status = "" if row["accepted"] else "  (not accepted: auto will not pick it)"
        print(f"{name:<11} {row['texts_per_s']:8.1f} texts/s  accuracy {row['accuracy']:.4f} ({row['delta'] * 100:+.2f} pt)  "
              f"agreement {row['agreement']:.4f}{status}")
    return 0


# ------------------------------------------------------------------------------------------- validate
def _validate_parser(sub) -> None:
    p = sub.add_parser(
        "validate",
        help="check data files the way train would, and report duplicates, leakage, imbalance, lengths",
        description="Runs every check 'bertclf train' runs on its inputs, before any model is loaded, then reports "
        "duplicates, texts shared between train and dev/test (leakage), the label distribution and imbalance, "
        "and the length distribution in tokens with how many texts --max-length would truncate. "
        "Exit code 0: train would accept the files; 2: it would refuse them (the reason is printed).",
    )
    p.add_argument("train_file", metavar="TRAIN_FILE")
    p.add_argument("--dev", metavar="FILE")
    p.add_argument("--test", metavar="FILE")
    p.add_argument("--task", choices=TASKS, default="auto")
    p.add_argument("--model", help="whose tokenizer counts the tokens (default: the packaged all-MiniLM-L6-v2)")
    p.add_argument("--max-length", type=int, help="token limit to check against (default: train's default)")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    _add_data_flags(p)
    p.set_defaults(run=cmd_validate)


def cmd_validate(args: argparse.Namespace) -> int:
    from . import validation
    from .data import read_splits
    from .modeling import load_tokenizer, resolve_max_length, resolve_model

    splits, task, classes = read_splits(args.train_file, args.dev, args.test, task=args.task, **_data_options(args))
    result = validation.report(splits, task == "multilabel")
    source = resolve_model(args.model)
    tokenizer = load_tokenizer(source)
    max_length = resolve_max_length(args.max_length, tokenizer, source)
    for name, data in splits.items():
        result[name]["tokens"] = validation.token_lengths(tokenizer, data.texts, max_length)
    summary = {"task": task, "classes": classes, "splits": result, "warnings": validation.warnings(result)}
    if args.json:
        print(json.dumps(summary, indent=2, ensure_ascii=False))
        return 0
    _report_dropped(splits)
    print(f"task {task}, {len(classes)} classes")
    for name, split in result.items():
        tokens, labels = split["tokens"], split["labels"]
        shown = ", ".join(f"{label} {count}" for label, count in list(labels["counts"].items())[:12])
        more = f", … {len(labels['counts']) - 12} more" if len(labels["counts"]) > 12 else ""
        print(f"{name}: {split['rows']} rows; labels {shown}{more} (largest/smallest {labels['imbalance']:.1f}x)")
        print(f"  duplicates {split['duplicate_rows']} rows, {split['conflicting_texts']} texts with conflicting labels"
              + (f"; {split['leaked_from_train']['rows']} rows also in train" if "leaked_from_train" in split else ""))
        print(f"  tokens p50 {tokens['p50']} p90 {tokens['p90']} p99 {tokens['p99']} max {tokens['max']}; "
              f"{tokens['truncated']} texts longer than --max-length {tokens['max_length']}")
    for line in summary["warnings"]:
        print(f"warning: {line}")
    print("ok: train would accept these files")
    return 0


# ------------------------------------------------------------------------------------------- evaluate
def _evaluate_parser(sub) -> None:
    p = sub.add_parser(
        "evaluate",
        help="score a saved model on a labelled file",
        description="Accuracy, macro/micro/weighted F1, per-class precision/recall/F1/support and the confusion "
        "matrix (multi-label: micro/macro F1, subset accuracy, per-label F1). Prints a table and writes "
        "metrics.json and a PNG into --output-dir.",
    )
    p.add_argument("model_dir", metavar="MODEL_DIR")
    p.add_argument("file", metavar="FILE")
    p.add_argument("--output-dir", metavar="DIR", help="where metrics.json and the PNG go (default: ./eval-<FILE stem>)")
    _add_data_flags(p)
    _add_backend_flags(p)
    p.set_defaults(run=cmd_evaluate)


def cmd_evaluate(args: argparse.Namespace) -> int:
    from .artifact import atomic_write_text, read_record
    from .data import check_known_labels, read_labeled
    from .estimator import TextClassifier
    from .metrics import plot, render

    record = read_record(args.model_dir)
    data, _ = read_labeled(args.file, task=record["task"], **_data_options(args))
    check_known_labels(data.labels, record["task"] == "multilabel", record["classes"], args.file)
    clf = TextClassifier.load(args.model_dir, backend=args.backend, threads=args.threads)
    metrics = clf.evaluate(data.texts, data.labels, where=args.file)
    out_dir = args.output_dir or f"eval-{Path(args.file).stem}"
    os.makedirs(out_dir, exist_ok=True)
    report = {"model": os.path.abspath(args.model_dir), "backend": clf.backend_, "data": data.source,
              "classes": clf.classes_, **metrics}
    atomic_write_text(os.path.join(out_dir, "metrics.json"), json.dumps(report, indent=2, ensure_ascii=False) + "\n")
    png = os.path.join(out_dir, "confusion_matrix.png" if "confusion_matrix" in metrics else "per_label_f1.png")
    plot(metrics, clf.classes_, png)
    render(metrics, clf.classes_, f"{args.file} ({metrics['rows']} texts, backend {clf.backend_})")
    print(f"wrote {os.path.join(out_dir, 'metrics.json')} and {png}")
    return 0


# -------------------------------------------------------------------------------------------- predict
def _predict_parser(sub) -> None:
    p = sub.add_parser(
        "predict",
        help="label the texts of a file (or stdin) with a saved model",
        description="Adds to each input row the predicted label(s) ('predicted') and the probability of every "
        "class ('prob_<class>', in the model's label order). FILE is CSV, TSV, JSONL or Parquet with a text "
        "column, or '-' for one text per line on stdin. Output by extension of -o, or JSONL on stdout.",
    )
    p.add_argument("model_dir", metavar="MODEL_DIR")
    p.add_argument("file", metavar="FILE", help="input file, or - for stdin (one text per line)")
    p.add_argument("--output", "-o", metavar="OUT", help="output .csv/.tsv/.jsonl/.parquet (default: JSONL on stdout)")
    p.add_argument("--text-column", default="text", help="column holding the text (default: text)")
    p.add_argument("--top-k", type=int, metavar="K", help="also list the K most probable classes per text")
    p.add_argument("--chunk-rows", type=int, default=8192, metavar="N",
                   help="rows read, scored and written at a time: memory stays flat in the input size (default: 8192)")
    p.add_argument("--shard", metavar="I/N",
                   help="score only shard I of N (0-based: rows r with r %% N == I) and add an input_row column; "
                        "join the N outputs with 'bertclf merge-predictions'")
    _add_backend_flags(p)
    p.set_defaults(run=cmd_predict)


def _stdin_tables(chunk_rows: int):
    """One text per line of stdin, in chunks, as tables with line numbers."""
    import itertools

    import pandas as pd

    from .data import Table

    numbered = enumerate((line.rstrip("\r\n") for line in sys.stdin), start=1)
    while chunk := list(itertools.islice(numbered, chunk_rows)):
        numbers, texts = zip(*chunk)
        yield Table("<stdin>", pd.DataFrame({"text": list(texts)}), list(numbers), "line")


def cmd_predict(args: argparse.Namespace) -> int:
    import time

    from tqdm.auto import tqdm

    from .artifact import read_record
    from .data import iter_tables, read_texts
    from .estimator import TextClassifier
    from .predict import SHARD_COLUMN, PredictionWriter, output_format, parse_shard, prediction_frame

    read_record(args.model_dir)
    shard = parse_shard(args.shard) if args.shard else None
    if args.output not in (None, "-"):
        output_format(args.output)
    if args.top_k is not None and args.top_k < 1:
        raise BertclfError(f"--top-k {args.top_k}: must be at least 1")
    if args.chunk_rows < 1:
        raise BertclfError(f"--chunk-rows {args.chunk_rows}: must be at least 1")
    if args.file == "-":
        args.text_column = "text"
        chunks = _stdin_tables(args.chunk_rows)
    else:
        chunks = iter_tables(args.file, args.chunk_rows)
        read_texts(next(iter_tables(args.file, 1)), args.text_column, empty="keep")  # fail before loading the model

    clf = TextClassifier.load(args.model_dir, backend=args.backend, threads=args.threads)
    to_file = args.output not in (None, "-")
    flat = to_file and output_format(args.output) in ("csv", "tsv")
    empty, started = 0, time.perf_counter()
    bar = tqdm(unit=" texts", disable=not to_file, file=sys.stderr)
    with PredictionWriter(args.output) as writer:
        first_row = 0
        for table in chunks:
            rows = range(first_row, first_row + len(table.frame))
            first_row += len(table.frame)
            if shard:
                mine = [r % shard[1] == shard[0] for r in rows]
                table = table.subset(mine)
                if table.frame.empty:
                    continue
            texts, _ = read_texts(table, args.text_column, empty="keep")
            empty += sum(1 for t in texts if not t.strip())
            predicted, probs = clf.predict_with_proba(texts)
            frame = prediction_frame(table.frame, probs, predicted, clf.classes_, args.top_k, flat)
            if shard:
                frame.insert(0, SHARD_COLUMN, [r for r, keep in zip(rows, mine) if keep])
            writer.write(frame)
            bar.update(len(texts))
    bar.close()
    if empty:
        print(f"warning: {empty} empty text(s) were scored as empty strings", file=sys.stderr)
    if to_file:
        seconds = time.perf_counter() - started
        print(f"wrote {writer.rows} predictions to {args.output} ({writer.rows / seconds:.0f} texts/s, "
              f"backend {clf.backend_})", file=sys.stderr)
    return 0


# ---------------------------------------------------------------------------------------------- serve
def _serve_parser(sub) -> None:
    from .serve import DEFAULT_LANES, Limits

    d = Limits()
    p = sub.add_parser(
        "serve",
        help="serve a saved model over HTTP, batching concurrent requests together",
        description="POST /v1/classify {\"texts\": [...], \"top_k\": k}; GET /v1/model, /healthz, /readyz, /metrics "
        "(Prometheus); OpenAPI docs at /docs. Concurrent requests are queued and run together, up to "
        "--max-batch-tokens padded tokens or --max-wait-ms, on one thread that owns the model. SIGTERM drains "
        "the requests in flight and exits 0.",
    )
    p.add_argument("model_dir", metavar="MODEL_DIR")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default: 127.0.0.1, loopback only)")
    p.add_argument("--port", type=int, default=8000, help="TCP port (default: 8000)")
    _add_backend_flags(p)
    p.add_argument("--max-batch-tokens", type=int, default=d.max_batch_tokens, metavar="N",
                   help=f"padded tokens (longest text x texts) per model call (default: {d.max_batch_tokens})")
    p.add_argument("--max-wait-ms", type=float, default=d.max_wait_ms, metavar="MS",
                   help=f"how long a batch waits for more requests once it has one (default: {d.max_wait_ms})")
    p.add_argument("--lanes", type=int, default=DEFAULT_LANES, metavar="N",
                   help=f"model worker threads sharing --threads; a batch forms while another runs (default: {DEFAULT_LANES})")
    p.add_argument("--max-queue", type=int, default=d.max_queue_texts, metavar="TEXTS",
                   help=f"texts allowed to wait; beyond it requests get 503 + Retry-After (default: {d.max_queue_texts})")
    p.add_argument("--max-texts", type=int, default=d.max_texts, help=f"texts per request (default: {d.max_texts}; more: 413)")
    p.add_argument("--max-chars", type=int, default=d.max_chars, help=f"characters per text (default: {d.max_chars}; more: 413)")
    p.add_argument("--max-body-bytes", type=int, default=d.max_body_bytes, help=f"request body size (default: {d.max_body_bytes}; more: 413)")
    p.add_argument("--api-key-env", metavar="NAME", help="require 'Authorization: Bearer <key>' with the key read from env var NAME")
    p.add_argument("--log-level", default="info", choices=("critical", "error", "warning", "info", "debug"),
                   help="uvicorn log level (default: info)")
    p.set_defaults(run=cmd_serve)


def cmd_serve(args: argparse.Namespace) -> int:
    from .artifact import read_record
    from .serve import Limits, serve

    read_record(args.model_dir)
    limits = Limits(max_texts=args.max_texts, max_chars=args.max_chars, max_body_bytes=args.max_body_bytes,
                    max_queue_texts=args.max_queue, max_batch_tokens=args.max_batch_tokens, max_wait_ms=args.max_wait_ms)
    small = [f"--{name.replace('_', '-')}" for name, value in limits.__dict__.items() if value < (0 if name == "max_wait_ms" else 1)]
    if args.lanes < 1:
        small.append("--lanes")
    if small:
        raise BertclfError(f"{small[0]} must be at least {0 if small[0] == '--max-wait-ms' else 1}")
    serve(args.model_dir, args.host, args.port, args.backend, args.threads, limits, args.api_key_env, args.log_level, args.lanes)
    return 0


# ----------------------------------------------------------------------------------------------- info
def _info_parser(sub) -> None:
    p = sub.add_parser("info", help="show a saved model's labels, task, base model, data and metrics")
    p.add_argument("model_dir", metavar="MODEL_DIR")
    p.add_argument("--json", action="store_true", help="print the whole bertclf.json record")
    p.set_defaults(run=cmd_info)


def cmd_info(args: argparse.Namespace) -> int:
    from .artifact import read_record
    from .metrics import headline

    record = read_record(args.model_dir)
    if args.json:
        print(json.dumps(record, indent=2, ensure_ascii=False))
        return 0
    print(f"model dir   {os.path.abspath(args.model_dir)}")
    print(f"task        {record['task']} ({len(record['classes'])} classes)")
    counts = record["data"]["train"].get("label_counts", {})
    print(f"labels      {', '.join(f'{c} ({counts[c]})' if c in counts else c for c in record['classes'])}")
    print(f"base model  {record['base_model']}")
    print(f"precision   {record['precision']}; best epoch {record['best_epoch']} of {len(record['history'])}")
    if record.get("refit"):
        print(f"refit       on {record['refit']['rows']} train + dev texts for {record['refit']['epochs']} epochs: "
              "the saved weights (dev metrics are the selection run's)")
    for split, source in record["data"].items():
        fingerprint = f" sha256 {source['sha256'][:16]}…" if source.get("sha256") else ""
        where = source.get("path") or source.get("split", "")
        print(f"data {split:<6} {source.get('rows', '?')} rows {where}{fingerprint}")
    for split, metrics in record["metrics"].items():
        shown = "  ".join(f"{k} {v:.4f}" for k, v in headline(metrics).items())
        print(f"{split:<11} {shown}")
    print(f"versions    {', '.join(f'{k} {v}' for k, v in record['versions'].items())}")
    return 0


# ----------------------------------------------------------------------------------------------- main
def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="bertclf",
        description="Fine-tune, evaluate and run BERT-family text classifiers.",
    )
    parser.add_argument("--version", action="version", version=f"bertclf {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for add in (_train_parser, _validate_parser, _evaluate_parser, _predict_parser, _merge_parser, _export_parser, _serve_parser, _tune_parser, _info_parser):
        add(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        _quiet_transformers()
        return args.run(args)
    except BertclfError as err:
        print(f"error: {err}", file=sys.stderr)
        return EXIT_USAGE
    except BertclfInterrupted as stop:
        print(stop, file=sys.stderr)
        return EXIT_INTERRUPTED
    except KeyboardInterrupt:
        print("interrupted: nothing was written", file=sys.stderr)
        return EXIT_INTERRUPTED
