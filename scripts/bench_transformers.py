#!/usr/bin/env python3
"""The transformers (+ PEFT) side of `pctrain bench`: whole training steps (forward, backward,
clipping to norm 1, AdamW) of the same model and batch, as one JSON line.

    python3 scripts/bench_transformers.py --shape SHAPE|--base DIR --mode lora|full
        --seq-len T --rows B [--packed] [--steps N] [--device cpu|cuda] [--threads N]
        [--attn eager|sdpa]

SHAPE is one of `pctrain bench`'s shapes, with random weights; `--base` loads a model folder.
LoRA is PEFT r=16, alpha 32, no dropout, on all seven projections. On CPU everything is f32; on a
GPU the LoRA base is bf16 (PEFT keeps the adapter in f32) and full fine-tuning runs f32 weights
under bf16 autocast, as transformers' Trainer does with `bf16=True`. `--packed` fills each row
with samples of 3/8, 1/4, 1/8 and 1/4 of it, position ids restarting and a block-diagonal causal
mask, as `pctrain bench --packed` does. Labels are random tokens at every position. Two warm-up
steps, then the median of N. Memory is the process's peak resident set on CPU, torch's peak
allocation on a GPU.
"""

import argparse
import json
import resource
import statistics
import time

import torch

SHAPES = {
    "llama3-8b": dict(vocab_size=128256, hidden_size=4096, intermediate_size=14336, num_hidden_layers=32,
                      num_attention_heads=32, num_key_value_heads=8, tie_word_embeddings=False,
                      rope_theta=500000.0),
    "llama-1b": dict(vocab_size=128256, hidden_size=2048, intermediate_size=8192, num_hidden_layers=16,
                     num_attention_heads=32, num_key_value_heads=8, tie_word_embeddings=True,
                     rope_theta=500000.0),
    "llama-10m": dict(vocab_size=700, hidden_size=384, intermediate_size=1024, num_hidden_layers=6,
                      num_attention_heads=6, num_key_value_heads=2, tie_word_embeddings=False,
                      rope_theta=10000.0),
}
TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def sample_lengths(seq_len: int) -> list[int]:
    """The samples of one packed row: 3/8, 1/4, 1/8, 1/4 of it (the last takes the rest)."""
    parts = [seq_len * 3 // 8, seq_len // 4, seq_len // 8]
    return parts + [seq_len - sum(parts)]


def batch(rows: int, seq_len: int, vocab: int, packed: bool, device: str):
    g = torch.Generator().manual_seed(7)
    ids = torch.randint(0, vocab, (rows, seq_len), generator=g)
    labels = torch.randint(0, vocab, (rows, seq_len), generator=g)
    lengths = sample_lengths(seq_len) if packed else [seq_len]
    positions = torch.cat([torch.arange(n) for n in lengths]).repeat(rows, 1)
    segment = torch.cat([torch.full((n,), i) for i, n in enumerate(lengths)])
    allowed = (segment[:, None] == segment[None, :]) & torch.ones(seq_len, seq_len, dtype=torch.bool).tril()
    if packed:
        # Labels never cross samples (transformers shifts them inside the row).
        starts = torch.cumsum(torch.tensor([0] + lengths[:-1]), 0)
        labels[:, starts[1:]] = -100
    return ids.to(device), labels.to(device), positions.to(device), allowed, packed


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--shape")
    p.add_argument("--base")
    p.add_argument("--mode", default="lora", choices=["lora", "full"])
    p.add_argument("--seq-len", type=int, default=512)
    p.add_argument("--rows", type=int, default=1)
    p.add_argument("--packed", action="store_true")
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int)
    p.add_argument("--attn", default="sdpa", choices=["eager", "sdpa"])
    a = p.parse_args()
    if a.threads:
        torch.set_num_threads(a.threads)
    from transformers import AutoModelForCausalLM, LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    gpu = a.device != "cpu"
    lora = a.mode == "lora"
    dtype = torch.bfloat16 if gpu and lora else torch.float32
    if a.base:
        model = AutoModelForCausalLM.from_pretrained(a.base, dtype=dtype, attn_implementation=a.attn).to(a.device)
    else:
        config = LlamaConfig(**SHAPES[a.shape], rms_norm_eps=1e-5, max_position_embeddings=8192)
        with torch.device(a.device):
            model = LlamaForCausalLM._from_config(config, dtype=dtype, attn_implementation=a.attn)
    model.config.use_cache = False
    if lora:
        from peft import LoraConfig, get_peft_model

        model = get_peft_model(model, LoraConfig(r=16, lora_alpha=32, lora_dropout=0.0, target_modules=TARGETS))
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=1e-5)
    ids, labels, positions, allowed, packed = batch(a.rows, a.seq_len, model.config.vocab_size, a.packed, a.device)
    kwargs = dict(input_ids=ids, labels=labels, position_ids=positions)
    if packed:
        # A 4-D mask is used as given: 0 where attention is allowed, the dtype's minimum elsewhere.
        mask_dtype = torch.bfloat16 if gpu else torch.float32
        mask = torch.zeros(a.seq_len, a.seq_len, dtype=mask_dtype)
        mask[~allowed] = torch.finfo(mask_dtype).min
        kwargs["attention_mask"] = mask[None, None].expand(a.rows, 1, -1, -1).to(a.device)
    times = []
    if gpu:
        torch.cuda.reset_peak_memory_stats()
    for step in range(a.steps + 2):
        if gpu:
            torch.cuda.synchronize()
        start = time.perf_counter()
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=gpu and not lora):
            loss = model(**kwargs).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if gpu:
            torch.cuda.synchronize()
        if step >= 2:
            times.append(time.perf_counter() - start)
    step_s = statistics.median(times)
    line = {
        "tool": "transformers+peft" if lora else "transformers",
        "shape": a.shape or a.base, "mode": a.mode, "rows": a.rows, "seq_len": a.seq_len, "packed": a.packed,
        "attn": a.attn, "threads": torch.get_num_threads(),
        "parameters": sum(p.numel() for p in model.parameters()),
        "trainable_parameters": sum(p.numel() for p in params),
        "step_s": step_s, "tokens_per_s": a.rows * a.seq_len / step_s, "loss": loss.item(),
        "torch": torch.__version__,
    }
    if gpu:
        line["peak_allocated_mib"] = torch.cuda.max_memory_allocated() / 2**20
        line["peak_reserved_mib"] = torch.cuda.max_memory_reserved() / 2**20
    else:
        line["peak_rss_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps(line))


if __name__ == "__main__":
    main()
