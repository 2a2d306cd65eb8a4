"""Training throughput: bertclf against Hugging Face Trainer, same model, data, epochs, learning rate and seed.

Runs, each in its own process (so its peak RSS is its own):
  hf_default       Trainer as run_classification.py configures it by default: pad to max_length 128, fp32,
                   batch 8, random sampler
  hf_dynamic       the same with dynamic padding (DataCollatorWithPadding) and length grouping
  bertclf          TextClassifier defaults (length-grouped batches of 32 cut at 1.25x an average batch's padded
                   tokens, precision auto, attention auto)
  bertclf_nocap    the same without the token cap (batch_tokens=0): batches of 32 rows whatever their length
  bertclf_compile  the defaults with compile=True (torch.compile, one-off compile time included)
  bertclf_tokens   the defaults with batch_tokens=1024 (Trainer's 8 x 128), batches of at most 32 rows
  bertclf_torch_dropout  the defaults with torch's own dropout (modules and attention probabilities) instead of
                   bertclf's cheap masks (what they save)
  bertclf_fp32     the defaults with precision fp32 (on a GPU, where auto is bf16: which one trains faster)
Dev accuracy is computed for every run with the same fp32 code path on the same dev texts.

    python bench/training.py                       # sst2_sentences and banking77, 3 epochs, lr 1e-4, the first four runs
    python bench/training.py --datasets sst2_sentences,banking77:3000   # NAME:N trains on a seeded N-row sample
    python bench/training.py --datasets sst2_sentences --runs hf_default,bertclf
Writes docs/benchmarks/training.{json,md} (training-gpu.{json,md} where torch sees a CUDA GPU: both runs train
there, Trainer as it does by default); a dataset run again replaces its table, the others are kept.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time

import numpy as np

from common import DOCS, hardware, load_split, matmul_ceiling_gflops, peak_rss_mb, run_child, write_results

RUNS = ("hf_default", "hf_dynamic", "bertclf", "bertclf_nocap", "bertclf_compile", "bertclf_tokens", "bertclf_torch_dropout",
        "bertclf_fp32")
BATCH_TOKENS = 1024  # bertclf_tokens: Trainer's default batch in tokens (8 rows x 128)
HF_MAX_LENGTH = 128  # run_classification.py's max_seq_length default


def useful_gflop(model, lengths: list[int], epochs: int) -> float:
    """FLOPs that real (unpadded) tokens need: 6·params per token for the matmuls, 12·L·h·s² per text for attention."""
    config = model.config
    params = sum(p.numel() for p in model.base_model.encoder.parameters())
    s = np.asarray(lengths, dtype=np.float64)
    per_epoch = 6 * params * s.sum() + 12 * config.num_hidden_layers * config.hidden_size * (s**2).sum()
    return per_epoch * epochs / 1e9


def dev_accuracy(model, tokenizer, texts: list[str], labels: list[str], classes: list[str]) -> float:
    from bertclf.batching import encode
    from bertclf.predict import predict_logits

    logits = predict_logits(model.float().eval(), encode(tokenizer, texts, HF_MAX_LENGTH), tokenizer.pad_token_id)
    return float(np.mean(np.asarray(classes)[logits.argmax(axis=1)] == np.asarray(labels)))


def hf_trainer(name: str, data: dict, classes: list[str], epochs: int, lr: float, seed: int) -> dict:
    import torch
    from transformers import DataCollatorWithPadding, Trainer, TrainingArguments, default_data_collator, set_seed

    from bertclf.modeling import load_classifier, resolve_model

    set_seed(seed)
    tokenizer, model = load_classifier(resolve_model(None), classes)
    texts, labels = data["train"]
    padded = name == "hf_default"
    enc = tokenizer(texts, truncation=True, max_length=HF_MAX_LENGTH, padding="max_length" if padded else False)
    index = {c: i for i, c in enumerate(classes)}
    rows = [{**{k: enc[k][i] for k in enc.keys()}, "labels": index[labels[i]]} for i in range(len(texts))]
    with tempfile.TemporaryDirectory() as out:
        args = TrainingArguments(
            output_dir=out, per_device_train_batch_size=8, learning_rate=lr, num_train_epochs=epochs, seed=seed,
            save_strategy="no", logging_strategy="no", report_to="none", disable_tqdm=True,
            use_cpu=not torch.cuda.is_available(),
            train_sampling_strategy="random" if padded else "group_by_length",
        )
        trainer = Trainer(
            model=model, args=args, train_dataset=rows, processing_class=tokenizer,
            data_collator=default_data_collator if padded else DataCollatorWithPadding(tokenizer),
        )
        metrics = trainer.train().metrics
    lengths = [len(ids) for ids in tokenizer(texts, truncation=True, max_length=HF_MAX_LENGTH)["input_ids"]]
    return {
        "samples_per_s": round(metrics["train_samples_per_second"], 2),
        "train_seconds": round(metrics["train_runtime"], 1),
        "dev_accuracy": dev_accuracy(model, tokenizer, *data["dev"], classes),
        "precision": "fp32",
        "useful_gflop": useful_gflop(model, lengths, epochs),
    }


def bertclf_run(name: str, data: dict, classes: list[str], epochs: int, lr: float, seed: int) -> dict:
    from bertclf import TextClassifier

    if name == "bertclf_torch_dropout":  # this child process only: fit() keeps nn.Dropout and eager attention
        import contextlib

        import bertclf.estimator

        bertclf.estimator.cheap_dropout = lambda model, enabled: contextlib.nullcontext()

    clf = TextClassifier(epochs=epochs, lr=lr, seed=seed, verbose=False, compile=name == "bertclf_compile",
                         precision="fp32" if name == "bertclf_fp32" else "auto",
                         batch_tokens={"bertclf_tokens": BATCH_TOKENS, "bertclf_nocap": 0}.get(name))
    clf.fit(*data["train"], eval_set=data["dev"])
    lengths = [len(ids) for ids in clf.tokenizer_(data["train"][0], truncation=True, max_length=clf.max_length_)["input_ids"]]
    return {
        "samples_per_s": clf.training_["samples_per_s"],
        "train_seconds": clf.training_["seconds"],
        "dev_accuracy": clf.metrics_["dev"]["accuracy"],  # the best epoch on dev, as the artifact holds it
        "dev_accuracy_last_epoch": clf.history_[-1]["dev"]["accuracy"],
        "best_epoch": clf.best_epoch_,
        "batch_tokens": clf.training_["batch_tokens"],
        "precision": clf.precision_,
        "attention": clf.training_["attention"],
        "useful_gflop": useful_gflop(clf.model_, lengths, len(clf.history_)),
    }


def child(name: str, dataset: str, epochs: int, lr: float, seed: int, max_train: int | None) -> None:
    import transformers

    transformers.logging.set_verbosity_error()
    data = load_split(dataset, max_train=max_train)
    classes = sorted(set(data["train"][1]))
    started = time.perf_counter()
    result = (hf_trainer if name.startswith("hf_") else bertclf_run)(name, data, classes, epochs, lr, seed)
    result.update(name=name, wall_seconds=round(time.perf_counter() - started, 1), peak_rss_mb=round(peak_rss_mb(), 1),
                  train_rows=len(data["train"][0]), dev_rows=len(data["dev"][0]))
    print(json.dumps(result))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--datasets", default="sst2_sentences,banking77")
    parser.add_argument("--runs", default=",".join(RUNS[:4]))
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--lr", type=float, default=1e-4)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--max-train", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--dataset", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child, args.dataset, args.epochs, args.lr, args.seed, args.max_train)
        return

    import torch

    device = "cuda" if torch.cuda.is_available() else "cpu"
    stem = "training-gpu" if device == "cuda" else "training"
    ceilings = {p: round(matmul_ceiling_gflops(p, device=device), 1) for p in ("fp32", "bf16", *(["fp16"] if device == "cuda" else []))}
    command = "python bench/training.py " + " ".join(sys.argv[1:])
    earlier = DOCS / f"{stem}.json"
    kept = []
    if earlier.exists():  # other datasets' tables from earlier runs stay, each with its own command
        old = json.loads(earlier.read_text())
        kept = [{k: v for k, v in t.items() if k != "other_datasets"} for t in [old, *old.get("other_datasets", [])]]
    tables = []
    for spec in args.datasets.split(","):
        dataset, _, max_train = spec.partition(":")
        runs = []
        for name in args.runs.split(","):
            print(f"{dataset}: {name} ...", file=sys.stderr, flush=True)
            common = ["--dataset", dataset, "--epochs", str(args.epochs), "--lr", str(args.lr), "--seed", str(args.seed)]
            common += ["--max-train", max_train] if max_train else []
            row = run_child(__file__, ["--child", name, *common])
            gflops = row.pop("useful_gflop") / row["train_seconds"]
            row["useful_gflops"] = round(gflops, 1)
            row["share_of_ceiling"] = round(gflops / ceilings[row["precision"]], 3)
            row["command"] = command
            row["matmul_ceiling_gflops"] = ceilings
            runs.append(row)
            print(f"  {json.dumps(row)}", file=sys.stderr, flush=True)
        earlier_table = next((t for t in kept if t["dataset"] == dataset and t.get("train_sample") == (int(max_train) if max_train else None)), None)
        if earlier_table and "hf_default" not in args.runs.split(","):
            # Some runs repeated (e.g. after a change to bertclf): they join the earlier table and its baseline,
            # which each such row says, since speed ratios across runs carry the machine's drift.
            for row in runs:
                row["baseline_from_earlier_run"] = True
            for row in earlier_table["runs"]:
                row.setdefault("command", earlier_table["command"])
                row.setdefault("matmul_ceiling_gflops", earlier_table["matmul_ceiling_gflops"])
            runs = sorted([r for r in earlier_table["runs"] if r["name"] not in args.runs.split(",")] + runs,
                          key=lambda r: RUNS.index(r["name"]))
        base = next((r for r in runs if r["name"] == "hf_default"), runs[0])
        for row in runs:
            row["ratio"] = round(row["samples_per_s"] / base["samples_per_s"], 2)
        tables.append({"dataset": dataset, "train_sample": int(max_train) if max_train else None, "runs": runs,
                       "epochs": args.epochs, "lr": args.lr, "seed": args.seed, "matmul_ceiling_gflops": ceilings,
                       "command": command, "notes": earlier_table.get("notes", []) if earlier_table and "hf_default" not in args.runs.split(",") else []})
        # Written after every dataset, so a long run that is stopped keeps what it finished.
        done = {t["dataset"] for t in tables}
        every = [t for t in kept if t["dataset"] not in done] + tables
        payload = {**every[0], "other_datasets": every[1:]}
        write_results(stem, payload, markdown(every))


def markdown(tables: list[dict]) -> str:
    lines = [
        "# Training throughput",
        "",
        f"MiniLM-L6 (all-MiniLM-L6-v2), {hardware()}; every run of a table has the same data, "
        "epochs, learning rate and seed. Useful GFLOP/s counts only the FLOPs real (unpadded) tokens need; the ceiling "
        "is a large matmul measured in the same run. Dev accuracy: the best epoch's, scored by the same fp32 code for every run.",
        "",
    ]
    for table in tables:
        first, ceilings = table["runs"][0], table["matmul_ceiling_gflops"]
        sample = ", a seeded sample of the train split" if table["train_sample"] else ""
        lines += [f"## {table['dataset']} ({first['train_rows']} train{sample} / {first['dev_rows']} dev)", "",
                  f"{table['epochs']} epochs, lr {table['lr']:g}, seed {table['seed']}; matmul ceiling fp32 "
                  + ", ".join(sorted({f"{r.get('matmul_ceiling_gflops', ceilings)['fp32']}" for r in table["runs"]}))
                  + " GFLOP/s, bf16 " + ", ".join(sorted({f"{r.get('matmul_ceiling_gflops', ceilings)['bf16']}" for r in table["runs"]}))
                  + " GFLOP/s (measured in each run; a row's share uses its own run's). Reproduce: "
                  + ", then ".join(f"`{c}`" for c in dict.fromkeys(r.get("command", table["command"]) for r in table["runs"])), "",
                  "| run | precision | samples/s | ratio | dev accuracy | peak RSS MiB | useful GFLOP/s | share of ceiling | train s |",
                  "|---|---|---|---|---|---|---|---|---|"]
        for r in table["runs"]:
            later = " (rerun; baseline from the earlier run)" if r.get("baseline_from_earlier_run") else ""
            lines.append(f"| {r['name']}{later} | {r['precision']} | {r['samples_per_s']:.1f} | {r['ratio']:.2f}x | "
                         f"{r['dev_accuracy']:.4f} | {r['peak_rss_mb']:.0f} | {r['useful_gflops']:.1f} | "
                         f"{r['share_of_ceiling']:.0%} | {r['train_seconds']:.0f} |")
        lines += [""] + [f"* {note}" for note in table.get("notes", [])] + [""]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
