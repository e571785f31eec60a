#!/usr/bin/env bash
# Does pseudo-code help? The whole experiment, from the PyPI wheel of SmolLM2-135M-Instruct to
# bench/results/experiment-smollm2.json, its chart and each arm's IFEval answers. Every stage is
# resumable: a run stopped anywhere goes on with the same command.
#
#   scripts/experiment/run.sh
#
# WORK (default runs/experiment-smollm2) holds every stage's files; MODEL (default WORK/smollm2)
# the model folder, made by scripts/get-smollm2.py when missing (needs torch, transformers, gguf);
# IFEVAL (default ../shared/data/ifeval_input_data.jsonl) IFEval's 541 prompts; PYTHON the
# interpreter (default python3). The binary is built once and kept in WORK/bin, so that a
# resumed run finishes with the binary it started with.
set -euo pipefail
cd "$(dirname "$0")/../.."
WORK=${WORK:-runs/experiment-smollm2}
MODEL=${MODEL:-$WORK/smollm2}
IFEVAL=${IFEVAL:-../shared/data/ifeval_input_data.jsonl}
PYTHON=${PYTHON:-python3}

mkdir -p "$WORK/bin"
if [ ! -x "$WORK/bin/pctrain" ]; then
    cargo build --release
    cp target/release/pctrain "$WORK/bin/pctrain.tmp"
    mv "$WORK/bin/pctrain.tmp" "$WORK/bin/pctrain"
    git describe --always --dirty --abbrev=40 > "$WORK/bin/commit"
fi
if [ ! -f "$MODEL/model.safetensors" ]; then
    "$PYTHON" scripts/get-smollm2.py "$MODEL"
fi
"$PYTHON" scripts/experiment/experiment.py --model "$MODEL" --ifeval "$IFEVAL" --work "$WORK" \
    --pctrain "$WORK/bin/pctrain"
"$PYTHON" scripts/experiment/analyze.py --work "$WORK" --results bench/results/experiment-smollm2
