#!/usr/bin/env python3
"""Check pctrain's exports against transformers and PEFT: an adapter loaded with PEFT onto its
base, and a merged model loaded with transformers, must give the loss `pctrain eval` reports on
the same data.

    python3 scripts/check_export.py --pctrain target/release/pctrain --base BASE_DIR \
        [--adapter ADAPTER_DIR] [--merged MERGED_DIR] -- DATA_FLAGS...

DATA_FLAGS are passed to `pctrain data inspect` and `pctrain eval` alike (e.g. `--data FILE
--template tulu --seq-len 512 --mix nl`). The samples come from `pctrain data inspect --json`, so
both sides score the same tokens; the loss is the summed next-token cross-entropy over trained
tokens divided by their number. Exits 1 when a pair differs by more than 1e-4 relative.

Needs torch, transformers and peft (e.g. the venv of scripts/make_fixtures.py).
"""

import argparse
import json
import subprocess
import sys

import torch
from transformers import AutoModelForCausalLM

TOL = 1e-4


def run(cmd: list) -> str:
    return subprocess.run(cmd, check=True, capture_output=True, text=True).stdout


def transformers_loss(model, samples: list) -> dict:
    total, count = 0.0, 0
    for sample in samples:
        ids = torch.tensor([sample["input_ids"]])
        labels = torch.tensor([sample["labels"]])
        with torch.no_grad():
            logits = model(input_ids=ids).logits[0, :-1].double()
        targets = labels[0, 1:]
        keep = targets != -100
        loss = torch.nn.functional.cross_entropy(logits[keep], targets[keep], reduction="sum")
        total += loss.item()
        count += int(keep.sum())
    return {"loss": total / count, "tokens": count}


def load(path: str):
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32, attn_implementation="eager")
    return model.eval()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pctrain", required=True, help="the pctrain binary")
    parser.add_argument("--base", required=True, help="the base model folder")
    parser.add_argument("--adapter", help="a PEFT adapter exported by pctrain")
    parser.add_argument("--merged", help="a merged model exported by pctrain (export --merged)")
    parser.add_argument("data", nargs=argparse.REMAINDER, help="-- then the data flags")
    args = parser.parse_args()
    data = [a for a in args.data if a != "--"] if args.data else []
    if not (args.adapter or args.merged):
        parser.error("give --adapter, --merged or both")

    inspect = run([args.pctrain, "data", "inspect", "--json", "--tokenizer", args.base, *data])
    samples = [json.loads(line) for line in inspect.splitlines() if line.strip()]
    ok = True
    checks = []
    if args.adapter:
        from peft import PeftModel

        model = PeftModel.from_pretrained(load(args.base), args.adapter).eval()
        ours = run([args.pctrain, "eval", "--base", args.base, "--adapter", args.adapter, *data])
        checks.append(("adapter (PEFT)", json.loads(ours.splitlines()[-1]), transformers_loss(model, samples)))
    if args.merged:
        ours = run([args.pctrain, "eval", "--base", args.merged, *data])
        checks.append(("merged (transformers)", json.loads(ours.splitlines()[-1]), transformers_loss(load(args.merged), samples)))
    for name, ours, theirs in checks:
        rel = abs(ours["loss"] - theirs["loss"]) / abs(theirs["loss"])
        same = rel <= TOL and ours["tokens"] == theirs["tokens"]
        ok &= same
        print(
            f"{name:<22} pctrain eval {ours['loss']:.10f} ({ours['tokens']} tokens)  "
            f"python {theirs['loss']:.10f} ({theirs['tokens']} tokens)  rel diff {rel:.2e}  "
            f"{'ok' if same else 'MISMATCH'}"
        )
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
