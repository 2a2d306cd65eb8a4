"""`bertclf tune` with a time budget against the defaults, on real datasets: dev and test score of each.

For each dataset: `bertclf tune train.csv --dev dev.csv --test test.csv --budget B` (the study's first
trial is the defaults), then the defaults' and the best trial's dev and test scores are read from the study.
Where a dataset has no dev file, a seeded stratified 10% of train is written out as the dev file, the same
for every trial. Test scores are recorded by tune for the report only; selection uses dev.

    python bench/tuning.py --datasets banking77,sst2_sentences --budget 1h
Writes docs/benchmarks/tuning.{json,md}; the studies stay in runs/tune-<dataset>/ (rerun to resume).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

import optuna
import pandas as pd

from common import DATASETS, DOCS, REPO, load_split, write_results


def dataset_files(name: str, work: str) -> tuple[str, str, str]:
    folder = DATASETS / name
    if (folder / "dev.csv").exists():
        return str(folder / "train.csv"), str(folder / "dev.csv"), str(folder / "test.csv")
    split = load_split(name)  # seeded stratified 10% of train as dev
    os.makedirs(work, exist_ok=True)
    paths = []
    for part in ("train", "dev"):
        texts, labels = split[part]
        path = os.path.join(work, f"{part}.csv")
        pd.DataFrame({"text": texts, "label": labels}).to_csv(path, index=False)
        paths.append(path)
    return paths[0], paths[1], str(folder / "test.csv")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--datasets", default="banking77,sst2_sentences")
    parser.add_argument("--budget", default="1h")
    parser.add_argument("--metric", default="accuracy")
    args = parser.parse_args()
    rows = []
    for name in args.datasets.split(","):
        out = str(REPO / "runs" / f"tune-{name}")
        train, dev, test = dataset_files(name, os.path.join(out, "data"))
        command = [sys.executable, "-m", "bertclf", "tune", train, "--dev", dev, "--test", test, "--output", out,
                   "--budget", args.budget, "--metric", args.metric]
        subprocess.run(command, check=True, env={**os.environ, "HF_HUB_OFFLINE": "1"})
        study = optuna.load_study(study_name="bertclf", storage=f"sqlite:///{out}/study.db")
        done = [t for t in study.trials if t.state.name == "COMPLETE"]
        default = next(t for t in done if t.user_attrs.get("defaults"))
        best = study.best_trial
        rows.append({
            "dataset": name, "budget": args.budget, "metric": args.metric, "trials": len(study.trials),
            "completed": len(done), "pruned": sum(t.state.name == "PRUNED" for t in study.trials),
            "seconds_used": round(study.user_attrs.get("seconds_used", 0.0)),
            "defaults": {"trial": default.number, "dev": default.value, "test": default.user_attrs.get("test"),
                         "params": default.params},
            "best": {"trial": best.number, "dev": best.value, "test": best.user_attrs.get("test"), "params": best.params},
            "beats_defaults_on_dev": best.value > default.value,
            "command": " ".join(command).replace(sys.executable, "python"),
        })
        print(rows[-1], flush=True)
    earlier = DOCS / "tuning.json"  # keep other datasets' rows from earlier runs
    if earlier.exists():
        kept = [r for r in json.loads(earlier.read_text())["runs"] if r["dataset"] not in {r["dataset"] for r in rows}]
        rows = kept + rows
    write_report(rows)


def write_report(rows: list[dict]) -> None:
    lines = ["# Tuning within a time budget", "",
             f"`python bench/tuning.py --datasets NAME --budget B` — MiniLM-L6, {os.cpu_count()} CPU cores. "
             "The first trial of each study is the defaults; selection uses dev only, test is reported.", "",
             "| dataset | budget | trials (completed/pruned) | defaults dev | defaults test | best dev | best test | best trial | beats defaults |",
             "|---|---|---|---:|---:|---:|---:|---|---|"]
    for r in rows:
        d, b = r["defaults"], r["best"]
        lines.append(f"| {r['dataset']} | {r['budget']} ({r['seconds_used']} s used) | {r['trials']} ({r['completed']}/{r['pruned']}) | "
                     f"{d['dev']:.4f} | {d['test']:.4f} | {b['dev']:.4f} | {b['test']:.4f} | {b['trial']}: "
                     f"{', '.join(f'{k} {v:.3g}' if isinstance(v, float) else f'{k} {v}' for k, v in b['params'].items())} | "
                     f"{'yes' if r['beats_defaults_on_dev'] else 'no'} |")
    notes = [f"* {r['dataset']}: {note}" for r in rows for note in r.get("notes", [])]  # observations kept with their row
    lines += ["", *notes, "", "Commands:", ""] + [f"- `{r['command']}`" for r in rows] + [""]
    write_results("tuning", {"runs": rows}, "\n".join(lines))


if __name__ == "__main__":
    main()
