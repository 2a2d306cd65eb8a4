#!/usr/bin/env bash
# Set up, then fine-tune the default model (all-MiniLM-L6-v2) on SST-2 sentences, score dev and test, save it.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
. .venv/bin/activate
DATA="${BERTCLF_DATASETS:-../shared/datasets}/sst2_sentences"
if [ ! -f "$DATA/train.csv" ]; then
  echo "error: $DATA/train.csv not found. The demo reads the project's offline datasets from ../shared/datasets;" >&2
  echo "       point BERTCLF_DATASETS at a folder holding sst2_sentences/{train,dev,test}.csv (columns text,label)." >&2
  exit 1
fi
export HF_HUB_OFFLINE=1
bertclf train "$DATA/train.csv" --dev "$DATA/dev.csv" --test "$DATA/test.csv" --output runs/sst2-minilm --overwrite "$@"
bertclf predict runs/sst2-minilm - <<'TEXTS'
a gorgeous, witty, seductive movie.
the plot is nothing but boilerplate clichés from start to finish.
TEXTS
