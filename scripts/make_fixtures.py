#!/usr/bin/env python3
"""Write the reference fixtures of pctrain-model's tests with Hugging Face transformers and PEFT.

Run by hand (CI never runs it; the fixtures are committed). Made with:

    torch 2.15.0, transformers 5.24.0, peft 0.21.2, tokenizers 0.23.3, safetensors 0.8.0

Set up a virtual environment outside the repository and run it from the repository root (about
10 seconds on two cores):

    python3 -m venv /tmp/ptenv
    /tmp/ptenv/bin/pip install torch==2.15.0
    /tmp/ptenv/bin/pip install transformers==5.24.0 peft==0.21.2 tokenizers safetensors numpy
    /tmp/ptenv/bin/python scripts/make_fixtures.py

(PyPI's Linux x86-64 torch wheel is the CUDA build: `pip install --no-deps torch` alone does not
import, since libtorch links the nvidia-* libraries; let pip install them, about 5 GB. Everything
here still runs on the CPU.)

Everything is float32 on the CPU, seeded, and the script is deterministic: running it twice writes
the same bytes (whatever PYTHONHASHSEED). Weights are drawn by transformers' own init with
initializer_range 0.1 (Granite: 0.6, with its embedding redrawn at std 0.1, see granite_config),
then every RMSNorm weight is set to 1 + 0.1 * N(0, 1). It writes under
crates/pctrain-model/tests/fixtures/:

  llama/     LlamaForCausalLM: vocab 2048 (the tiny tokenizer), hidden 16, 4 heads, 2 KV heads,
             intermediate 40, 2 layers, llama3 RoPE scaling with original context 16, untied.
             Also tokenizer.json + tokenizer_config.json (copies of assets/tiny), and the
             evaluation fixture: eval-samples.jsonl (the first 6 records of examples/tulu-pc.jsonl
             rendered with the tulu template, tokenised, labelled, cut to 64 tokens) and
             eval-reference.json (mean cross-entropy of the base model over their trained tokens).
  mistral/   MistralForCausalLM: vocab 256, hidden 16, 2 heads of head_dim 12, 1 KV head,
             intermediate 40, 2 layers, sliding window 6.
  granite/   GraniteForCausalLM: vocab 256, hidden 16, 4 heads, 2 KV heads, intermediate 40,
             2 layers, embedding x12, attention scale 0.2, residual x0.3, logits /4, tied.
  eval-records.jsonl   the 6 records the evaluation fixture was made from, verbatim.
  */generate-batch.safetensors   the batched decoding fixture (write_generate_batch; alone:
             --only generate-batch): prompts [32, 40] int64 (left-padded with 0), prompt_lengths
             [32] (1 to 40), greedy [32, 16]: transformers' greedy decoding of the committed base
             model (EOS disabled), the same at batch sizes 1, 16 and 32 (left padding, attention
             mask), each prompt seeded and kept only if every step's winner leads by more than
             MIN_MARGIN.
  llama/peft-steps/    the training fixture (write_peft_steps; alone: --only peft-steps): the
             committed llama model and llama/adapter after 3 PEFT AdamW steps on the first 3
             samples of eval-samples.jsonl, one a step (lr 1e-3 cosine over 3 steps, no warmup,
             clip 1.0, no weight decay): adapter_model.safetensors + adapter_config.json as PEFT
             saves them, and steps.json (each step's lr, loss, pre-clip grad norm, trained tokens).

Each model folder holds what save_pretrained writes (config.json, model.safetensors,
generation_config.json; transformers 5 writes RoPE as "rope_parameters", rope_theta inside, where
older checkpoints have "rope_theta" and "rope_scaling"; Granite's tied lm_head is not stored),
adapter/ (a PEFT LoRA adapter, r=4, alpha=8, so scale 2, on all seven projections, A and B drawn
from N(0, 0.1^2), Granite N(0, 0.2^2); PEFT's model card README.md is dropped and target_modules
sorted), and reference.safetensors (metadata: format, torch, transformers, peft, lora_grad_names):

  input_ids, labels, position_ids, segment_ids   [2, 16] int64. Row 0 packs two samples (9 and 7
      tokens; positions restart, attention stays inside a sample); row 1 is one sample of 12
      tokens and 4 padding positions (segment 0, position 0, label -100). Labels are aligned
      with input_ids (the model shifts them), -100 on each sample's prompt prefix and on padding.
  base.logits [2, 16, V], base.loss []         the base model on that batch.
  lora.logits [2, 16, V], lora.loss []         the model with the adapter.
  grad.inputs_embeds [2, 16, H]                d lora.loss / d (embed_tokens(input_ids)), that is
      before Granite's embedding multiplier.
  grad.<PEFT parameter name>                   d lora.loss / d each LoRA weight, named as PEFT's
      named_parameters() names them (".lora_A.default.weight"); the adapter file drops
      ".default". The metadata key "lora_grad_names" lists them (JSON).
  generate.prompt [8], generate.greedy [20]    greedy decoding of the base model with a KV cache,
      EOS disabled so exactly 20 new tokens come out. The prompt is the first seeded one whose
      20 steps each have a winner ahead of the runner-up by more than MIN_MARGIN.

Losses are transformers': labels shifted left by one inside the model, then the mean of the
cross-entropy over every position whose shifted label is not -100, over the whole batch (not a
mean of per-row means).

The packed rows go to transformers as a 4D additive mask [B, 1, T, T] (0 where a query may attend,
float32 min elsewhere: causal, same segment, and for Mistral q - k < sliding_window); transformers
uses a 4D mask as given. Padding queries attend only to themselves, so their logits are finite but
meaningless: compare logits only where segment_ids != 0. The script checks that each sample's logits
equal those of the sample run alone, and equal transformers' own packing from restarting
position_ids (which it only does with use_cache=False: with a cache, the default in eval mode,
that packing is silently skipped and attention crosses samples).
"""

import argparse
import json
import math
import shutil
import struct
import tempfile
from pathlib import Path

import peft
import safetensors
import tokenizers
import torch
import torch.nn.functional as F
import transformers
from peft import LoraConfig, PeftModel, get_peft_model
from safetensors.torch import save, load_file
from transformers import GraniteConfig, LlamaConfig, MistralConfig
from transformers import GraniteForCausalLM, LlamaForCausalLM, MistralForCausalLM
from transformers import get_cosine_schedule_with_warmup

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "crates/pctrain-model/tests/fixtures"
TINY = ROOT / "assets/tiny"
EXAMPLES = ROOT / "examples/tulu-pc.jsonl"

# The versions the committed fixtures were made with; others may differ in the last bits.
MADE_WITH = {"torch": "2.15.0", "transformers": "5.24.0", "peft": "0.21.2"}
VERSIONS = {
    "torch": torch.__version__,
    "transformers": transformers.__version__,
    "peft": peft.__version__,
}

B, T = 2, 16
# Row 0: two packed samples; row 1: one sample then padding. (length, prompt tokens without labels)
ROW0 = [(9, 3), (7, 2)]
ROW1 = [(12, 4)]
PROMPT_LEN, NEW_TOKENS = 8, 20
BATCH_PROMPTS, BATCH_MAX_LEN, BATCH_NEW = 32, 40, 16
LORA_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
IGNORE = -100
EVAL_RECORDS, EVAL_SEQ_LEN = 6, 64
TOL = 1e-5
# The training fixture: this many AdamW steps at batch size 1 from llama/adapter, peak learning
# rate high enough that the adapter moves well beyond float rounding.
PEFT_STEPS, PEFT_LR, PEFT_CLIP = 3, 1e-3, 1.0
# Greedy fixtures need each step's winner ahead by this much, so that float rounding elsewhere
# cannot flip a token.
MIN_MARGIN = 1e-3


def log(msg: str) -> None:
    print(msg, flush=True)


def special_ids() -> dict:
    """The ids of the tiny tokenizer's BOS, EOS and padding tokens."""
    tok = json.loads((TINY / "tokenizer.json").read_text())
    by_content = {t["content"]: t["id"] for t in tok["added_tokens"]}
    return {
        "bos": by_content["<|begin_of_text|>"],
        "eos": by_content["<|end_of_text|>"],
        "pad": by_content["<|pad|>"],
        "vocab": len(tok["model"]["vocab"]),
        "first_plain": max(by_content.values()) + 1,
    }


# ---------------------------------------------------------------------------------------------
# Models


def llama_config(sp: dict) -> LlamaConfig:
    return LlamaConfig(
        vocab_size=sp["vocab"],
        hidden_size=16,
        intermediate_size=40,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        rms_norm_eps=1e-5,
        rope_parameters={
            "rope_type": "llama3",
            "rope_theta": 10000.0,
            "factor": 8.0,
            "low_freq_factor": 1.0,
            "high_freq_factor": 4.0,
            "original_max_position_embeddings": 16,
        },
        max_position_embeddings=64,
        tie_word_embeddings=False,
        bos_token_id=sp["bos"],
        eos_token_id=sp["eos"],
        pad_token_id=sp["pad"],
        initializer_range=0.1,
    )


def mistral_config(sliding_window: int | None = 6) -> MistralConfig:
    return MistralConfig(
        vocab_size=256,
        hidden_size=16,
        intermediate_size=40,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=1,
        head_dim=12,
        rms_norm_eps=1e-5,
        rope_parameters={"rope_type": "default", "rope_theta": 10000.0},
        max_position_embeddings=64,
        sliding_window=sliding_window,
        tie_word_embeddings=False,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=0,
        initializer_range=0.1,
    )


def granite_config() -> GraniteConfig:
    return GraniteConfig(
        vocab_size=256,
        hidden_size=16,
        intermediate_size=40,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        rms_norm_eps=1e-5,
        rope_parameters={"rope_type": "default", "rope_theta": 10000.0},
        max_position_embeddings=64,
        embedding_multiplier=12.0,
        attention_multiplier=0.2,
        residual_multiplier=0.3,
        logits_scaling=4.0,
        tie_word_embeddings=True,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=0,
        # Larger weights than the others (and embeddings redrawn smaller, see main): at 0.1 the
        # x12 embedding and x0.3 residual let the layers barely move the tied logits, and
        # greedy decoding gave one token over and over whatever the prompt.
        initializer_range=0.6,
    )


def build(cls, config, seed: int, embed_std: float | None = None):
    """A seeded random model in float32 with eager attention and perturbed RMSNorm weights."""
    torch.manual_seed(seed)
    model = cls._from_config(config, attn_implementation="eager", dtype=torch.float32)
    with torch.no_grad():
        if embed_std is not None:
            model.get_input_embeddings().weight.normal_(0.0, embed_std)
        for name, module in sorted(model.named_modules()):
            if type(module).__name__.endswith("RMSNorm"):
                module.weight.copy_(1.0 + 0.1 * torch.randn_like(module.weight))
    model.eval()
    return model


# ---------------------------------------------------------------------------------------------
# The batch


def make_batch(vocab: int, low: int, pad: int, seed: int) -> dict:
    g = torch.Generator().manual_seed(seed)
    input_ids = torch.full((B, T), pad, dtype=torch.int64)
    labels = torch.full((B, T), IGNORE, dtype=torch.int64)
    position_ids = torch.zeros((B, T), dtype=torch.int64)
    segment_ids = torch.zeros((B, T), dtype=torch.int64)
    for row, samples in enumerate([ROW0, ROW1]):
        at = 0
        for seg, (length, prompt) in enumerate(samples, start=1):
            ids = torch.randint(low, vocab, (length,), generator=g)
            input_ids[row, at : at + length] = ids
            labels[row, at + prompt : at + length] = ids[prompt:]
            position_ids[row, at : at + length] = torch.arange(length)
            segment_ids[row, at : at + length] = seg
            at += length
    return {
        "input_ids": input_ids,
        "labels": labels,
        "position_ids": position_ids,
        "segment_ids": segment_ids,
    }


def mask_4d(segment_ids: torch.Tensor, sliding_window: int | None) -> torch.Tensor:
    """Additive mask [B, 1, T, T]: 0 where query q may attend key k, float32 min elsewhere."""
    q = torch.arange(T)[:, None]
    k = torch.arange(T)[None, :]
    allowed = (k <= q)[None]
    if sliding_window is not None:
        allowed = allowed & ((q - k) < sliding_window)[None]
    seg_q = segment_ids[:, :, None]
    seg_k = segment_ids[:, None, :]
    allowed = allowed & (seg_q == seg_k) & (seg_q != 0)
    # Padding (segment 0) attends to itself only, so its softmax stays well defined.
    allowed = allowed | ((seg_q == 0) & (q == k)[None])
    mask = torch.zeros((B, T, T), dtype=torch.float32)
    mask.masked_fill_(~allowed, torch.finfo(torch.float32).min)
    return mask[:, None]


def segments(segment_ids: torch.Tensor):
    """(row, start, end) of every sample."""
    for row in range(B):
        for seg in range(1, int(segment_ids[row].max()) + 1):
            where = (segment_ids[row] == seg).nonzero().flatten()
            yield row, int(where[0]), int(where[-1]) + 1


def check_packed(model, batch: dict, logits: torch.Tensor, what: str) -> float:
    """Each sample run alone, as its own row with the model's own masking, against the batch."""
    worst = 0.0
    with torch.no_grad():
        for row, start, end in segments(batch["segment_ids"]):
            ids = batch["input_ids"][row : row + 1, start:end]
            alone = model(input_ids=ids).logits[0]
            worst = max(worst, (alone - logits[row, start:end]).abs().max().item())
    log(f"  {what}: packed/padded vs alone, max |diff| of logits = {worst:.3e}")
    assert worst < TOL, f"{what}: packed logits differ from the samples run alone"
    return worst


def greedy_by_hand(model, prompt: torch.Tensor):
    """Greedy decoding without a cache, one full forward a step, and the smallest margin between
    the best and second-best logit over the steps."""
    ids, margin = prompt, float("inf")
    with torch.no_grad():
        for _ in range(NEW_TOKENS):
            last = model(input_ids=ids).logits[0, -1]
            top = last.topk(2).values
            margin = min(margin, (top[0] - top[1]).item())
            ids = torch.cat([ids, last.argmax().view(1, 1)], dim=1)
    return ids, margin


def tidy_adapter(folder: Path) -> None:
    """PEFT writes target_modules from a set (its order changes from run to run) and a model card
    template; sort the one and drop the other so that reruns write the same bytes."""
    (folder / "README.md").unlink(missing_ok=True)
    path = folder / "adapter_config.json"
    config = json.loads(path.read_text())
    config["target_modules"] = sorted(config["target_modules"])
    path.write_text(json.dumps(config, indent=2, sort_keys=True))


def write_safetensors(path: Path, tensors: dict, metadata: dict) -> None:
    """safetensors' own writer, with the header's metadata in sorted order: the library keeps it
    in a hash map, so its order (and the file's bytes) changes from run to run."""
    raw = save(tensors, metadata=metadata)
    n = struct.unpack("<Q", raw[:8])[0]
    header = json.loads(raw[8 : 8 + n])
    header["__metadata__"] = dict(sorted(header["__metadata__"].items()))
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)
    path.write_bytes(struct.pack("<Q", len(text)) + text + raw[8 + n :])
    back = load_file(str(path))
    assert back.keys() == tensors.keys() and all(torch.equal(back[k], v) for k, v in tensors.items())


def loss_by_hand(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    shifted = F.pad(labels, (0, 1), value=IGNORE)[:, 1:]
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), shifted.reshape(-1), ignore_index=IGNORE)


# ---------------------------------------------------------------------------------------------
# One model's fixtures


def lora_config() -> LoraConfig:
    return LoraConfig(
        r=4,
        lora_alpha=8,
        lora_dropout=0.0,
        target_modules=LORA_TARGETS,
        init_lora_weights=False,
        task_type="CAUSAL_LM",
    )


def write_model(
    name: str, model, seed: int, low: int, lora_std: float, sliding_window: int | None = None
) -> dict:
    folder = OUT / name
    if folder.exists():
        shutil.rmtree(folder)
    folder.mkdir(parents=True)
    model.save_pretrained(folder, safe_serialization=True)
    config = model.config
    vocab, hidden = config.vocab_size, config.hidden_size
    batch = make_batch(vocab, low, config.pad_token_id, seed + 1)
    mask = mask_4d(batch["segment_ids"], sliding_window)
    fwd = {"attention_mask": mask, "position_ids": batch["position_ids"]}
    log(f"{name}: {sum(p.numel() for p in model.parameters())} parameters")

    # Base model.
    with torch.no_grad():
        out = model(input_ids=batch["input_ids"], labels=batch["labels"], **fwd)
    base_logits, base_loss = out.logits.detach().clone(), out.loss.detach().clone()
    check_packed(model, batch, base_logits, "base")
    # transformers' own packing (segments found where position_ids restart; only without a cache).
    with torch.no_grad():
        own = model(input_ids=batch["input_ids"], position_ids=batch["position_ids"], use_cache=False).logits
    real = batch["segment_ids"] != 0
    diff = (own - base_logits)[real].abs().max().item()
    log(f"  base: 4D mask vs transformers' position_ids packing (use_cache=False), max |diff| = {diff:.3e}")
    assert diff < TOL
    by_hand = loss_by_hand(base_logits, batch["labels"])
    log(f"  base.loss = {base_loss.item():.6f} (by hand, mean over shifted labels: {by_hand.item():.6f})")
    assert abs(by_hand.item() - base_loss.item()) < TOL

    # Greedy generation of the base model, from a prompt whose steps have clear winners.
    g = torch.Generator().manual_seed(seed + 2)
    for attempt in range(100):
        prompt = torch.randint(low, vocab, (1, PROMPT_LEN), generator=g)
        ids, margin = greedy_by_hand(model, prompt)
        if margin > MIN_MARGIN and len(set(ids[0, PROMPT_LEN:].tolist())) > 1:
            break
    else:
        raise RuntimeError(f"{name}: no prompt with a clear greedy decoding")
    with torch.no_grad():
        generated = model.generate(
            prompt,
            attention_mask=torch.ones_like(prompt),
            max_new_tokens=NEW_TOKENS,
            min_new_tokens=NEW_TOKENS,
            do_sample=False,
            use_cache=True,
            eos_token_id=None,
            pad_token_id=config.pad_token_id,
        )
    greedy = generated[0, PROMPT_LEN:].clone()
    assert greedy.numel() == NEW_TOKENS, greedy
    assert torch.equal(ids[0, PROMPT_LEN:], greedy), "cached and uncached greedy decoding differ"
    log(
        f"  generate (prompt {attempt + 1} tried; smallest top-1/top-2 logit margin {margin:.3e}): "
        f"{prompt[0].tolist()} -> {greedy.tolist()}"
    )

    # LoRA.
    torch.manual_seed(seed + 3)
    lora = get_peft_model(model, lora_config())
    with torch.no_grad():
        for pname, p in sorted(lora.named_parameters()):
            if "lora_" in pname:
                p.copy_(lora_std * torch.randn_like(p))
    lora.eval()
    lora.save_pretrained(folder / "adapter", safe_serialization=True)
    tidy_adapter(folder / "adapter")
    lora_params = [(n, p) for n, p in lora.named_parameters() if p.requires_grad]
    assert all(".lora_A." in n or ".lora_B." in n for n, _ in lora_params), [n for n, _ in lora_params]
    assert len(lora_params) == 2 * len(LORA_TARGETS) * config.num_hidden_layers

    embeds = lora.get_input_embeddings()(batch["input_ids"]).detach().clone().requires_grad_()
    out = lora(inputs_embeds=embeds, labels=batch["labels"], **fwd)
    lora_logits, lora_loss = out.logits.detach().clone(), out.loss.detach().clone()
    lora.zero_grad(set_to_none=True)
    out.loss.backward()
    with torch.no_grad():
        via_ids = lora(input_ids=batch["input_ids"], **fwd).logits
    assert torch.equal(via_ids, lora_logits), "inputs_embeds and input_ids paths differ"
    check_packed(lora, batch, lora_logits, "lora")
    log(
        f"  lora.loss = {lora_loss.item():.6f}; max |lora.logits - base.logits| = "
        f"{(lora_logits - base_logits).abs().max().item():.3e}"
    )

    tensors = {k: v.contiguous() for k, v in batch.items()}
    tensors["base.logits"] = base_logits
    tensors["base.loss"] = base_loss
    tensors["lora.logits"] = lora_logits
    tensors["lora.loss"] = lora_loss
    tensors["grad.inputs_embeds"] = embeds.grad.detach().clone()
    assert tensors["grad.inputs_embeds"].shape == (B, T, hidden)
    names = []
    smallest = float("inf")
    for pname, p in lora_params:
        assert p.grad is not None, pname
        biggest = p.grad.abs().max().item()
        assert biggest > 0.0, f"zero gradient for {pname}"
        smallest = min(smallest, biggest)
        names.append(pname)
        tensors[f"grad.{pname}"] = p.grad.detach().clone().contiguous()
    log(f"  {len(names)} LoRA grads, all non-zero (smallest max|grad| = {smallest:.3e})")
    tensors["generate.prompt"] = prompt[0].clone()
    tensors["generate.greedy"] = greedy
    for k, v in tensors.items():
        assert v.dtype in (torch.float32, torch.int64), (k, v.dtype)

    metadata = {"format": "pt", **VERSIONS, "lora_grad_names": json.dumps(names)}
    write_safetensors(folder / "reference.safetensors", tensors, metadata)

    # What was saved gives the same logits once loaded back.
    reloaded = type(model).from_pretrained(folder, attn_implementation="eager", dtype=torch.float32).eval()
    with torch.no_grad():
        again = reloaded(input_ids=batch["input_ids"], **fwd).logits
        assert torch.equal(again, base_logits), f"{name}: reloaded base model differs"
        reloaded = PeftModel.from_pretrained(reloaded, folder / "adapter").eval()
        again = reloaded(input_ids=batch["input_ids"], **fwd).logits
        assert torch.equal(again, lora_logits), f"{name}: reloaded adapter differs"
    log("  reloaded from disk: base and LoRA logits identical")

    # Undo the PEFT wrapping for any later use of the base model.
    lora.unload()
    return {"batch": batch, "folder": folder}


# ---------------------------------------------------------------------------------------------
# Checks of the configurations themselves


def check_llama3_rope(config: LlamaConfig) -> None:
    """The llama3 scaling really changes the frequencies (and so the logits)."""
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

    scaled, _ = ROPE_INIT_FUNCTIONS["llama3"](config, "cpu")
    head_dim = config.hidden_size // config.num_attention_heads
    plain = 1.0 / (10000.0 ** (torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim))
    log(f"llama3 rope: inv_freq plain {plain.tolist()} -> scaled {scaled.tolist()}")
    assert not torch.allclose(scaled, plain)


def check_llama3_logits(sp: dict, batch: dict, seed: int) -> None:
    config = llama_config(sp)
    scaled = build(LlamaForCausalLM, config, seed)
    plain_config = llama_config(sp)
    plain_config.rope_parameters = {"rope_type": "default", "rope_theta": 10000.0}
    plain = build(LlamaForCausalLM, plain_config, seed)
    plain.load_state_dict(scaled.state_dict())
    with torch.no_grad():
        a = scaled(input_ids=batch["input_ids"][1:]).logits
        b = plain(input_ids=batch["input_ids"][1:]).logits
    diff = (a - b).abs().max().item()
    log(f"llama3 rope: max |logits(llama3) - logits(default rope)| = {diff:.3e}")
    assert diff > 1e-4


def check_sliding_window(batch: dict, seed: int) -> None:
    """The window of 6 really masks: a full 16-token row differs from the same model without it."""
    windowed = build(MistralForCausalLM, mistral_config(6), seed)
    full = build(MistralForCausalLM, mistral_config(None), seed)
    full.load_state_dict(windowed.state_dict())
    ids = batch["input_ids"][:, :]
    ids = torch.where(batch["segment_ids"] == 0, 5, ids)  # any 16 tokens will do
    with torch.no_grad():
        a = windowed(input_ids=ids).logits
        b = full(input_ids=ids).logits
    inside = (a[:, :6] - b[:, :6]).abs().max().item()
    beyond = (a[:, 6:] - b[:, 6:]).abs().max().item()
    log(
        f"mistral sliding window 6 vs none: max |diff| positions 0-5 = {inside:.3e}, "
        f"positions 6-15 = {beyond:.3e}"
    )
    assert inside < TOL and beyond > 1e-4


# ---------------------------------------------------------------------------------------------
# The evaluation fixture (llama only)


def render_tulu(messages: list, bos: str, eos: str):
    """The tulu template's text and the trained character ranges (assistant content + EOS)."""
    text = bos
    spans = []
    for i, m in enumerate(messages):
        role, content = m["role"], m["content"]
        if role == "system":
            text += "<|system|>\n" + content + "\n"
        elif role == "user":
            text += "<|user|>\n" + content + "\n"
        elif role == "assistant":
            text += "<|assistant|>\n"
            start = len(text)
            text += content + eos
            spans.append((start, len(text)))
            if i != len(messages) - 1:
                text += "\n"
        else:
            raise ValueError(f"unknown role {role!r}")
    return text, spans


def trained_mask(offsets, spans):
    """pctrain's rule: a token is trained when its byte range overlaps a trained span."""
    out = []
    for start, end in offsets:
        hit = False
        for s, e in spans:
            if e <= start:
                continue
            hit = s <= start if start == end else s < end
            break
        out.append(hit)
    return out


def byte_offsets(text: str, offsets):
    """The tokenizers binding gives character offsets; pctrain uses byte offsets."""
    starts = [0]
    for ch in text:
        starts.append(starts[-1] + len(ch.encode("utf-8")))
    return [(starts[s], starts[e]) for s, e in offsets]


def write_eval(model) -> None:
    folder = OUT / "llama"
    lines = EXAMPLES.read_text().splitlines(keepends=True)[:EVAL_RECORDS]
    (OUT / "eval-records.jsonl").write_text("".join(lines))
    tok = tokenizers.Tokenizer.from_file(str(TINY / "tokenizer.json"))
    samples = []
    for line in lines:
        record = json.loads(line)
        text, char_spans = render_tulu(record["messages"], "<|begin_of_text|>", "<|end_of_text|>")
        spans = byte_offsets(text, char_spans)
        enc = tok.encode(text, add_special_tokens=False)
        ids = enc.ids[:EVAL_SEQ_LEN]
        trained = trained_mask(byte_offsets(text, enc.offsets), spans)[:EVAL_SEQ_LEN]
        labels = [i if t else IGNORE for i, t in zip(ids, trained)]
        assert any(t for t in trained[1:]), f"{record['id']}: no trained token left"
        samples.append({"id": record["id"], "input_ids": ids, "labels": labels})
    with (folder / "eval-samples.jsonl").open("w") as f:
        for s in samples:
            f.write(json.dumps(s) + "\n")

    # Read the file back and score it.
    total, count = 0.0, 0
    per_sample = []
    with (folder / "eval-samples.jsonl").open() as f:
        for line in f:
            s = json.loads(line)
            ids = torch.tensor([s["input_ids"]])
            labels = torch.tensor([s["labels"]])
            with torch.no_grad():
                out = model(input_ids=ids, labels=labels)
            shifted = labels[0, 1:]
            n = int((shifted != IGNORE).sum())
            token_losses = F.cross_entropy(out.logits[0, :-1].double(), shifted, ignore_index=IGNORE, reduction="sum")
            assert abs(token_losses.item() / n - out.loss.item()) < TOL
            total += token_losses.item()
            count += n
            per_sample.append(
                {"id": s["id"], "length": len(s["input_ids"]), "trained": n, "loss_sum": token_losses.item()}
            )
    loss = total / count
    log(f"eval: {count} trained tokens over {EVAL_RECORDS} samples, mean loss {loss:.6f}")
    for p in per_sample:
        log(f"  {p['id']}: {p['length']} tokens, {p['trained']} trained, loss sum {p['loss_sum']:.6f}")
    reference = {
        "loss": loss,
        "tokens": count,
        "records": EVAL_RECORDS,
        "seq_len": EVAL_SEQ_LEN,
        "template": "tulu",
        "samples": per_sample,
        **VERSIONS,
    }
    (folder / "eval-reference.json").write_text(json.dumps(reference, indent=2) + "\n")


# ---------------------------------------------------------------------------------------------
# The training fixture (llama only)


def cosine_lrs(peak: float, steps: int) -> list:
    """pctrain's schedule, cosine without warmup: step s (from 0) uses peak * 0.5 * (1 + cos(pi s / n)),
    checked against transformers' own scheduler."""
    lrs = [peak * 0.5 * (1.0 + math.cos(math.pi * s / steps)) for s in range(steps)]
    dummy = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=peak)
    sched = get_cosine_schedule_with_warmup(dummy, num_warmup_steps=0, num_training_steps=steps)
    for lr in lrs:
        assert abs(sched.get_last_lr()[0] - lr) < 1e-15, (sched.get_last_lr(), lr)
        dummy.step()
        sched.step()
    return lrs


def write_peft_steps() -> None:
    """Three steps of PEFT LoRA training, batch size 1, from the committed llama model and adapter
    on the committed eval samples: what `pctrain --init-adapter llama/adapter --max-steps 3
    --no-shuffle --no-packing --batch-size 1` must reproduce. Reads the committed fixtures only
    (writes nothing but peft-steps/), so it runs alone after the rest was made."""
    folder = OUT / "llama"
    out_dir = folder / "peft-steps"
    if out_dir.exists():
        shutil.rmtree(out_dir)
    out_dir.mkdir()
    base = LlamaForCausalLM.from_pretrained(
        folder, attn_implementation="eager", dtype=torch.float32, use_safetensors=True
    )
    model = PeftModel.from_pretrained(base, folder / "adapter", is_trainable=True)
    model.train()  # dropout is 0 everywhere, so this changes nothing but says what we do
    params = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    assert all(".lora_A." in n or ".lora_B." in n for n, _ in params), [n for n, _ in params]
    assert len(params) == 2 * len(LORA_TARGETS) * base.config.num_hidden_layers
    initial = {n: p.detach().clone() for n, p in params}

    lines = (folder / "eval-samples.jsonl").read_text().splitlines()[:PEFT_STEPS]
    samples = [json.loads(line) for line in lines]
    reference = json.loads((folder / "eval-reference.json").read_text())["samples"]

    # The batches line up with the evaluation fixture: the base model (adapter off) scores each
    # sample as eval-reference.json does. (With the adapter on, step 1's loss differs from it.)
    with torch.no_grad(), model.disable_adapter():
        for s, ref in zip(samples, reference):
            assert s["id"] == ref["id"], (s["id"], ref["id"])
            loss = model(input_ids=torch.tensor([s["input_ids"]]), labels=torch.tensor([s["labels"]])).loss
            assert abs(loss.item() - ref["loss_sum"] / ref["trained"]) < TOL, (s["id"], loss.item(), ref)
    log(f"peft-steps: base-model losses of samples {[s['id'] for s in samples]} match eval-reference.json")

    lrs = cosine_lrs(PEFT_LR, PEFT_STEPS)
    optimizer = torch.optim.AdamW(
        [p for _, p in params], lr=PEFT_LR, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0, foreach=False
    )
    steps = []
    for step, (s, lr) in enumerate(zip(samples, lrs), start=1):
        ids, labels = torch.tensor([s["input_ids"]]), torch.tensor([s["labels"]])
        optimizer.zero_grad(set_to_none=True)
        out = model(input_ids=ids, labels=labels)
        # One sample, so transformers' mean over shifted labels is pctrain's sum / trained tokens.
        tokens = int((labels[0, 1:] != IGNORE).sum())
        by_hand = loss_by_hand(out.logits.detach(), labels)
        assert abs(by_hand.item() - out.loss.item()) < TOL
        out.loss.backward()
        # Pre-clip global norm over all LoRA weights; scaled by 1 / (norm + 1e-6) when above 1.
        norm = torch.nn.utils.clip_grad_norm_([p for _, p in params], max_norm=PEFT_CLIP, foreach=False)
        for group in optimizer.param_groups:
            group["lr"] = lr
        optimizer.step()
        loss, norm = out.loss.item(), norm.item()
        steps.append({"step": step, "lr": lr, "loss": loss, "grad_norm": norm, "tokens": tokens})
        log(
            f"  step {step} ({s['id']}): lr {lr:.6e}, loss {loss:.6f}, grad norm {norm:.6f}"
            f"{' (clipped)' if norm > PEFT_CLIP else ''}, {tokens} trained tokens"
        )

    # PEFT's own save, tidied as the other adapters; base_model_name_or_path would be this
    # machine's path to the llama folder, so it goes back to null as in llama/adapter.
    with tempfile.TemporaryDirectory() as tmp:
        model.save_pretrained(tmp, safe_serialization=True)
        tidy_adapter(Path(tmp))
        config = json.loads((Path(tmp) / "adapter_config.json").read_text())
        config["base_model_name_or_path"] = None
        (out_dir / "adapter_config.json").write_text(json.dumps(config, indent=2, sort_keys=True))
        shutil.copyfile(Path(tmp) / "adapter_model.safetensors", out_dir / "adapter_model.safetensors")
    start = json.loads((folder / "adapter" / "adapter_config.json").read_text())
    assert config == start, "the trained adapter's config differs from the initial one"

    # What was saved is what was trained, under the adapter file's names (no ".default").
    saved = load_file(str(out_dir / "adapter_model.safetensors"))
    assert saved.keys() == {n.replace(".default", "") for n in initial}, sorted(saved)
    worst = 0.0
    for n, p in params:
        assert torch.equal(saved[n.replace(".default", "")], p.detach()), n
        change = ((p.detach() - initial[n]).norm() / initial[n].norm()).item()
        worst = max(worst, change)
    log(f"  adapter moved: largest ||after - before|| / ||before|| of its {len(params)} tensors {worst:.3e}")
    assert worst > 1e3 * TOL, "the adapter barely moved; the fixture would not test the steps"

    record = {
        "lr_peak": PEFT_LR,
        "schedule": "cosine",
        "warmup_steps": 0,
        "clip_norm": PEFT_CLIP,
        "weight_decay": 0.0,
        "betas": [0.9, 0.999],
        "eps": 1e-8,
        "batch_size": 1,
        "samples": [s["id"] for s in samples],
        "steps": steps,
        **VERSIONS,
    }
    (out_dir / "steps.json").write_text(json.dumps(record, indent=2) + "\n")


def write_generate_batch(name: str, cls, low: int, seed: int) -> None:
    """Greedy decoding of BATCH_PROMPTS prompts of 1 to BATCH_MAX_LEN tokens, the same at batch
    sizes 1, 16 and 32 (see the docstring)."""
    folder = OUT / name
    model = cls.from_pretrained(folder, dtype=torch.float32).eval()
    vocab, pad = model.config.vocab_size, model.config.pad_token_id or 0
    g = torch.Generator().manual_seed(seed)
    prompts = []
    while len(prompts) < BATCH_PROMPTS:
        n = 1 + len(prompts) * 13 % BATCH_MAX_LEN
        p = torch.randint(low, vocab, (1, n), generator=g)
        with torch.no_grad():
            out = model.generate(p, attention_mask=torch.ones_like(p), max_new_tokens=BATCH_NEW,
                                 min_new_tokens=BATCH_NEW, do_sample=False, eos_token_id=None,
                                 pad_token_id=pad, output_scores=True, return_dict_in_generate=True)
        margin = min((s[0].topk(2).values[0] - s[0].topk(2).values[1]).item() for s in out.scores)
        if margin > MIN_MARGIN:
            prompts.append(p[0])
    padded = torch.full((BATCH_PROMPTS, BATCH_MAX_LEN), pad, dtype=torch.int64)
    mask = torch.zeros_like(padded)
    for i, p in enumerate(prompts):
        padded[i, BATCH_MAX_LEN - len(p):] = p
        mask[i, BATCH_MAX_LEN - len(p):] = 1
    results = {}
    for batch in [1, 16, 32]:
        rows = []
        for b in range(0, BATCH_PROMPTS, batch):
            ids, m = padded[b:b + batch], mask[b:b + batch]
            # Trim the columns every row of this batch pads.
            keep = int(m.sum(1).max())
            ids, m = ids[:, -keep:], m[:, -keep:]
            with torch.no_grad():
                out = model.generate(ids, attention_mask=m, max_new_tokens=BATCH_NEW,
                                     min_new_tokens=BATCH_NEW, do_sample=False, eos_token_id=None,
                                     pad_token_id=pad)
            rows.append(out[:, keep:])
        results[batch] = torch.cat(rows)
    for batch in [16, 32]:
        same = (results[batch] == results[1]).all(1)
        assert same.all(), f"{name}: batch {batch} differs from batch 1 on prompts {(~same).nonzero().flatten().tolist()}"
    tensors = {
        "prompts": padded,
        "prompt_lengths": torch.tensor([len(p) for p in prompts], dtype=torch.int64),
        "greedy": results[1].contiguous(),
    }
    write_safetensors(folder / "generate-batch.safetensors", tensors, {"format": "pt", **VERSIONS})
    log(f"  {name}: {BATCH_PROMPTS} prompts decoded alike at batch sizes 1, 16 and 32")


def write_generate_batches() -> None:
    write_generate_batch("llama", LlamaForCausalLM, special_ids()["first_plain"], 1004)
    write_generate_batch("mistral", MistralForCausalLM, 3, 2004)
    write_generate_batch("granite", GraniteForCausalLM, 3, 3004)


# ---------------------------------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--only",
        choices=["peft-steps", "generate-batch"],
        help="write just this fixture, from the committed others",
    )
    args = parser.parse_args()
    torch.use_deterministic_algorithms(True)
    torch.set_num_threads(1)
    log(f"versions: {VERSIONS}, tokenizers {tokenizers.__version__}, safetensors {safetensors.__version__}")
    for lib, version in MADE_WITH.items():
        if VERSIONS[lib].split("+")[0] != version:
            log(f"WARNING: {lib} {VERSIONS[lib]} is not {version}, which made the committed fixtures")
    if args.only == "peft-steps":
        write_peft_steps()
        return
    if args.only == "generate-batch":
        write_generate_batches()
        return
    OUT.mkdir(parents=True, exist_ok=True)
    sp = special_ids()
    log(f"tiny tokenizer: bos {sp['bos']}, eos {sp['eos']}, pad {sp['pad']}, vocab {sp['vocab']}")

    llama = build(LlamaForCausalLM, llama_config(sp), 1000)
    made = write_model("llama", llama, 1000, sp["first_plain"], lora_std=0.1)
    for name in ["tokenizer.json", "tokenizer_config.json"]:
        shutil.copyfile(TINY / name, made["folder"] / name)
    check_llama3_rope(llama.config)
    check_llama3_logits(sp, made["batch"], 1000)
    write_eval(llama)

    mistral = build(MistralForCausalLM, mistral_config(6), 2000)
    made = write_model("mistral", mistral, 2000, 3, lora_std=0.1, sliding_window=6)
    check_sliding_window(made["batch"], 2000)

    granite = build(GraniteForCausalLM, granite_config(), 3000, embed_std=0.1)
    write_model("granite", granite, 3000, 3, lora_std=0.2)

    # Last: they read the models, adapter and eval samples back from disk.
    write_peft_steps()
    write_generate_batches()

    log("wrote " + ", ".join(sorted(str(p.relative_to(OUT)) for p in OUT.rglob("*") if p.is_file())))


if __name__ == "__main__":
    main()
