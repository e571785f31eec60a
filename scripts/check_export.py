#!/usr/bin/env python3
"""Check a pctrain export against transformers (and PEFT): the loss over the trained tokens of
the samples `pctrain data inspect --json` prints must equal what `pctrain eval` reports.

    pctrain data inspect --data FILE --tokenizer MODEL_DIR --json [--seq-len N] > samples.jsonl
    python3 scripts/check_export.py MODEL_DIR samples.jsonl [ADAPTER_DIR]

Needs torch, transformers (and peft for an adapter), e.g. the venv of scripts/make_fixtures.py.
Prints {"loss", "tokens"} as `pctrain eval` does: summed next-token cross-entropy over trained
tokens, divided by their number.
"""

import json
import sys

import torch
from transformers import AutoModelForCausalLM


def main() -> None:
    model_dir, samples_path = sys.argv[1], sys.argv[2]
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32, attn_implementation="eager")
    if len(sys.argv) > 3:
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, sys.argv[3])
    model.eval()
    total, count = 0.0, 0
    with open(samples_path, encoding="utf-8") as f:
        for line in f:
            sample = json.loads(line)
            ids = torch.tensor([sample["input_ids"]])
            labels = torch.tensor([sample["labels"]])
            with torch.no_grad():
                logits = model(input_ids=ids).logits[0, :-1].double()
            targets = labels[0, 1:]
            keep = targets != -100
            loss = torch.nn.functional.cross_entropy(logits[keep], targets[keep], reduction="sum")
            total += loss.item()
            count += int(keep.sum())
    print(json.dumps({"loss": total / count, "tokens": count}))


if __name__ == "__main__":
    main()
