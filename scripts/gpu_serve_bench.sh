#!/usr/bin/env bash
# The serving benchmarks on a CUDA machine (issue 21), as one prepared run: the card's name,
# then `bench serve` aligned and spread, server vs processes, into one folder. Every model that
# can use the GPU does (`asr.device` and `model.device` default to auto). Run it from the
# repository root after `make setup`, e.g. on the device machine:
#   scripts/gpu_serve_bench.sh "$OUT"
# and copy the folder's files to docs/benchmarks/cuda/ with the card named in serve-notes.md.
set -euo pipefail
out=${1:?usage: scripts/gpu_serve_bench.sh OUT_DIR}
mkdir -p "$out"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$out/card.csv"
erc=.venv/bin/realtime-erc
"$erc" bench serve --sessions 1,2,4,8,16 --out "$out"
"$erc" bench serve --sessions 8,16,24,32 --arrival spread --modes server --out "$out"
