//! Tokenising and packing throughput on the shipped examples, in tokens per second.
//!
//! ```text
//! cargo run --release -p pctrain-data --example throughput -- [REPEATS] [SEQ_LEN]
//! ```
//! Each pass reads the examples, renders them in `nl-pc` with the `tulu` template, tokenises with
//! the tiny byte-level BPE and labels them; packing is then timed on the samples of all passes.

use std::path::PathBuf;
use std::time::Instant;

use pctrain_data::loader::{epoch_rows, packing_efficiency};
use pctrain_data::pack::PackedRow;
use pctrain_data::{LoaderConfig, Mixer, PcJoin, Pipeline, TemplateChoice, TextTokenizer};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    let repeats: usize = args.get(1).map(|s| s.parse()).transpose()?.unwrap_or(20);
    let seq_len: usize = args.get(2).map(|s| s.parse()).transpose()?.unwrap_or(2048);
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..");
    let files = vec![
        root.join("examples/tulu-pc.jsonl"),
        root.join("examples/alpaca-pc.jsonl"),
    ];
    let tokenizer = TextTokenizer::tiny()?;
    let template = TemplateChoice::parse("tulu")?.load(None)?;
    let mixer = Mixer {
        mix: "nl-pc".parse()?,
        seed: 0,
        require_pc: false,
        join: PcJoin::default(),
    };
    let pipeline = Pipeline::new(mixer, template, tokenizer, seq_len, false)?;

    let start = Instant::now();
    let mut samples = Vec::new();
    for _ in 0..repeats {
        samples.extend(pipeline.encode_all(&files)?.0);
    }
    let encode_s = start.elapsed().as_secs_f64();
    let tokens: usize = samples.iter().map(|s| s.len()).sum();

    let cfg = LoaderConfig {
        seq_len,
        ..LoaderConfig::default()
    };
    let start = Instant::now();
    let rows = epoch_rows(&samples, &cfg, 0);
    for row in &rows {
        std::hint::black_box(PackedRow::build(
            &samples,
            row,
            seq_len,
            pipeline.tokenizer.pad_id,
        ));
    }
    let pack_s = start.elapsed().as_secs_f64();

    println!(
        "samples {} tokens {tokens} (examples x{repeats}), seq_len {seq_len}",
        samples.len()
    );
    println!(
        "read+render+tokenise+label: {:.0} tokens/s ({encode_s:.3} s)",
        tokens as f64 / encode_s
    );
    println!(
        "pack+build rows:            {:.0} tokens/s ({pack_s:.3} s, {} rows, efficiency {:.1}%)",
        tokens as f64 / pack_s,
        rows.len(),
        100.0 * packing_efficiency(&rows, seq_len)
    );
    Ok(())
}
