#!/usr/bin/env python3
"""Greedy `pctrain generate` against transformers' `generate(do_sample=False)` on a model folder.

    python3 scripts/check_generate.py MODEL_DIR PROMPTS.jsonl [--adapter DIR] [--new-tokens 48]
        [--pctrain target/release/pctrain] [--batch-size 6]

PROMPTS.jsonl holds records in the training readers' shape (`{"id", "messages": [...]}`). Each
prompt is rendered with the model's chat template and its generation prompt, decoded by both one
prompt at a time (transformers) and in one batch (pctrain), and the answers are compared: the
same text and the same number of new tokens. Prints one line a prompt and exits 1 on a mismatch.
Needs torch, transformers (and peft with --adapter).
"""

import argparse
import json
import subprocess
import sys
import tempfile

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer


def reference(model_dir, adapter, records, new_tokens):
    tok = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    if adapter:
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, adapter)
    model.eval()
    eos = model.generation_config.eos_token_id
    eos = set(eos if isinstance(eos, list) else [eos])
    out = []
    for r in records:
        last_user = max(i for i, m in enumerate(r["messages"]) if m["role"] == "user")
        prompt = r["messages"][: last_user + 1]
        ids = tok.apply_chat_template(prompt, add_generation_prompt=True, return_tensors="pt")
        ids = ids["input_ids"] if not torch.is_tensor(ids) else ids
        with torch.no_grad():
            full = model.generate(ids, attention_mask=torch.ones_like(ids),
                                  max_new_tokens=new_tokens, do_sample=False)
        new = full[0, ids.shape[1]:].tolist()
        body = new[:-1] if new and new[-1] in eos else new
        out.append({"text": tok.decode(body, skip_special_tokens=True), "new_tokens": len(new)})
    return out


def ours(binary, model_dir, adapter, prompts_path, new_tokens, batch_size):
    with tempfile.TemporaryDirectory() as d:
        out = f"{d}/answers.jsonl"
        cmd = [binary, "generate", "--base", model_dir, "--data", prompts_path, "--output", out,
               "--max-new-tokens", str(new_tokens), "--batch-size", str(batch_size)]
        if adapter:
            cmd += ["--adapter", adapter]
        subprocess.run(cmd, check=True)
        return [json.loads(l) for l in open(out)]


def main():
    p = argparse.ArgumentParser()
    p.add_argument("model_dir")
    p.add_argument("prompts")
    p.add_argument("--adapter")
    p.add_argument("--new-tokens", type=int, default=48)
    p.add_argument("--pctrain", default="target/release/pctrain")
    p.add_argument("--batch-size", type=int, default=6)
    a = p.parse_args()
    records = [json.loads(l) for l in open(a.prompts) if l.strip()]
    want = reference(a.model_dir, a.adapter, records, a.new_tokens)
    got = ours(a.pctrain, a.model_dir, a.adapter, a.prompts, a.new_tokens, a.batch_size)
    same = 0
    for r, w, g in zip(records, want, got):
        ok = w["text"] == g["response_raw"] and w["new_tokens"] == g["new_tokens"]
        same += ok
        print(f"{r.get('id')}: {'same' if ok else 'DIFFERENT'} ({w['new_tokens']} tokens)")
        if not ok:
            print(f"  transformers: {w['text']!r}\n  pctrain:      {g['response_raw']!r}")
    print(f"{same}/{len(records)} identical")
    sys.exit(0 if same == len(records) else 1)


if __name__ == "__main__":
    main()
