//! Helpers shared by the data crate's tests.
#![allow(dead_code)]

use std::io::Write;
use std::path::PathBuf;

use pctrain_data::{Encoded, Mixer, PcJoin, Pipeline, Prepared, TemplateChoice, TextTokenizer};

/// Writes `lines` to a temporary JSONL file that lives as long as the returned guard.
pub fn jsonl(lines: &[&str]) -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("data.jsonl");
    let mut f = std::fs::File::create(&path).unwrap();
    for l in lines {
        writeln!(f, "{l}").unwrap();
    }
    (dir, path)
}

/// A pipeline on the tiny byte-level BPE tokenizer.
pub fn pipeline(mix: &str, template: &str, seq_len: usize) -> Pipeline {
    let tokenizer = TextTokenizer::tiny().unwrap();
    let template = TemplateChoice::parse(template)
        .unwrap()
        .load(tokenizer.chat_template.as_deref())
        .unwrap();
    let mixer = Mixer {
        mix: mix.parse().unwrap(),
        seed: 42,
        require_pc: false,
        join: PcJoin::default(),
    };
    Pipeline::new(mixer, template, tokenizer, seq_len, false).unwrap()
}

/// Every sample of `files` with its text.
pub fn prepared(p: &Pipeline, files: &[PathBuf]) -> Vec<Prepared> {
    let mut out = Vec::new();
    p.run(files, |s| {
        out.push(s);
        std::ops::ControlFlow::Continue(())
    })
    .unwrap();
    out
}

/// The shipped examples.
pub fn examples() -> Vec<PathBuf> {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..");
    vec![
        root.join("examples/tulu-pc.jsonl"),
        root.join("examples/alpaca-pc.jsonl"),
    ]
}

/// The trained tokens of a sample, decoded, one string per contiguous run.
pub fn trained_runs(p: &Pipeline, e: &Encoded) -> Vec<String> {
    let mut runs = Vec::new();
    let mut current = Vec::new();
    for (&id, &t) in e.input_ids.iter().zip(&e.trained) {
        if t {
            current.push(id);
        } else if !current.is_empty() {
            runs.push(p.tokenizer.decode(&current).unwrap());
            current.clear();
        }
    }
    if !current.is_empty() {
        runs.push(p.tokenizer.decode(&current).unwrap());
    }
    runs
}
