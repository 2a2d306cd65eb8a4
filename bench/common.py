"""Helpers shared by the bench/ scripts: real datasets, peak RSS, matmul ceilings, result files."""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd

REPO = Path(__file__).resolve().parents[1]
DATASETS = Path(os.environ.get("BERTCLF_DATASETS", REPO.parent / "shared" / "datasets"))
DOCS = REPO / "docs" / "benchmarks"


def load_split(
    name: str, dev_fraction: float = 0.1, seed: int = 42, max_train: int | None = None
) -> dict[str, tuple[list[str], list[str]]]:
    """train and dev (texts, labels); where a dataset has no dev file, a seeded stratified slice of train.

    ``max_train`` keeps a seeded sample of the training rows (for smoke runs; recorded by the caller).
    """
    from sklearn.model_selection import train_test_split

    folder = DATASETS / name
    read = lambda split: pd.read_csv(folder / f"{split}.csv", dtype=str, keep_default_na=False)  # noqa: E731
    train = read("train")
    if (folder / "dev.csv").exists():
        dev = read("dev")
    else:
        train, dev = train_test_split(train, test_size=dev_fraction, random_state=seed, stratify=train["label"])
    if max_train and max_train < len(train):
        train = train.sample(max_train, random_state=seed)
    return {
        "train": (train["text"].tolist(), train["label"].tolist()),
        "dev": (dev["text"].tolist(), dev["label"].tolist()),
    }


def peak_rss_mb() -> float:
    """This process's peak resident memory (VmHWM), in MiB."""
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def matmul_ceiling_gflops(dtype_name: str, n: int = 2048, repeats: int = 5, device: str = "cpu") -> float:
    """Measured GFLOP/s (GOP/s for int8) of a large square matmul: what this CPU (or GPU) can do at best in that
    precision. On a GPU the products are 8192 wide, repeated 20 times and timed up to a synchronize."""
    import torch

    if device == "cuda":
        n, repeats = 8192, 20
    if dtype_name == "int8":  # int8 x int8 -> int32, the product the int8 backends run
        a, b = (torch.randint(-127, 128, (n, n), dtype=torch.int8, device=device) for _ in range(2))
        product = torch._int_mm
    else:
        dtype = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[dtype_name]
        a, b = torch.randn(n, n, dtype=dtype, device=device), torch.randn(n, n, dtype=dtype, device=device)
        product = torch.matmul
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    for _ in range(2):
        product(a, b)
    sync()
    start = time.perf_counter()
    for _ in range(repeats):
        product(a, b)
    sync()
    return 2 * n**3 * repeats / (time.perf_counter() - start) / 1e9


def cpu_name() -> str:
    """The CPU's model name and its bf16/int8 matrix instructions: machines of one kind differ here (AMD EPYC or
    Intel Xeon, with or without AVX512-BF16 or AMX), and with them a seed's bf16 arithmetic, so its score."""
    try:
        info = Path("/proc/cpuinfo").read_text()
    except OSError:
        return platform.processor() or platform.machine()
    name = next((line.split(":", 1)[1].strip() for line in info.splitlines() if line.startswith("model name")),
                platform.machine())
    flags = sorted(set(info.split()) & {"avx512_bf16", "avx512_vnni", "amx_bf16", "amx_int8"})
    return f"{name} ({', '.join(flags)})" if flags else name


def hardware() -> str:
    """What the numbers were measured on: the GPU's name where torch sees one, else the CPU and its core count."""
    import torch

    if torch.cuda.is_available():
        return f"one {torch.cuda.get_device_name()} GPU (torch {torch.__version__})"
    return f"this machine's {os.cpu_count()} CPU cores: {cpu_name()}"


def run_child(script: str, args: list[str]) -> dict:
    """Run one measurement in a fresh process (so peak RSS is its own) and read its last JSON line."""
    proc = subprocess.run([sys.executable, script, *args], capture_output=True, text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    if proc.returncode != 0:
        raise RuntimeError(f"{script} {' '.join(args)} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def write_results(stem: str, payload: dict, markdown: str, docs: Path = DOCS) -> None:
    """STEM.json and STEM.md under docs, each renamed into place: a bench killed mid-write leaves the old table."""
    from bertclf.artifact import atomic_write_text

    docs.mkdir(parents=True, exist_ok=True)
    atomic_write_text(str(docs / f"{stem}.json"), json.dumps(payload, indent=2) + "\n")
    atomic_write_text(str(docs / f"{stem}.md"), markdown)
