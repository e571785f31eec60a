//! Trains the `tiny` preset's tokenizer: a byte-level BPE (as Llama 3 and GPT-2 use) learned from
//! the project's example data, with the special tokens of every built-in chat template.
//!
//! ```text
//! cargo run -p pctrain-data --example train_tiny_tokenizer -- [VOCAB_SIZE] [OUT_DIR]
//! ```
//! Defaults: 2048 tokens, `assets/tiny`. Writes `tokenizer.json` and `tokenizer_config.json`.

use std::path::{Path, PathBuf};

use pctrain_data::{JsonlReader, Role};
use tokenizers::models::bpe::{BpeTrainerBuilder, BPE};
use tokenizers::normalizers::NormalizerWrapper;
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::{AddedToken, TokenizerBuilder};

const SPECIAL: [&str; 12] = [
    "<|begin_of_text|>",
    "<|end_of_text|>",
    "<|pad|>",
    "<|start_header_id|>",
    "<|end_header_id|>",
    "<|eot_id|>",
    "<|im_start|>",
    "<|im_end|>",
    "<|start_of_role|>",
    "<|end_of_role|>",
    "[INST]",
    "[/INST]",
];

fn main() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    let args: Vec<String> = std::env::args().collect();
    let vocab_size: usize = args.get(1).map(|s| s.parse()).transpose()?.unwrap_or(2048);
    let out_dir = PathBuf::from(args.get(2).map(String::as_str).unwrap_or("assets/tiny"));
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");

    // The corpus: every message and pseudo-code of the shipped examples, as the Tulu template lays
    // them out.
    let mut corpus = String::new();
    for file in ["examples/tulu-pc.jsonl", "examples/alpaca-pc.jsonl"] {
        for record in JsonlReader::open(root.join(file))? {
            let record = record?;
            for m in &record.messages {
                let tag = match m.role {
                    Role::System => "<|system|>",
                    Role::User => "<|user|>",
                    Role::Assistant => "<|assistant|>",
                };
                corpus.push_str(&format!("{tag}\n{}\n", m.content));
            }
            for pc in record.pseudo_code.iter().flatten() {
                corpus.push_str(&format!("```python\n{pc}\n```\n\n"));
            }
        }
    }
    let corpus_file =
        std::env::temp_dir().join(format!("pctrain-tiny-corpus-{}.txt", std::process::id()));
    std::fs::write(&corpus_file, &corpus)?;

    let mut trainer = BpeTrainerBuilder::new()
        .vocab_size(vocab_size)
        .min_frequency(2)
        .show_progress(false)
        .special_tokens(SPECIAL.iter().map(|t| AddedToken::from(*t, true)).collect())
        .initial_alphabet(ByteLevel::alphabet().into_iter().collect())
        .build();
    let mut tokenizer =
        TokenizerBuilder::<BPE, NormalizerWrapper, ByteLevel, ByteLevel, ByteLevel>::new()
            .with_model(BPE::default())
            .with_normalizer(None)
            .with_pre_tokenizer(Some(ByteLevel::new(false, true, true)))
            .with_post_processor(Some(ByteLevel::new(false, false, true)))
            .with_decoder(Some(ByteLevel::default()))
            .build()?;
    tokenizer.train_from_files(&mut trainer, vec![corpus_file.display().to_string()])?;
    std::fs::remove_file(&corpus_file)?;

    std::fs::create_dir_all(&out_dir)?;
    tokenizer.save(out_dir.join("tokenizer.json"), true)?;
    let config = serde_json::json!({
        "tokenizer_class": "PreTrainedTokenizerFast",
        "bos_token": "<|begin_of_text|>",
        "eos_token": "<|end_of_text|>",
        "pad_token": "<|pad|>",
        "model_max_length": 2048,
        "clean_up_tokenization_spaces": false,
    });
    std::fs::write(
        out_dir.join("tokenizer_config.json"),
        serde_json::to_string_pretty(&config)? + "\n",
    )?;
    println!(
        "wrote {} ({} tokens, corpus {} bytes)",
        out_dir.display(),
        tokenizer.get_vocab_size(true),
        corpus.len()
    );
    Ok(())
}
