#!/usr/bin/env bash
# Set up, then run the whole test suite (a few minutes on 2 cores; one test fine-tunes the real model).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
. .venv/bin/activate
HF_HUB_OFFLINE=1 python -m pytest -q "$@"
