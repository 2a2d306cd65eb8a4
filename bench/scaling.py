"""1 process against 2 (torchrun and accelerate launch, gloo on loopback): training throughput and dev accuracy.

The same command each time, `bertclf train` with the same global batch size (32), seed and data; only the
launcher changes. The 1-process run uses both cores (2 torch threads); each of the 2 processes gets one
(OMP_NUM_THREADS=1, as torchrun sets by default), so on this 2-core machine little speed-up is possible.

    python bench/scaling.py                      # SST-2 sentences, 3 epochs (about 15 minutes)
    python bench/scaling.py --max-train 1000     # a quicker look
Writes docs/benchmarks/scaling.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import time

from common import DATASETS, write_results


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launchers(port: int) -> dict[str, list[str]]:
    py = sys.executable
    return {
        "1 process": [py, "-m", "bertclf"],
        "torchrun, 2 processes": [py, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                                  "-m", "bertclf"],
        # --multi_gpu is accelerate's torchrun-based launcher; on a machine without GPUs bertclf joins a gloo
        # group. (accelerate's --cpu launches one process, or several only through mpirun.)
        "accelerate launch, 2 processes": [py, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
                                           "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
                                           "--main_process_port", str(port), "-m", "bertclf"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", default="sst2_sentences")
    parser.add_argument("--max-train", type=int, help="use the first N training rows")
    parser.add_argument("--epochs", type=int, default=3)
    args = parser.parse_args()

    work = tempfile.mkdtemp(prefix="bertclf-scaling-")
    train = str(DATASETS / args.dataset / "train.csv")
    if args.max_train:
        import pandas as pd

        train = os.path.join(work, "train.csv")
        pd.read_csv(DATASETS / args.dataset / "train.csv").head(args.max_train).to_csv(train, index=False)
    dev = str(DATASETS / args.dataset / "dev.csv")
    runs = []
    for name, launcher in launchers(free_port()).items():
        out = os.path.join(work, name.split(",")[0].replace(" ", "-"))
        command = [*launcher, "train", train, "--dev", dev, "--output", out, "--epochs", str(args.epochs),
                   "--batch-size", "32", "--quiet"]
        env = {**os.environ, "HF_HUB_OFFLINE": "1"}
        if "2 processes" in name:
            env["OMP_NUM_THREADS"] = "1"
        started = time.perf_counter()
        proc = subprocess.run(command, env=env, capture_output=True, text=True)
        wall = time.perf_counter() - started
        if proc.returncode != 0:
            raise RuntimeError(f"{name} failed:\n{proc.stderr[-3000:]}")
        record = json.load(open(os.path.join(out, "bertclf.json")))
        runs.append({
            "launcher": name, "command": " ".join(command).replace(sys.executable, "python"),
            "train_samples_per_s": record["training"]["samples_per_s"], "train_seconds": record["training"]["seconds"],
            "wall_seconds": round(wall, 1), "dev_accuracy": record["metrics"]["dev"]["accuracy"],
            "dev_macro_f1": record["metrics"]["dev"]["macro_f1"], "best_epoch": record["best_epoch"],
            "epoch_losses": [round(r["train_loss"], 4) for r in record["history"]],
            "leftovers": sorted(p for p in os.listdir(work) if p.endswith(".checkpoints") or ".tmp" in p),
        })
        print(json.dumps(runs[-1]), flush=True)
    base = runs[0]
    for row in runs:
        row["speedup"] = round(row["train_samples_per_s"] / base["train_samples_per_s"], 3)
        row["dev_accuracy_delta_pt"] = round((row["dev_accuracy"] - base["dev_accuracy"]) * 100, 2)
    payload = {"dataset": args.dataset, "max_train": args.max_train, "epochs": args.epochs, "global_batch_size": 32,
               "cpu_cores": os.cpu_count(), "runs": runs, "command": "python bench/scaling.py " + " ".join(sys.argv[1:])}
    lines = ["# Scaling: 1 process vs 2 on this machine", "",
             f"`{payload['command']}` — {args.dataset} ({args.max_train or 'all'} training rows), {args.epochs} epochs, "
             f"global batch 32, MiniLM-L6, {os.cpu_count()} CPU cores, gloo on loopback.", "",
             "| launcher | samples/s | speed-up | train s | wall s | dev accuracy | Δ pt | best epoch | epoch losses |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---|"]
    for r in runs:
        lines.append(f"| {r['launcher']} | {r['train_samples_per_s']:.1f} | {r['speedup']:.2f}× | {r['train_seconds']:.0f} | "
                     f"{r['wall_seconds']:.0f} | {r['dev_accuracy']:.4f} | {r['dev_accuracy_delta_pt']:+.2f} | "
                     f"{r['best_epoch']} | {', '.join(map(str, r['epoch_losses']))} |")
    lines += ["", "Commands:", ""] + [f"- {r['launcher']}: `{r['command']}`" for r in runs] + [""]
    write_results("scaling", payload, "\n".join(lines))


if __name__ == "__main__":
    main()
