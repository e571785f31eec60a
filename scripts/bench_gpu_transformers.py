#!/usr/bin/env python3
"""The transformers + PEFT side of `pctrain bench` on a GPU: whole training steps (forward,
backward, clipping, AdamW) of the same model shape with random weights, as one JSON line.

    python3 scripts/bench_gpu_transformers.py SHAPE MODE SEQ_LEN ROWS STEPS

SHAPE is llama3-8b or llama-1b, MODE lora or full. LoRA: bf16 base weights, PEFT r=16, alpha 32,
no dropout, all seven projections (PEFT keeps the adapter in f32). Full: f32 weights under bf16
autocast, as transformers' Trainer runs `bf16=True`. Attention is sdpa. Two warm-up steps, then the
median of STEPS; peak memory is torch's own count (scripts/gpu-check.sh also samples nvidia-smi).
"""

import json
import statistics
import sys
import time

import torch
from transformers import LlamaConfig, LlamaForCausalLM

SHAPES = {
    "llama3-8b": dict(vocab_size=128256, hidden_size=4096, intermediate_size=14336, num_hidden_layers=32,
                      num_attention_heads=32, num_key_value_heads=8, tie_word_embeddings=False),
    "llama-1b": dict(vocab_size=128256, hidden_size=2048, intermediate_size=8192, num_hidden_layers=16,
                     num_attention_heads=32, num_key_value_heads=8, tie_word_embeddings=True),
}
TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def main() -> None:
    shape, mode, seq_len, rows, steps = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])
    torch.manual_seed(0)
    config = LlamaConfig(**SHAPES[shape], rms_norm_eps=1e-5, rope_theta=500000.0, max_position_embeddings=8192)
    config.use_cache = False
    lora = mode == "lora"
    dtype = torch.bfloat16 if lora else torch.float32
    with torch.device("cuda"):
        model = LlamaForCausalLM._from_config(config, dtype=dtype, attn_implementation="sdpa")
    if lora:
        from peft import LoraConfig, get_peft_model

        model = get_peft_model(model, LoraConfig(r=16, lora_alpha=32, lora_dropout=0.0, target_modules=TARGETS))
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=1e-5)
    ids = torch.randint(0, config.vocab_size, (rows, seq_len), device="cuda")
    labels = torch.randint(0, config.vocab_size, (rows, seq_len), device="cuda")
    times = []
    torch.cuda.reset_peak_memory_stats()
    for step in range(steps + 2):
        torch.cuda.synchronize()
        start = time.perf_counter()
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=not lora):
            loss = model(input_ids=ids, labels=labels).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        torch.cuda.synchronize()
        if step >= 2:
            times.append(time.perf_counter() - start)
    step_s = statistics.median(times)
    print(json.dumps({
        "tool": "transformers+peft" if lora else "transformers",
        "shape": shape, "mode": mode, "rows": rows, "seq_len": seq_len,
        "parameters": sum(p.numel() for p in model.parameters()),
        "trainable_parameters": sum(p.numel() for p in params),
        "step_s": step_s, "tokens_per_s": rows * seq_len / step_s,
        "peak_allocated_mib": torch.cuda.max_memory_allocated() / 2**20,
        "peak_reserved_mib": torch.cuda.max_memory_reserved() / 2**20,
        "torch": torch.__version__,
    }))


if __name__ == "__main__":
    main()
