#!/usr/bin/env python3
"""Greedy decoding, pctrain against transformers, in one run: the same model, prompts, batch size,
token budget and threads. Prints, per batch size, each one's new tokens, tokens per second (of the
decoding itself, model loading excluded) and peak resident memory, the ratio, and how many answers
are identical (the same text and the same number of new tokens).

    cargo build --release
    python3 scripts/get-smollm2.py /tmp/smollm2        # once (torch, transformers, gguf)
    python3 scripts/bench_generate.py /tmp/smollm2 [--prompts FILE] [--limit 32] \\
        [--batch-size 1 16 32] [--new-tokens 128] [--threads 2] [--adapter DIR] [--pctrain BIN]

--prompts takes IFEval's lines (`{"prompt"}`) or records of the training readers' shape
(`{"id", "messages"}`); the default is the first --limit IFEval prompts of
../shared/data/ifeval_input_data.jsonl. Each prompt is rendered with the model's chat template and
its generation prompt. transformers decodes a batch left-padded, as its docs say to, and stops at
the `eos_token_id`s of generation_config.json; a row's new tokens are those up to and including its
first end token. Each tool runs in its own process (its peak RSS is that process's), one after the
other, with `--threads` threads (RAYON_NUM_THREADS, torch.set_num_threads). Needs torch and
transformers (and peft with --adapter). Exits 1 if any answer differs.
"""

import argparse
import json
import os
import pathlib
import re
import subprocess
import sys
import tempfile
import time

ROOT = pathlib.Path(__file__).resolve().parent.parent
IFEVAL = ROOT.parent / "shared/data/ifeval_input_data.jsonl"


def read_prompts(path, limit):
    records = []
    for i, line in enumerate(open(path)):
        if not line.strip():
            continue
        v = json.loads(line)
        if "messages" in v:
            last = max(j for j, m in enumerate(v["messages"]) if m["role"] == "user")
            messages = v["messages"][: last + 1]
        else:
            messages = [{"role": "user", "content": v["prompt"]}]
        records.append({"id": str(v.get("id", v.get("key", i))), "messages": messages})
        if len(records) == limit:
            break
    return records


def measured(cmd, env):
    """Runs cmd in a fresh wrapper process; returns (stdout, stderr, peak RSS MiB of cmd)."""
    wrapper = (
        "import resource, subprocess, sys\n"
        "r = subprocess.run(sys.argv[1:])\n"
        "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss, file=sys.stderr)\n"
        "sys.exit(r.returncode)\n"
    )
    out = subprocess.run([sys.executable, "-c", wrapper, *map(str, cmd)], env=env,
                         capture_output=True, text=True)
    if out.returncode != 0:
        sys.exit(f"{' '.join(map(str, cmd))} failed:\n{out.stderr[-3000:]}")
    lines = out.stderr.strip().splitlines()
    return out.stdout, "\n".join(lines[:-1]), int(lines[-1]) / 1024


def transformers_worker(a):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.set_num_threads(a.threads)
    tok = AutoTokenizer.from_pretrained(a.model)
    tok.padding_side = "left"
    model = AutoModelForCausalLM.from_pretrained(a.model, dtype=torch.float32)
    if a.adapter:
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, a.adapter)
    model.eval()
    eos = model.generation_config.eos_token_id
    eos = set(eos if isinstance(eos, list) else [eos])
    pad = tok.pad_token_id if tok.pad_token_id is not None else min(eos)
    records = [json.loads(l) for l in open(a.worker_prompts)]
    texts = [tok.apply_chat_template(r["messages"], add_generation_prompt=True, tokenize=False)
             for r in records]
    answers, tokens = [], 0
    started = time.perf_counter()
    for b in range(0, len(texts), a.worker_batch):
        enc = tok(texts[b:b + a.worker_batch], return_tensors="pt", padding=True,
                  add_special_tokens=False)
        with torch.no_grad():
            out = model.generate(**enc, max_new_tokens=a.new_tokens, do_sample=False,
                                 pad_token_id=pad)
        for row in out[:, enc["input_ids"].shape[1]:].tolist():
            end = next((i + 1 for i, t in enumerate(row) if t in eos), len(row))
            new = row[:end]
            body = new[:-1] if new and new[-1] in eos else new
            answers.append({"text": tok.decode(body, skip_special_tokens=True),
                            "new_tokens": len(new)})
            tokens += len(new)
    seconds = time.perf_counter() - started
    with open(a.worker_out, "w") as f:
        for x in answers:
            f.write(json.dumps(x) + "\n")
    print(json.dumps({"tokens": tokens, "seconds": seconds}))


def main():
    p = argparse.ArgumentParser()
    p.add_argument("model")
    p.add_argument("--prompts", default=str(IFEVAL))
    p.add_argument("--limit", type=int, default=32)
    p.add_argument("--batch-size", type=int, nargs="+", default=[16])
    p.add_argument("--new-tokens", type=int, default=128)
    p.add_argument("--threads", type=int, default=os.cpu_count())
    p.add_argument("--adapter")
    p.add_argument("--pctrain", default=str(ROOT / "target/release/pctrain"))
    p.add_argument("--worker-prompts", help=argparse.SUPPRESS)
    p.add_argument("--worker-out", help=argparse.SUPPRESS)
    p.add_argument("--worker-batch", type=int, help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.worker_prompts:
        return transformers_worker(a)

    records = read_prompts(a.prompts, a.limit)
    env = dict(os.environ, RAYON_NUM_THREADS=str(a.threads), OMP_NUM_THREADS=str(a.threads))
    print(f"{len(records)} prompts, {a.new_tokens} new tokens at most, {a.threads} threads, greedy")
    print(f"{'batch':>5} {'tokens':>7} {'pctrain tok/s':>13} {'torch tok/s':>11} {'ratio':>6} "
          f"{'pctrain MiB':>11} {'torch MiB':>9} {'identical':>9}")
    differ = 0
    with tempfile.TemporaryDirectory() as d:
        prompts = pathlib.Path(d) / "prompts.jsonl"
        prompts.write_text("".join(json.dumps(r) + "\n" for r in records))
        for batch in a.batch_size:
            ours_out = pathlib.Path(d) / f"pctrain-{batch}.jsonl"
            cmd = [a.pctrain, "generate", "--base", a.model, "--data", prompts, "--output",
                   ours_out, "--max-new-tokens", a.new_tokens, "--batch-size", batch]
            if a.adapter:
                cmd += ["--adapter", a.adapter]
            _, err, ours_mib = measured(cmd, env)
            m = re.search(r"\((\d+) tokens in ([0-9.]+) s", err)
            ours_tokens, ours_s = int(m.group(1)), float(m.group(2))
            ours = [json.loads(l) for l in open(ours_out)]

            theirs_out = pathlib.Path(d) / f"transformers-{batch}.jsonl"
            cmd = [__file__, a.model, "--worker-prompts", prompts, "--worker-out", theirs_out,
                   "--worker-batch", batch, "--new-tokens", a.new_tokens, "--threads", a.threads]
            if a.adapter:
                cmd += ["--adapter", a.adapter]
            out, _, theirs_mib = measured([sys.executable, *cmd], env)
            timing = json.loads(out.strip().splitlines()[-1])
            theirs = [json.loads(l) for l in open(theirs_out)]

            same = 0
            for r, o, t in zip(records, ours, theirs):
                if o["response_raw"] == t["text"] and o["new_tokens"] == t["new_tokens"]:
                    same += 1
                else:
                    print(f"  {r['id']}: differs ({o['new_tokens']} vs {t['new_tokens']} tokens)"
                          f"\n    pctrain:      {o['response_raw'][:200]!r}"
                          f"\n    transformers: {t['text'][:200]!r}")
            differ += len(records) - same
            a_tps, b_tps = ours_tokens / ours_s, timing["tokens"] / timing["seconds"]
            print(f"{batch:5} {ours_tokens:7} {a_tps:13.1f} {b_tps:11.1f} {a_tps / b_tps:6.2f} "
                  f"{ours_mib:11.0f} {theirs_mib:9.0f} {same:>4}/{len(records)}", flush=True)
            print(json.dumps({"batch": batch, "pctrain_tokens": ours_tokens,
                              "pctrain_seconds": ours_s, "pctrain_peak_mib": round(ours_mib),
                              "transformers_tokens": timing["tokens"],
                              "transformers_seconds": round(timing["seconds"], 3),
                              "transformers_peak_mib": round(theirs_mib),
                              "ratio": round(a_tps / b_tps, 3), "identical": same,
                              "prompts": len(records)}), flush=True)
    sys.exit(1 if differ else 0)


if __name__ == "__main__":
    main()
