#!/usr/bin/env python3
"""Regenerate the chat-template conformance fixtures for pctrain-data.

Reads every `<name>.jinja` listed in TEMPLATES from
crates/pctrain-data/tests/fixtures/chat_templates/, renders a fixed set of
conversations through Hugging Face transformers'
`tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=X)`
and writes the results to cases.json in the same folder. The Rust renderer
(minijinja) must produce exactly the same strings.

Set up a throwaway environment outside the repository (torch is not needed):

    python3 -m venv /tmp/tfenv
    /tmp/tfenv/bin/pip install transformers tokenizers jinja2
    /tmp/tfenv/bin/python scripts/make_template_fixtures.py

The fixtures in the repository were generated with the versions below. A
different transformers version still runs, with a warning; check the diff of
cases.json before committing it.
"""

from __future__ import annotations

import json
import sys
import warnings
from datetime import datetime
from pathlib import Path

# Versions the committed cases.json was generated with.
TRANSFORMERS_VERSION_USED = "5.24.0"
TOKENIZERS_VERSION_USED = "0.23.3"
JINJA2_VERSION_USED = "3.1.6"

import jinja2  # noqa: E402
import tokenizers  # noqa: E402
import transformers  # noqa: E402
import transformers.utils.chat_template_utils as chat_template_utils  # noqa: E402
from tokenizers import Tokenizer  # noqa: E402
from tokenizers.models import WordLevel  # noqa: E402
from tokenizers.pre_tokenizers import Whitespace  # noqa: E402
from transformers import PreTrainedTokenizerFast  # noqa: E402

REPO_ROOT = Path(__file__).resolve().parent.parent
FIXTURE_DIR = REPO_ROOT / "crates" / "pctrain-data" / "tests" / "fixtures" / "chat_templates"

# "now" as seen by templates that call strftime_now(): a naive local datetime.
FIXED_NOW = datetime(2025, 3, 14, 12, 0, 0)
FIXED_NOW_ISO = FIXED_NOW.isoformat()  # "2025-03-14T12:00:00"

# Template name -> special tokens as set in the model's tokenizer_config.json
# (None = not set; such a token is then *absent* from the template context).
TEMPLATES: list[tuple[str, dict[str, str | None]]] = [
    (
        "llama3-instruct",  # meta-llama/Meta-Llama-3-8B-Instruct
        {"bos_token": "<|begin_of_text|>", "eos_token": "<|eot_id|>", "unk_token": None, "pad_token": None},
    ),
    (
        "llama3.1-instruct",  # meta-llama/Llama-3.1-8B-Instruct
        {"bos_token": "<|begin_of_text|>", "eos_token": "<|eot_id|>", "unk_token": None, "pad_token": None},
    ),
    (
        "mistral-v0.3-instruct",  # mistralai/Mistral-7B-Instruct-v0.3
        {"bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>", "pad_token": None},
    ),
    (
        "granite-3.1-instruct",  # ibm-granite/granite-3.1-8b-instruct
        {
            "bos_token": "<|end_of_text|>",
            "eos_token": "<|end_of_text|>",
            "unk_token": "<|end_of_text|>",
            "pad_token": "<|end_of_text|>",
        },
    ),
    (
        "qwen2.5-instruct",  # Qwen/Qwen2.5-7B-Instruct
        {"bos_token": None, "eos_token": "<|im_end|>", "unk_token": None, "pad_token": "<|endoftext|>"},
    ),
    (
        "hf-env-probe",  # written for pctrain: exercises the Jinja environment itself
        {"bos_token": "<s>", "eos_token": "</s>", "unk_token": None, "pad_token": None},
    ),
]

SYSTEM = {"role": "system", "content": "You are a helpful assistant."}

# (case name, messages, add_generation_prompt, expect_error)
# expect_error=None: render it if the template accepts it, skip it if the template raises.
# expect_error=True: the template must raise; recorded with "expected_error": true.
CONVERSATIONS: list[tuple[str, list[dict[str, str]], bool, bool | None]] = [
    (
        "single_turn",
        [
            {"role": "user", "content": "Hello!"},
            {"role": "assistant", "content": "Hi there! How can I help you today?"},
        ],
        False,
        None,
    ),
    (
        "with_system",
        [
            SYSTEM,
            {"role": "user", "content": "What is the capital of France?"},
            {"role": "assistant", "content": "The capital of France is Paris."},
        ],
        False,
        None,
    ),
    (
        "multi_turn",
        [
            {"role": "user", "content": "Name a prime number."},
            {"role": "assistant", "content": "7 is a prime number."},
            {"role": "user", "content": "Name another one."},
            {"role": "assistant", "content": "13 is also prime."},
        ],
        False,
        None,
    ),
    (
        "multi_turn_with_system",
        [
            SYSTEM,
            {"role": "user", "content": "Name a prime number."},
            {"role": "assistant", "content": "7 is a prime number."},
            {"role": "user", "content": "Name another one."},
            {"role": "assistant", "content": "13 is also prime."},
        ],
        False,
        None,
    ),
    (
        "whitespace",
        [
            {"role": "system", "content": "\n  Be terse.  \n"},
            {"role": "user", "content": "  \n  leading and trailing whitespace\n\n  "},
            {"role": "assistant", "content": "\n\tindented answer\nsecond line  \n\n"},
        ],
        False,
        None,
    ),
    (
        "whitespace_no_system",
        [
            {"role": "user", "content": "  \n  leading and trailing whitespace\n\n  "},
            {"role": "assistant", "content": "\n\tindented answer\nsecond line  \n\n"},
        ],
        False,
        None,
    ),
    (
        "non_ascii",
        [
            {"role": "user", "content": "Café crème, s'il vous plaît. 日本語で答えて 🎉"},
            {"role": "assistant", "content": "Très bien ! 日本 はい 👍🏽 — « ok »"},
        ],
        False,
        None,
    ),
    (
        "json_and_code_fence",
        [
            {
                "role": "user",
                "content": 'Parse {"a": [1, 2, {"b": null}], "c": "quote \\" and {{braces}} {% raw %}"} please.',
            },
            {
                "role": "assistant",
                "content": '```python\nimport json\nprint(json.dumps({"k": "v"}, indent=2))\n```\nDone: `{"a": 1}`',
            },
        ],
        False,
        None,
    ),
    (
        "generation_prompt",
        [
            {"role": "user", "content": "What is 2 + 2?"},
        ],
        True,
        None,
    ),
    (
        "generation_prompt_with_system_multi_turn",
        [
            SYSTEM,
            {"role": "user", "content": "Hi!"},
            {"role": "assistant", "content": "Hello! How can I help?"},
            {"role": "user", "content": "Tell me a joke."},
        ],
        True,
        None,
    ),
    (
        "ends_with_user_no_generation_prompt",
        [
            {"role": "user", "content": "Tell me a joke."},
        ],
        False,
        None,
    ),
    (
        "non_alternating_roles",
        [
            {"role": "user", "content": "First question."},
            {"role": "user", "content": "Second question without an answer in between."},
        ],
        False,
        None,
    ),
]

# The one case per template that must raise (only for templates that raise on it).
ERROR_CASES: dict[str, tuple[str, list[dict[str, str]], bool]] = {
    "mistral-v0.3-instruct": (
        "error_non_alternating_roles",
        [
            {"role": "user", "content": "First question."},
            {"role": "user", "content": "Second question without an answer in between."},
        ],
        False,
    ),
}


class _FixedDatetime(datetime):
    """datetime whose now() is FIXED_NOW, so strftime_now() output is deterministic."""

    @classmethod
    def now(cls, tz=None):  # noqa: D102
        if tz is not None:
            return FIXED_NOW.replace(tzinfo=tz)
        return FIXED_NOW


def _patch_now() -> None:
    # transformers' strftime_now global is `datetime.now().strftime(format)`, with `datetime`
    # looked up in transformers.utils.chat_template_utils at call time.
    chat_template_utils.datetime = _FixedDatetime


def _make_tokenizer(template: str, special: dict[str, str | None]) -> PreTrainedTokenizerFast:
    vocab = {"[UNK]": 0}
    for tok in special.values():
        if tok is not None and tok not in vocab:
            vocab[tok] = len(vocab)
    backend = Tokenizer(WordLevel(vocab=vocab, unk_token="[UNK]"))
    backend.pre_tokenizer = Whitespace()
    kwargs = {k: v for k, v in special.items() if v is not None}
    tok = PreTrainedTokenizerFast(tokenizer_object=backend, **kwargs)
    tok.chat_template = template
    # The template context gets exactly tokenizer.special_tokens_map; make sure it is what we meant.
    expected_map = {k: v for k, v in special.items() if v is not None}
    actual_map = tok.special_tokens_map
    if actual_map != expected_map:
        raise SystemExit(f"special_tokens_map mismatch: expected {expected_map}, got {actual_map}")
    return tok


def _uses_now(template: str) -> bool:
    return "strftime_now" in template


def main() -> int:
    if transformers.__version__ != TRANSFORMERS_VERSION_USED:
        warnings.warn(
            f"transformers {transformers.__version__} != {TRANSFORMERS_VERSION_USED} used for the committed "
            "fixtures; review the diff of cases.json",
            stacklevel=1,
        )
    _patch_now()

    cases = []
    skipped = []
    for name, special in TEMPLATES:
        path = FIXTURE_DIR / f"{name}.jinja"
        template = path.read_text(encoding="utf-8")
        tok = _make_tokenizer(template, special)
        now = FIXED_NOW_ISO if _uses_now(template) else None

        todo = [(c, m, agp, None) for (c, m, agp, _e) in CONVERSATIONS]
        if name in ERROR_CASES:
            c, m, agp = ERROR_CASES[name]
            todo.append((c, m, agp, True))

        for case_name, messages, agp, expect_error in todo:
            try:
                rendered = tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=agp)
                error = None
            except jinja2.exceptions.TemplateError as exc:
                rendered = None
                error = str(exc)

            if expect_error:
                if error is None:
                    raise SystemExit(f"{name}/{case_name}: expected the template to raise, but it rendered")
            elif error is not None:
                skipped.append(f"{name}/{case_name}: {error}")
                continue

            assert error is not None or isinstance(rendered, str)
            cases.append(
                {
                    "name": case_name,
                    "template": name,
                    "bos_token": special["bos_token"],
                    "eos_token": special["eos_token"],
                    "unk_token": special["unk_token"],
                    "pad_token": special["pad_token"],
                    "messages": messages,
                    "add_generation_prompt": agp,
                    "now": now,
                    "expected": rendered,
                    "expected_error": error is not None,
                    "error_message": error,
                    "transformers_version": transformers.__version__,
                }
            )

    out = FIXTURE_DIR / "cases.json"
    out.write_text(json.dumps(cases, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    print(
        f"wrote {len(cases)} cases to {out.relative_to(REPO_ROOT)} "
        f"(transformers {transformers.__version__}, tokenizers {tokenizers.__version__}, jinja2 {jinja2.__version__})"
    )
    for s in skipped:
        print(f"skipped (template raised): {s}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
