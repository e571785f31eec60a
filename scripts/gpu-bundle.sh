#!/usr/bin/env bash
# Builds, here, what scripts/gpu-check.sh runs on a GPU machine that has no Rust toolchain: the
# pctrain binary and the CUDA test executables, built with `--features cuda`, stripped and packed
# with the commit into gpu-bundle.tar.xz (ignored by git; carry it to the GPU machine).
#
#     scripts/gpu-bundle.sh            # about 12 minutes cold on 2 cores, seconds after
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"
eval "$(scripts/setup-cuda.sh)"
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$ROOT/target/cuda}
cargo build --release --features cuda -p pctrain
cargo test --release --features cuda --no-run -p pctrain-model -p pctrain-trainer --test cuda \
  --message-format=json > "$CARGO_TARGET_DIR/cuda-tests.json"
BUNDLE=$(mktemp -d)
cp "$CARGO_TARGET_DIR/release/pctrain" "$BUNDLE/pctrain"
python3 - "$CARGO_TARGET_DIR/cuda-tests.json" "$BUNDLE" <<'PY'
import json, shutil, sys
for line in open(sys.argv[1]):
    m = json.loads(line)
    if m.get("reason") == "compiler-artifact" and m.get("executable") and m["target"]["name"] == "cuda":
        crate = "model" if "pctrain-model" in m["package_id"] else "trainer"
        shutil.copy(m["executable"], f"{sys.argv[2]}/test-{crate}-cuda")
PY
strip "$BUNDLE"/*
git rev-parse HEAD > "$BUNDLE/COMMIT"
git diff --quiet HEAD || echo "dirty" >> "$BUNDLE/COMMIT"
tar -cJf gpu-bundle.tar.xz -C "$BUNDLE" .
rm -rf "$BUNDLE"
ls -l gpu-bundle.tar.xz
