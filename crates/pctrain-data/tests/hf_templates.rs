//! Real chat templates (Llama 3 and 3.1 Instruct, Mistral v0.3, Granite 3.1, Qwen 2.5) render
//! exactly the text transformers' `apply_chat_template` produced for the same conversations
//! (fixtures written by scripts/make_template_fixtures.py), and their assistant spans are found.
//! A probe template written for pctrain (hf-env-probe) checks the Jinja environment itself:
//! whitespace control, loop controls, Python methods, `tojson`, and how values print.

use std::path::PathBuf;

use pctrain_data::{ChatTemplate, Message, Role, SpecialTokens};
use serde::Deserialize;

#[derive(Deserialize)]
struct Case {
    name: String,
    template: String,
    bos_token: Option<String>,
    eos_token: Option<String>,
    unk_token: Option<String>,
    pad_token: Option<String>,
    messages: Vec<CaseMessage>,
    add_generation_prompt: bool,
    now: Option<String>,
    expected: Option<String>,
    expected_error: bool,
}

#[derive(Deserialize)]
struct CaseMessage {
    role: String,
    content: String,
}

fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/chat_templates")
}

fn cases() -> Vec<Case> {
    let text = std::fs::read_to_string(fixtures().join("cases.json")).unwrap();
    serde_json::from_str(&text).unwrap()
}

/// `YYYY-MM-DDTHH:MM:SS` as Unix seconds (UTC).
fn unix_seconds(stamp: &str) -> i64 {
    let n: Vec<i64> = stamp
        .split(['-', 'T', ':'])
        .map(|p| p.parse().unwrap())
        .collect();
    let (y, m, d) = (n[0], n[1], n[2]);
    let (y, m) = if m <= 2 { (y - 1, m + 9) } else { (y, m - 3) };
    let era = y.div_euclid(400);
    let yoe = y.rem_euclid(400);
    let doy = (153 * m + 2) / 5 + d - 1;
    let days = era * 146_097 + yoe * 365 + yoe / 4 - yoe / 100 + doy - 719_468;
    days * 86_400 + n[3] * 3600 + n[4] * 60 + n[5]
}

fn load(case: &Case) -> (ChatTemplate, SpecialTokens, Vec<Message>) {
    let source =
        std::fs::read_to_string(fixtures().join(format!("{}.jinja", case.template))).unwrap();
    let mut template = ChatTemplate::new(&case.template, &source, &[]).unwrap();
    if let Some(now) = &case.now {
        template.set_now(unix_seconds(now));
    }
    let special = SpecialTokens {
        bos: case.bos_token.clone(),
        eos: case.eos_token.clone(),
        unk: case.unk_token.clone(),
        pad: case.pad_token.clone(),
        all: [&case.bos_token, &case.eos_token]
            .into_iter()
            .flatten()
            .cloned()
            .collect(),
    };
    let messages = case
        .messages
        .iter()
        .map(|m| Message::new(Role::parse(&m.role).unwrap(), m.content.clone()))
        .collect();
    (template, special, messages)
}

#[test]
fn renders_exactly_what_transformers_renders() {
    let cases = cases();
    assert!(cases.len() >= 50);
    let mut failures = Vec::new();
    for case in &cases {
        let (template, special, messages) = load(case);
        let got = template.render(&messages, case.add_generation_prompt, &special);
        match (&case.expected, got) {
            (Some(want), Ok(got)) if *want == got => {}
            (None, Err(_)) if case.expected_error => {}
            (want, got) => failures.push(format!(
                "{} / {}:\n  want {want:?}\n  got  {got:?}",
                case.template, case.name
            )),
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn the_llama3_instruct_template_is_covered() {
    let cases = cases();
    let llama3: Vec<&Case> = cases
        .iter()
        .filter(|c| c.template == "llama3-instruct")
        .collect();
    assert!(llama3.len() >= 10);
    assert!(llama3
        .iter()
        .any(|c| c.messages.iter().filter(|m| m.role == "assistant").count() >= 2));
}

#[test]
fn assistant_spans_are_found_in_real_templates() {
    // hf-env-probe is not a chat format: it prints contents several times and stops early.
    let real = |c: &&Case| !c.expected_error && c.template != "hf-env-probe";
    for case in cases().iter().filter(real) {
        let (template, special, messages) = load(case);
        let contents: Vec<&str> = messages
            .iter()
            .filter(|m| m.role == Role::Assistant)
            .map(|m| m.content.as_str())
            .collect();
        let rendered = template
            .render_with_spans(&case.name, &messages, &special)
            .unwrap_or_else(|e| panic!("{} / {}: {e}", case.template, case.name));
        // Templates may drop turns (Mistral keeps the system message only in some positions), but
        // every span found holds an assistant content, in order, with its closing token.
        assert!(rendered.spans.len() <= contents.len());
        let mut next = 0;
        for span in &rendered.spans {
            let text = &rendered.text[span.clone()];
            let i = (next..contents.len())
                .find(|&i| text.starts_with(contents[i].trim()) || text.starts_with(contents[i]))
                .unwrap_or_else(|| panic!("{} / {}: span {text:?}", case.template, case.name));
            next = i + 1;
        }
        if !contents.is_empty() && contents.iter().all(|c| !c.trim().is_empty()) {
            assert_eq!(
                rendered.spans.len(),
                contents.len(),
                "{} / {}",
                case.template,
                case.name
            );
        }
    }
}
