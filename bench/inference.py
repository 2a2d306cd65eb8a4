"""Inference throughput: our backends against the Hugging Face pipeline, same model, same texts.

In one process, in interleaved rounds (so drift in machine load hits every contender alike):
  pipeline          transformers.pipeline("text-classification") with its default batch size (the baseline)
  pipeline_b32      the same with batch_size=32
  torch, torch-bf16, torch-int8, torch-bf16-compiled, torch-int8-compiled, onnx, onnx-int8
                    bertclf's backends (after 'bertclf export --onnx --int8', which the script runs if needed)
Every contender is called once before the timed rounds (first calls allocate, pick kernels and, for the compiled
backend, compile); that first call's time is reported on its own.
Texts: SST-2 dev+test sentences (short) and, separately, IMDB test reviews (long, truncated as the model was
trained). Peak RSS of each contender is measured in a child process that scores the short texts once.
Several --model directories (SST-2 classifiers) are measured in the same rounds, each with the same contenders, so
models compare as ratios on one machine at one time; --backends picks the contenders after the baseline pipeline,
--sst2-rows a sample of the short texts (a large model's rounds take long), --stem the result files' name.

    python bench/inference.py --model runs/sst2-minilm        # the model scripts/demo.sh trains
    python bench/inference.py --model MINILM_DIR MPNET_DIR --backends torch onnx onnx-int8 --stem inference-models
Writes docs/benchmarks/inference.{json,md} (or STEM.{json,md}).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time

import numpy as np

from common import DATASETS, DOCS, matmul_ceiling_gflops, peak_rss_mb, run_child, write_results

OURS = ("torch", "torch-bf16", "torch-int8", "torch-bf16-compiled", "torch-int8-compiled", "onnx", "onnx-int8")


def texts_of(kind: str, rows: int) -> tuple[list[str], list[str]]:
    """SST-2 dev+test sentences (all of them when rows is 0) or a sample of IMDB test reviews, seeded."""
    import pandas as pd

    if kind == "sst2":
        frames = [pd.read_csv(DATASETS / "sst2_sentences" / f"{s}.csv", dtype=str, keep_default_na=False) for s in ("dev", "test")]
        frame = pd.concat(frames, ignore_index=True)
        frame = frame.sample(rows, random_state=0) if rows else frame
    else:
        frame = pd.read_csv(DATASETS / "imdb" / "test.csv", dtype=str, keep_default_na=False).sample(rows, random_state=0)
    return frame["text"].tolist(), frame["label"].tolist()


def contender(name: str, model_dir: str):
    """A function texts -> probability matrix in the model's class order."""
    from bertclf import TextClassifier

    classes = TextClassifier.load(model_dir).classes_
    if name.startswith("pipeline"):
        from transformers import pipeline

        pipe = pipeline("text-classification", model=model_dir, top_k=None, device="cpu")
        kwargs = {"batch_size": 32} if name == "pipeline_b32" else {}

        def run(texts):
            out = pipe(texts, truncation=True, **kwargs)
            return np.asarray([[{d["label"]: d["score"] for d in row}[c] for c in classes] for row in out])

        return run
    clf = TextClassifier.load(model_dir, backend=name)
    clf.verbose = False
    return clf.predict_proba


def useful_gflop(model_dir: str, texts: list[str]) -> float:
    """Forward FLOPs the real tokens need: 2·params per token plus 4·L·h·s² attention per text."""
    from bertclf import TextClassifier

    clf = TextClassifier.load(model_dir)
    config = clf.model_.config
    params = sum(p.numel() for p in clf.model_.base_model.encoder.parameters())
    lengths = np.asarray([len(ids) for ids in clf.tokenizer_(texts, truncation=True, max_length=clf.max_length_)["input_ids"]], float)
    return (2 * params * lengths.sum() + 4 * config.num_hidden_layers * config.hidden_size * (lengths**2).sum()) / 1e9


def child(name: str, model_dir: str, sst2_rows: int) -> None:
    import transformers

    transformers.logging.set_verbosity_error()
    texts, _ = texts_of("sst2", sst2_rows)
    contender(name, model_dir)(texts)
    print(json.dumps({"name": name, "peak_rss_mb": round(peak_rss_mb(), 1)}))


def model_label(model_dir: str) -> str:
    """What a row calls its model when several are measured: the encoder it was fine-tuned from, and its size."""
    from bertclf import TextClassifier

    clf = TextClassifier.load(model_dir)
    base = json.load(open(os.path.join(model_dir, "bertclf.json")))["base_model"]
    return f"{os.path.basename(base.rstrip('/'))} ({sum(p.numel() for p in clf.model_.parameters()) / 1e6:.1f}M)"


def measure(kind: str, names: list[str], model_dirs: list[str], rounds: int, rows: int) -> dict:
    """Every (model, contender) pair scores the texts once per round, interleaved; rows in model-then-contender order."""
    texts, labels = texts_of(kind, rows)
    pairs = [(model_dir, name) for model_dir in model_dirs for name in names]
    runs = {pair: contender(pair[1], pair[0]) for pair in pairs}
    seconds = {pair: [] for pair in pairs}
    probs, first_call = {}, {}
    for pair in pairs:
        start = time.perf_counter()
        runs[pair](texts)
        first_call[pair] = time.perf_counter() - start
        print(f"  {kind} first call {pair}: {first_call[pair]:.1f} s", file=sys.stderr)
    for r in range(rounds):
        for pair in pairs:  # interleaved: every round runs every contender once
            start = time.perf_counter()
            probs[pair] = runs[pair](texts)
            seconds[pair].append(time.perf_counter() - start)
            print(f"  {kind} round {r + 1}/{rounds} {pair}: {len(texts) / seconds[pair][-1]:.1f} texts/s", file=sys.stderr)
    from bertclf import TextClassifier

    rows = []
    for model_dir in model_dirs:
        classes = np.asarray(TextClassifier.load(model_dir).classes_)
        reference = probs[(model_dir, "torch")].argmax(axis=1)
        gflop = useful_gflop(model_dir, texts)
        label = model_label(model_dir) if len(model_dirs) > 1 else None
        for name in names:
            best = statistics.median(seconds[(model_dir, name)])
            predicted = probs[(model_dir, name)].argmax(axis=1)
            rows.append({
                "name": name,
                **({"model": label, "model_dir": model_dir} if label else {}),
                "texts_per_s": round(len(texts) / best, 1),
                "accuracy": float(np.mean(classes[predicted] == np.asarray(labels))),
                "agreement": float(np.mean(predicted == reference)),
                "useful_gflops": round(gflop / best, 1),
                "first_call_s": round(first_call[(model_dir, name)], 1),
            })
    return {"texts": f"{kind}: {len(texts)} texts", "rows": rows}


STREAMING_BACKENDS = ("auto", "torch-bf16")  # auto: the fastest backend export accepted; torch-bf16: one fixed backend


def streaming_rss(model_dir: str, sizes: tuple[int, ...] = (10_000, 200_000),
                  backends: tuple[str, ...] = STREAMING_BACKENDS) -> list[dict]:
    """Peak RSS of the real 'bertclf predict' command on inputs of each size (SST-2 phrases, cycled), per backend.

    auto may pick another backend for the larger file (the compiled one pays for its compile there), so a fixed
    backend is measured too: memory flat in the input size is a property of one backend streaming."""
    import subprocess
    import tempfile

    import pandas as pd

    phrases = pd.read_csv(DATASETS / "sst2" / "train.csv", dtype=str, keep_default_na=False)["text"]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for backend in backends:
            for size in sizes:
                source, out = os.path.join(tmp, f"in-{size}.csv"), os.path.join(tmp, f"out-{size}.csv")
                if not os.path.exists(source):
                    pd.DataFrame({"text": [phrases[i % len(phrases)] for i in range(size)]}).to_csv(source, index=False)
                start = time.perf_counter()
                proc = subprocess.run(["/usr/bin/time", "-f", "%M", sys.executable, "-m", "bertclf", "predict", model_dir,
                                       source, "-o", out, "--backend", backend], capture_output=True, text=True,
                                      env={**os.environ, "HF_HUB_OFFLINE": "1"})
                if proc.returncode:
                    raise RuntimeError(proc.stderr[-2000:])
                seconds = time.perf_counter() - start
                used = proc.stderr.rsplit("backend ", 1)[-1].split(")")[0]  # predict's last line names the backend used
                rows.append({"backend": backend, "backend_used": used, "texts": size, "input_mb": round(os.path.getsize(source) / 2**20, 1),
                             "peak_rss_mb": round(int(proc.stderr.strip().splitlines()[-1]) / 1024, 1),
                             "texts_per_s": round(size / seconds, 1)})
                print(f"  predict {size} texts: {rows[-1]}", file=sys.stderr)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", nargs="+", default=["runs/sst2-minilm"],
                        help="one or more SST-2 model directories, measured in the same rounds")
    parser.add_argument("--backends", nargs="+", choices=("pipeline_b32", *OURS), default=["pipeline_b32", *OURS],
                        help="contenders besides the baseline pipeline (default: all); torch is needed for agreement")
    parser.add_argument("--sst2-rows", type=int, default=0, help="a seeded sample of the SST-2 texts (default 0: all)")
    parser.add_argument("--stem", default="inference", help="result files docs/benchmarks/STEM.{json,md}")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--imdb-rows", type=int, default=300)
    parser.add_argument("--streaming", action="store_true", help="also measure predict's peak RSS on 10k vs 200k texts")
    parser.add_argument("--streaming-only", action="store_true",
                        help="measure only the streaming peak RSS and replace that section; the throughput tables stay")
    parser.add_argument("--note", help="with --streaming-only: a remark printed with the new streaming rows")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child, args.model[0], args.sst2_rows)
        return
    if args.streaming_only:
        remeasure_streaming(args.model[0], args.note)
        return
    if len(args.model) > 1 and (args.streaming or args.stem == "inference"):
        parser.error("several --model directories need their own --stem, and --streaming measures one model")
    names = ["pipeline", *[name for name in ("pipeline_b32", *OURS) if name in args.backends]]
    if "torch" not in names:
        parser.error("--backends must include torch: agreement is measured against it")
    from bertclf.backends import ONNX_FILES

    for model_dir in args.model:  # the torch backends need no file; an export only when an ONNX file is missing
        if any(not os.path.isfile(os.path.join(model_dir, ONNX_FILES[n])) for n in names if n in ONNX_FILES):
            from bertclf.export import export

            print(f"exporting {model_dir} to ONNX and int8, and checking every backend, first ...", file=sys.stderr)
            export(model_dir, int8=True, force=True)
    ceilings = {p: round(matmul_ceiling_gflops(p), 1) for p in ("fp32", "bf16", "int8")}
    short = measure("sst2", names, args.model, args.rounds, args.sst2_rows)
    long = measure("imdb", names, args.model, args.rounds, args.imdb_rows)
    rss = {(model_dir, name): run_child(__file__, ["--child", name, "--model", model_dir,
                                                   "--sst2-rows", str(args.sst2_rows)])["peak_rss_mb"]
           for model_dir in args.model for name in names}
    for table in (short, long):
        base = table["rows"][0]["texts_per_s"]
        for row in table["rows"]:
            row["ratio"] = round(row["texts_per_s"] / base, 2)
            row["peak_rss_mb"] = rss[(row.get("model_dir", args.model[0]), row["name"])]
            row["share_of_ceiling"] = round(row["useful_gflops"] / ceilings[precision_of(row["name"])], 3)
    command = "python bench/inference.py " + " ".join(sys.argv[1:])
    base = short["rows"][0]
    payload = {
        "texts": short["texts"],
        "baseline": {"name": base["name"], "texts_per_s": base["texts_per_s"], "accuracy": base["accuracy"]},
        "backends": short["rows"][1:],
        "long_texts": long,
        "matmul_ceiling_gflops": ceilings,
        "command": command,
    }
    earlier = DOCS / f"{args.stem}.json"
    if args.streaming:
        payload["streaming_predict"] = streaming_rss(args.model)
    elif earlier.exists() and "streaming_predict" in json.loads(earlier.read_text()):
        # The streaming run takes ~10 minutes; without --streaming the last measurement is kept, and said to be.
        payload["streaming_predict"] = json.loads(earlier.read_text())["streaming_predict"]
        payload["streaming_predict_note"] = "carried over from an earlier run; rerun with --streaming to remeasure"
    write_results(args.stem, payload, markdown([short, long], ceilings, command, payload.get("streaming_predict"),
                                               payload.get("streaming_predict_note")))


def precision_of(name: str) -> str:
    """The matmul precision a contender runs, for its share of that precision's ceiling."""
    return "int8" if "int8" in name else "bf16" if "bf16" in name else "fp32"


OTHER_KERNEL = (" A share above 100%: that contender's products do not run on the kernel the ceiling measures "
                "(the int8 ceiling is torch's `_int_mm`; ONNX Runtime has its own int8 kernels).")


def markdown(tables: list[dict], ceilings: dict, command: str, streaming: list[dict] | None,
             streaming_note: str | None = None) -> str:
    several = "model" in tables[0]["rows"][0]
    lines = ["# Inference throughput", "",
             ("Models fine-tuned on SST-2 (named in each row), measured in the same rounds; ratio against the first "
              "model's HF pipeline with its default batch size; agreement: argmax equal to the same model's torch fp32. "
              if several else
              "MiniLM-L6 fine-tuned on SST-2 sentences (`scripts/demo.sh`). Ratio is against the HF pipeline with its "
              "default batch size. Agreement: argmax equal to torch fp32. ")
             + "This machine's 2 CPU cores, one process, interleaved rounds (median). "
             "Peak RSS: a fresh process scoring the SST-2 texts once. "
             f"Matmul ceiling (a 2048-square product): fp32 {ceilings['fp32']} GFLOP/s, bf16 {ceilings['bf16']} GFLOP/s"
             + (f", int8 {ceilings['int8']} GOP/s" if "int8" in ceilings else "")
             + "; each row's share is against the ceiling of the precision its matrix products run in."
             + (OTHER_KERNEL if any(r["share_of_ceiling"] > 1 for t in tables for r in t["rows"]) else ""), "",
             f"Reproduce: `{command}`", ""]
    for table in tables:
        lines += [f"## {table['texts']}", "",
                  "| " + ("model | " if several else "") + "contender | texts/s | ratio | accuracy | agreement | peak RSS MiB | "
                  "useful GFLOP/s | share of ceiling | first call s |",
                  "|---|---|---|---|---|---|---|---|---|" + ("---|" if several else "")]
        for r in table["rows"]:
            lines.append("| " + (f"{r['model']} | " if several else "") + f"{r['name']} | {r['texts_per_s']:.1f} | "
                         f"{r['ratio']:.2f}x | {r['accuracy']:.4f} | "
                         f"{r['agreement']:.4f} | {r['peak_rss_mb']:.0f} | {r['useful_gflops']:.1f} | {r['share_of_ceiling']:.0%} | "
                         f"{r['first_call_s']:.1f} |")
        lines.append("")
    if streaming:
        lines += streaming_markdown(streaming, streaming_note)
    return "\n".join(lines)


STREAMING_HEADING = "## Streaming: peak RSS of `bertclf predict` by input size"


def streaming_markdown(streaming: list[dict], note: str | None = None) -> list[str]:
    lines = [STREAMING_HEADING, "", *([f"({note}.)", ""] if note else []),
             "| --backend | backend used | texts | input MiB | peak RSS MiB | texts/s (whole command) |", "|---|---|---|---|---|---|"]
    lines += [f"| {r.get('backend', 'auto')} | {r.get('backend_used', '')} | {r['texts']} | {r.get('input_mb', '')} | "
              f"{r['peak_rss_mb']:.0f} | {r['texts_per_s']:.0f} |" for r in streaming]
    for backend in dict.fromkeys(r.get("backend", "auto") for r in streaming):
        mine = [r for r in streaming if r.get("backend", "auto") == backend]
        lines.append(f"\nRatio largest/smallest input, --backend {backend}: "
                     f"{mine[-1]['peak_rss_mb'] / mine[0]['peak_rss_mb']:.3f}")
    return [*lines, ""]


def remeasure_streaming(model_dir: str, note: str | None) -> None:
    """Only the streaming section: measured again and put in place of the old one; the throughput tables stay."""
    payload = json.loads((DOCS / "inference.json").read_text())
    payload["streaming_predict"] = streaming_rss(model_dir)
    payload.pop("streaming_predict_note", None)
    if note:
        payload["streaming_predict_note"] = note
    shown = [a for i, a in enumerate(sys.argv[1:]) if a != "--note" and sys.argv[i] != "--note"]  # the note is printed below
    payload["streaming_command"] = "python bench/inference.py " + " ".join(shown)
    text = (DOCS / "inference.md").read_text()
    before = text.split(STREAMING_HEADING)[0].rstrip("\n")
    section = streaming_markdown(payload["streaming_predict"], note)
    section.insert(2, f"Reproduce: `{payload['streaming_command']}`")
    section.insert(3, "")
    write_results("inference", payload, before + "\n\n" + "\n".join(section))


if __name__ == "__main__":
    main()
