#!/usr/bin/env python3
"""The transformers (+ PEFT) side of crates/pctrain-model/examples/train_step_bench.rs: one
training step (forward and backward) of the same Llama shape on CPU, tokens per second and peak
resident memory.

    /tmp/ptenv/bin/python scripts/bench_transformers.py [lora|full] [SEQ_LEN] [ROWS]

(the venv of scripts/make_fixtures.py: torch, transformers, peft). One warm-up step, then the
median of five, as the Rust benchmark does.
"""

import resource
import statistics
import sys
import time

import torch
from peft import LoraConfig, get_peft_model
from transformers import LlamaConfig, LlamaForCausalLM


def main() -> None:
    mode = sys.argv[1] if len(sys.argv) > 1 else "lora"
    seq_len = int(sys.argv[2]) if len(sys.argv) > 2 else 512
    rows = int(sys.argv[3]) if len(sys.argv) > 3 else 1
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=2048, hidden_size=512, intermediate_size=1536, num_hidden_layers=6,
        num_attention_heads=8, num_key_value_heads=4, rms_norm_eps=1e-5, rope_theta=500000.0,
        max_position_embeddings=2048, tie_word_embeddings=False,
    )
    model = LlamaForCausalLM(config).float()
    model.config.use_cache = False
    if mode == "lora":
        model = get_peft_model(model, LoraConfig(
            r=16, lora_alpha=32, lora_dropout=0.0,
            target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
        ))
    model.train()
    ids = torch.randint(0, 2048, (rows, seq_len))
    labels = torch.randint(0, 2048, (rows, seq_len))
    times = []
    for step in range(6):
        start = time.perf_counter()
        out = model(input_ids=ids, labels=labels)
        out.loss.backward()
        model.zero_grad(set_to_none=True)
        dt = time.perf_counter() - start
        if step > 0:
            times.append(dt)
    median = statistics.median(times)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024
    print(
        f"transformers {mode}, torch {torch.__version__} ({torch.get_num_threads()} threads), "
        f"batch {rows}x{seq_len}: step {median:.3f} s, {rows * seq_len / median:.0f} tokens/s, "
        f"peak RSS {peak} MiB"
    )


if __name__ == "__main__":
    main()
