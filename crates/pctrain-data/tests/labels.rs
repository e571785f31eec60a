//! Labels on a real byte-level BPE tokenizer (the tiny preset's), through every built-in template.

mod common;

use common::{jsonl, pipeline, prepared, trained_runs};
use pctrain_data::IGNORE_INDEX;

const MULTI_TURN: &str = r#"{"id": "m1", "messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Name a colour."}, {"role": "assistant", "content": "Blue."}, {"role": "user", "content": "Another, in French, lowercase."}, {"role": "assistant", "content": "rouge, vert et jaune — déjà vu 日本"}]}"#;

#[test]
fn assistant_turns_and_their_closing_token_are_the_only_trained_tokens() {
    let (_d, file) = jsonl(&[MULTI_TURN]);
    let cases = [
        ("tulu", "<|end_of_text|>"),
        ("llama3", "<|eot_id|>"),
        ("mistral", "<|end_of_text|>"),
        ("granite", "<|end_of_text|>"),
        ("chatml", "<|im_end|>"),
    ];
    for (template, closing) in cases {
        let p = pipeline("nl", template, 4096);
        let samples = prepared(&p, std::slice::from_ref(&file));
        assert_eq!(samples.len(), 1);
        let runs = trained_runs(&p, &samples[0].encoded);
        let expect_first = format!("Blue.{closing}");
        let expect_second = format!("rouge, vert et jaune — déjà vu 日本{closing}");
        assert_eq!(runs.len(), 2, "{template}: {runs:?}");
        // A leading space merged into the first content token (Mistral's `[/INST] answer`) is
        // part of that token, so compare without it.
        assert_eq!(runs[0].trim_start(), expect_first, "{template}");
        assert_eq!(runs[1].trim_start(), expect_second, "{template}");
        // Untrained positions carry the ignore index, trained ones their own id.
        let e = &samples[0].encoded;
        for ((&id, &t), &label) in e.input_ids.iter().zip(&e.trained).zip(&e.labels()) {
            assert_eq!(label, if t { i64::from(id) } else { IGNORE_INDEX });
        }
        assert!(!e.trained[0], "{template}: the first token is prompt");
    }
}

#[test]
fn tokens_decode_back_to_the_rendered_text() {
    let (_d, file) = jsonl(&[MULTI_TURN]);
    let p = pipeline("nl", "tulu", 4096);
    let s = &prepared(&p, &[file])[0];
    assert_eq!(p.tokenizer.decode(&s.encoded.input_ids).unwrap(), s.text);
}

#[test]
fn truncation_cuts_at_seq_len_and_keeps_a_prefix() {
    let (_d, file) = jsonl(&[MULTI_TURN]);
    let full = &prepared(&pipeline("nl", "tulu", 4096), std::slice::from_ref(&file))[0];
    let n = full.encoded.len();
    let cut_at = n - 5;
    let cut = &prepared(&pipeline("nl", "tulu", cut_at), &[file])[0];
    assert!(cut.encoded.truncated && !full.encoded.truncated);
    assert_eq!(cut.encoded.len(), cut_at);
    assert_eq!(cut.encoded.input_ids[..], full.encoded.input_ids[..cut_at]);
    assert_eq!(cut.encoded.trained[..], full.encoded.trained[..cut_at]);
}

#[test]
fn samples_left_without_trained_tokens_are_dropped_and_counted() {
    let long_prompt = format!(
        r#"{{"id": "long", "messages": [{{"role": "user", "content": "{}"}}, {{"role": "assistant", "content": "ok"}}]}}"#,
        "word ".repeat(200)
    );
    let no_answer = r#"{"id": "q", "messages": [{"role": "user", "content": "hello?"}]}"#;
    let short = r#"{"id": "s", "messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]}"#;
    let (_d, file) = jsonl(&[&long_prompt, no_answer, short]);
    let p = pipeline("nl", "tulu", 64);
    let mut kept = Vec::new();
    let stats = p
        .run(&[file], |s| {
            kept.push(s.encoded.id.clone());
            std::ops::ControlFlow::Continue(())
        })
        .unwrap();
    assert_eq!(kept, vec!["s"]);
    assert_eq!(stats.dropped_untrained, 2);
    assert_eq!(stats.records, 3);
    assert_eq!(stats.trained_tokens as usize, {
        let p = pipeline("nl", "tulu", 64);
        let (_d, f) = jsonl(&[short]);
        prepared(&p, &[f])[0].encoded.trained_tokens()
    });
}
