//! Built-in chat templates for base models that ship none. Each is Jinja, rendered by the same
//! engine as a model's own template, with the turn markers of the model family it is named after.

/// A built-in template: its name, its Jinja text, and the strings that close an assistant turn
/// (besides the tokenizer's EOS), which belong to the trained span.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Builtin {
    pub name: &'static str,
    pub source: &'static str,
    pub end_markers: &'static [&'static str],
}

/// open-instruct's Tulu format: `<|user|>\n...\n<|assistant|>\n...EOS\n`. The default for base
/// models; BOS first when the tokenizer has one.
const TULU: &str = "{{ bos_token if bos_token else '' }}\
{%- for message in messages %}\
{%- if message.role == 'system' %}{{ '<|system|>\\n' + message.content + '\\n' }}\
{%- elif message.role == 'user' %}{{ '<|user|>\\n' + message.content + '\\n' }}\
{%- elif message.role == 'assistant' %}{{ '<|assistant|>\\n' + message.content + eos_token }}\
{%- if not loop.last %}{{ '\\n' }}{% endif %}\
{%- endif %}\
{%- endfor %}\
{%- if add_generation_prompt %}{{ '<|assistant|>\\n' }}{% endif %}";

/// Llama 3's header and end-of-turn markers; contents are trimmed as Llama 3 Instruct does.
const LLAMA3: &str = "{{ bos_token if bos_token else '' }}\
{%- for message in messages %}\
{{ '<|start_header_id|>' + message.role + '<|end_header_id|>\\n\\n' + message.content | trim + '<|eot_id|>' }}\
{%- endfor %}\
{%- if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}{% endif %}";

/// Mistral's `[INST] ...[/INST] ...EOS`; a system message goes before the first user message.
const MISTRAL: &str = "{{ bos_token if bos_token else '' }}\
{%- set ns = namespace(system='') %}\
{%- for message in messages %}\
{%- if message.role == 'system' %}{% set ns.system = message.content + '\\n\\n' %}\
{%- elif message.role == 'user' %}{{ '[INST] ' + ns.system + message.content + '[/INST]' }}{% set ns.system = '' %}\
{%- elif message.role == 'assistant' %}{{ ' ' + message.content + eos_token }}\
{%- endif %}\
{%- endfor %}";

/// Granite 3's role markers, each turn closed by `<|end_of_text|>`.
const GRANITE: &str = "{%- for message in messages %}\
{{ '<|start_of_role|>' + message.role + '<|end_of_role|>' + message.content + '<|end_of_text|>\\n' }}\
{%- endfor %}\
{%- if add_generation_prompt %}{{ '<|start_of_role|>assistant<|end_of_role|>' }}{% endif %}";

/// ChatML: `<|im_start|>role\n...<|im_end|>\n`.
const CHATML: &str = "{%- for message in messages %}\
{{ '<|im_start|>' + message.role + '\\n' + message.content + '<|im_end|>\\n' }}\
{%- endfor %}\
{%- if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}";

/// Every built-in template; the first is the default for tokenizers without a chat template.
pub const BUILTINS: [Builtin; 5] = [
    Builtin {
        name: "tulu",
        source: TULU,
        end_markers: &[],
    },
    Builtin {
        name: "llama3",
        source: LLAMA3,
        end_markers: &["<|eot_id|>"],
    },
    Builtin {
        name: "mistral",
        source: MISTRAL,
        end_markers: &[],
    },
    Builtin {
        name: "granite",
        source: GRANITE,
        end_markers: &["<|end_of_text|>"],
    },
    Builtin {
        name: "chatml",
        source: CHATML,
        end_markers: &["<|im_end|>"],
    },
];

/// The built-in template called `name`.
pub fn builtin(name: &str) -> Option<&'static Builtin> {
    BUILTINS.iter().find(|b| b.name == name)
}

/// The names of the built-in templates, for messages.
pub fn builtin_names() -> String {
    BUILTINS.map(|b| b.name).join(", ")
}
