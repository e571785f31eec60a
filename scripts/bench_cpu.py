#!/usr/bin/env python3
"""pctrain against transformers + PEFT on the CPU, in one run: the same model, batch shape and
threads, whole training steps (forward, backward, clipping, AdamW), tokens per second, peak
resident memory and the ratio, for LoRA and full fine-tuning.

    cargo build --release
    python3 scripts/get-smollm2.py /tmp/smollm2          # once (torch, transformers, gguf)
    python3 scripts/bench_cpu.py [--smollm2 /tmp/smollm2] [--threads N] [--steps N]
    python3 scripts/bench_cpu.py --matmul                # GEMMs of the decoder's shapes

The models: the 10M Llama of `pctrain bench --shape llama-10m` (4 rows of 512 tokens) and
SmolLM2-135M-Instruct (2 rows of 512), each row packed with four samples. Each tool runs in its
own process, one after the other; both use `--threads` threads (default: every core).
`--matmul` times `examples/matmul_bench.rs` and torch's matmul on the same shapes.
"""

import argparse
import json
import os
import pathlib
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parent.parent
PCTRAIN = ROOT / "target/release/pctrain"
MATMUL = ROOT / "target/release/examples/matmul_bench"


def run(cmd, threads):
    env = dict(os.environ, RAYON_NUM_THREADS=str(threads), OMP_NUM_THREADS=str(threads))
    out = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if out.returncode != 0:
        sys.exit(f"{' '.join(map(str, cmd))} failed:\n{out.stderr[-3000:]}")
    return [json.loads(l) for l in out.stdout.splitlines() if l.startswith("{")]


def steps(args):
    cases = [("llama-10m", ["--shape", "llama-10m"], 4)]
    if args.smollm2:
        cases.append(("SmolLM2-135M", ["--base", args.smollm2], 2))
    print(f"{'model':14} {'mode':5} {'pctrain tok/s':>13} {'torch tok/s':>11} {'ratio':>6} "
          f"{'pctrain MiB':>11} {'torch MiB':>9}")
    for name, model, rows in cases:
        for mode in ["lora", "full"]:
            shape = ["--mode", mode, "--seq-len", "512", "--rows", str(rows), "--packed",
                     "--steps", str(args.steps)]
            ours = run([PCTRAIN, "bench", *model, *shape], args.threads)[-1]
            theirs = run([sys.executable, ROOT / "scripts/bench_transformers.py", *model, *shape,
                          "--threads", str(args.threads)], args.threads)[-1]
            a, b = ours["tokens_per_s"], theirs["tokens_per_s"]
            print(f"{name:14} {mode:5} {a:13.1f} {b:11.1f} {a / b:6.2f} "
                  f"{ours['process_memory']['peak_rss_mib']:11.0f} {theirs['peak_rss_mib']:9.0f}",
                  flush=True)


# (M, N, K, layout) as examples/matmul_bench.rs reads them: nt is x W^T, nn dy W, tn dy^T x.
SHAPES = [
    "2048,384,384,nt", "2048,128,384,nt", "2048,1024,384,nt", "2048,384,1024,nt", "2048,700,384,nt",
    "2048,384,384,nn", "2048,384,128,nn", "2048,384,1024,nn", "2048,1024,384,nn", "2048,384,700,nn",
    "2048,16,384,nt", "2048,384,16,nt", "16,384,2048,tn", "384,16,2048,tn",
    "1024,576,576,nt", "1024,192,576,nt", "1024,1536,576,nt", "1024,576,1536,nt", "1024,49152,576,nt",
    "1024,576,576,nn", "1024,576,1536,nn", "1024,1536,576,nn", "1024,576,49152,nn",
    "1024,16,576,nt", "1024,1536,16,nt", "16,576,1024,tn", "1536,16,1024,tn", "1536,576,1024,tn",
]


def matmul(args):
    import time

    import torch

    torch.set_num_threads(args.threads)
    ours = {r["shape"]: r["gflops"] for r in run([MATMUL, *SHAPES], args.threads)}
    print(f"{'M,N,K,layout':22} {'pctrain GFLOP/s':>15} {'torch GFLOP/s':>13} {'ratio':>6}")
    for spec in SHAPES:
        m, n, k, layout = spec.split(",")
        m, n, k = int(m), int(n), int(k)
        a = torch.randn(k, m).t() if layout == "tn" else torch.randn(m, k)
        b = torch.randn(n, k).t() if layout == "nt" else torch.randn(k, n)
        for _ in range(3):
            a @ b
        reps = max(3, int(2e10 / (2 * m * n * k)))
        start = time.perf_counter()
        for _ in range(reps):
            a @ b
        theirs = 2 * m * n * k / ((time.perf_counter() - start) / reps) / 1e9
        print(f"{spec:22} {ours[spec]:15.1f} {theirs:13.1f} {ours[spec] / theirs:6.2f}", flush=True)


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--smollm2", help="the folder scripts/get-smollm2.py wrote")
    p.add_argument("--threads", type=int, default=os.cpu_count())
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--matmul", action="store_true")
    args = p.parse_args()
    matmul(args) if args.matmul else steps(args)


if __name__ == "__main__":
    main()
