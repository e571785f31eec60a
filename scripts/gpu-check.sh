#!/usr/bin/env bash
# On a machine with an NVIDIA GPU (driver for CUDA 13.0) and PyTorch, transformers and PEFT, from
# the repository root, with gpu-bundle.tar.xz made by scripts/gpu-bundle.sh: runs every CUDA
# kernel against its CPU twin, then the benchmark (pctrain against transformers + PEFT with SDPA on
# the same GPU: tokens/s, peak memory, MFU against the bf16 matmul rate measured there, and one
# pctrain step's device time by layer function), and writes one JSON report, $OUT/report.json.
# Every run gets what is left of an 8-minute budget at most, so the report is always written.
#
#     OUT=results scripts/gpu-check.sh
set -uo pipefail
DEADLINE=$((SECONDS + 470))
# Seconds a run may take: at most $1, and never past the deadline.
budget() { local left=$((DEADLINE - SECONDS)); (( left < $1 )) && echo $((left > 5 ? left : 5)) || echo "$1"; }
ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"
OUT=${OUT:-$ROOT/gpu-check-out}
mkdir -p "$OUT"
BIN=$(mktemp -d)
tar -xJf gpu-bundle.tar.xz -C "$BIN" || { echo "no gpu-bundle.tar.xz: run scripts/gpu-bundle.sh first" >&2; exit 1; }

# The CUDA libraries pctrain links come with PyTorch's nvidia wheels.
SP=$(python3 -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
export LD_LIBRARY_PATH=$SP/nvidia/cu13/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
if ldd "$BIN/pctrain" | grep "not found" > "$OUT/ldd-missing.txt"; then
  echo "missing libraries:" >&2; cat "$OUT/ldd-missing.txt" >&2; exit 1
fi
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader > "$OUT/gpu.txt"

# 1. Kernels against their CPU twins (each needs a GPU, so it is ignored unless asked for).
export PCTRAIN_FIXTURES=$ROOT/crates/pctrain-model/tests/fixtures
for t in model trainer; do
  timeout "$(budget 150)" "$BIN/test-$t-cuda" --include-ignored --test-threads=1 > "$OUT/test-$t.log" 2>&1
  echo $? > "$OUT/test-$t.rc"
done

# 2. The benchmark. GPU memory is sampled every 100 ms while each run lasts.
bench() {
  local name=$1; shift
  nvidia-smi --query-gpu=memory.used --format=csv,noheader,nounits -lms 100 > "$OUT/$name.mem" &
  local sampler=$!
  timeout "$(budget 100)" "$@" > "$OUT/$name.json" 2> "$OUT/$name.err"
  echo $? > "$OUT/$name.rc"
  kill $sampler 2>/dev/null; wait $sampler 2>/dev/null
}
IDLE=$(nvidia-smi --query-gpu=memory.used --format=csv,noheader,nounits | head -1)
bench pctrain-lora-8b "$BIN/pctrain" bench --shape llama3-8b --mode lora --seq-len 2048 --rows 4 --steps 5 --device cuda:0 --dtype bf16 --profile
bench hf-lora-8b python3 scripts/bench_transformers.py --device cuda --shape llama3-8b --mode lora --seq-len 2048 --rows 4 --steps 5
bench pctrain-full-1b "$BIN/pctrain" bench --shape llama-1b --mode full --seq-len 2048 --rows 4 --steps 5 --device cuda:0 --dtype bf16 --profile
bench hf-full-1b python3 scripts/bench_transformers.py --device cuda --shape llama-1b --mode full --seq-len 2048 --rows 4 --steps 5

# 3. One report.
python3 - "$OUT" "$IDLE" "$(cat "$BIN/COMMIT" | tr '\n' ' ')" <<'PY'
import datetime, json, pathlib, sys
out, idle, commit = pathlib.Path(sys.argv[1]), float(sys.argv[2]), sys.argv[3].strip()

def read(path, default=""):
    return path.read_text() if path.exists() else default

def run(name):
    r = {"rc": int(read(out / f"{name}.rc", "-1"))}
    lines = [l for l in read(out / f"{name}.json").splitlines() if l.strip()]
    if lines:
        r.update(json.loads(lines[-1]))
    else:
        r["error"] = read(out / f"{name}.err")[-2000:]
    mem = [float(x) for x in read(out / f"{name}.mem").split() if x.strip()]
    r["peak_gpu_mib"] = max(mem) - idle if mem else None
    return r

def test(name):
    log = read(out / f"test-{name}.log")
    lines = log.splitlines()
    return {"rc": int(read(out / f"test-{name}.rc", "-1")),
            "not_run": [l[5:].split(" ... ")[0] for l in lines if l.startswith("test ") and l.endswith(" ignored")],
            "passed": [l[5:].split(" ... ")[0] for l in lines if l.startswith("test ") and l.endswith(" ok")],
            "failed": [l[5:].split(" ... ")[0] for l in lines if l.startswith("test ") and "FAILED" in l],
            "panics": [l for l in lines if "panicked" in l][:20]}

report = {
    "date": datetime.date.today().isoformat(),
    "gpu": (out / "gpu.txt").read_text().strip(),
    "commit": commit,
    "tests": {n: test(n) for n in ["model", "trainer"]},
    "bench": {n: run(n) for n in ["pctrain-lora-8b", "hf-lora-8b", "pctrain-full-1b", "hf-full-1b"]},
}
for ours, theirs, key in [("pctrain-lora-8b", "hf-lora-8b", "lora_8b"), ("pctrain-full-1b", "hf-full-1b", "full_1b")]:
    a, b = report["bench"][ours], report["bench"][theirs]
    if a.get("tokens_per_s") and b.get("tokens_per_s"):
        report[f"speedup_{key}"] = a["tokens_per_s"] / b["tokens_per_s"]
    if a.get("peak_gpu_mib") and b.get("peak_gpu_mib"):
        report[f"memory_ratio_{key}"] = a["peak_gpu_mib"] / b["peak_gpu_mib"]
    # transformers' MFU: the same FLOPs per token and the same measured matmul rate.
    if b.get("tokens_per_s") and a.get("flops_per_token") and a.get("matmul_tflops"):
        b["mfu"] = b["tokens_per_s"] * a["flops_per_token"] / (a["matmul_tflops"] * 1e12)
(out / "report.json").write_text(json.dumps(report, indent=2) + "\n")
print(json.dumps(report, indent=2))
PY
