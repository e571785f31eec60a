//! Every instruction type with responses that pass and that fail, strictly and loosely; the
//! errors of bad task data and responses.

use std::path::Path;

use serde_json::{json, Value};

use super::*;

/// `(strict, loose)` for one instruction on `response`.
fn judge(id: &str, kwargs: Value, response: &str) -> (bool, bool) {
    let p = TaskPrompt {
        key: json!(1),
        prompt: "p".into(),
        instruction_ids: vec![id.into()],
        instructions: vec![Instruction::parse(id, &kwargs).unwrap()],
    };
    let s = score(&p, 0, response);
    (s.strict[0], s.loose[0])
}

const PASS: (bool, bool) = (true, true);
const FAIL: (bool, bool) = (false, false);
/// Fails as it stands, passes once a chatty first or last line is dropped.
const LOOSE_ONLY: (bool, bool) = (false, true);

/// `(id, kwargs, response, expected)` for every instruction type: a pass, a fail, and where the
/// loose variants matter, a response only they rescue.
fn cases() -> Vec<(&'static str, Value, &'static str, (bool, bool))> {
    vec![
        (
            "keywords:existence",
            json!({"keywords": ["river", "stone"]}),
            "A Stone by the River.",
            PASS,
        ),
        (
            "keywords:existence",
            json!({"keywords": ["river", "stone"]}),
            "A stone by the sea.",
            FAIL,
        ),
        (
            "keywords:frequency",
            json!({"keyword": "tea", "frequency": 2, "relation": "at least"}),
            "Tea first, then TEA again.",
            PASS,
        ),
        (
            "keywords:frequency",
            json!({"keyword": "tea", "frequency": 2, "relation": "at least"}),
            "Just one tea.",
            FAIL,
        ),
        (
            "keywords:frequency",
            json!({"keyword": "tea", "frequency": 2, "relation": "less than"}),
            "Tea, tea, tea.",
            FAIL,
        ),
        (
            "keywords:frequency",
            json!({"keyword": "tea", "frequency": 2, "relation": "less than"}),
            "Sure, tea and tea:\nOnly one tea here.",
            LOOSE_ONLY,
        ),
        (
            "keywords:forbidden_words",
            json!({"forbidden_words": ["cat", "dog"]}),
            "Concatenate the words.",
            PASS,
        ),
        (
            "keywords:forbidden_words",
            json!({"forbidden_words": ["cat", "dog"]}),
            "The Dog barked.",
            FAIL,
        ),
        (
            "keywords:forbidden_words",
            json!({"forbidden_words": ["cat"]}),
            "Here is a text without a cat:\nBirds sing.",
            LOOSE_ONLY,
        ),
        (
            "keywords:letter_frequency",
            json!({"letter": "z", "let_frequency": 3, "let_relation": "at least"}),
            "Zany zebras buzz.",
            PASS,
        ),
        (
            "keywords:letter_frequency",
            json!({"letter": "z", "let_frequency": 3, "let_relation": "at least"}),
            "A lazy day.",
            FAIL,
        ),
        (
            "keywords:letter_frequency",
            json!({"letter": "a", "let_frequency": 2, "let_relation": "less than"}),
            "Banana.",
            FAIL,
        ),
        (
            "language:response_language",
            json!({"language": "fr"}),
            "Le chat dort sur le canapé pendant que la pluie tombe doucement dehors.",
            PASS,
        ),
        (
            "language:response_language",
            json!({"language": "fr"}),
            "The cat sleeps on the sofa while the rain falls softly outside.",
            FAIL,
        ),
        (
            "length_constraints:number_sentences",
            json!({"num_sentences": 3, "relation": "less than"}),
            "One. Two.",
            PASS,
        ),
        (
            "length_constraints:number_sentences",
            json!({"num_sentences": 3, "relation": "less than"}),
            "One. Two. Three. Four.",
            FAIL,
        ),
        (
            "length_constraints:number_sentences",
            json!({"num_sentences": 3, "relation": "at least"}),
            "One. Two. Three.",
            PASS,
        ),
        (
            "length_constraints:number_sentences",
            json!({"num_sentences": 2, "relation": "less than"}),
            "Sure. Here it is.\nA single sentence",
            LOOSE_ONLY,
        ),
        (
            "length_constraints:number_paragraphs",
            json!({"num_paragraphs": 2}),
            "First part.\n***\nSecond part.",
            PASS,
        ),
        (
            "length_constraints:number_paragraphs",
            json!({"num_paragraphs": 2}),
            "First part.\n***\n***\nSecond part.",
            FAIL,
        ),
        (
            "length_constraints:number_paragraphs",
            json!({"num_paragraphs": 2}),
            "First part.\n\nSecond part.",
            FAIL,
        ),
        (
            "length_constraints:number_words",
            json!({"num_words": 5, "relation": "at least"}),
            "one two three four five",
            PASS,
        ),
        (
            "length_constraints:number_words",
            json!({"num_words": 5, "relation": "at least"}),
            "one two three",
            FAIL,
        ),
        (
            "length_constraints:number_words",
            json!({"num_words": 4, "relation": "less than"}),
            "Here is my short answer:\nYes indeed",
            LOOSE_ONLY,
        ),
        (
            "length_constraints:nth_paragraph_first_word",
            json!({"num_paragraphs": 3, "nth_paragraph": 2, "first_word": "Then"}),
            "Start.\n\n\"Then, we go.\n\nEnd.",
            PASS,
        ),
        (
            "length_constraints:nth_paragraph_first_word",
            json!({"num_paragraphs": 3, "nth_paragraph": 2, "first_word": "then"}),
            "Start.\n\nAfter that.\n\nEnd.",
            FAIL,
        ),
        (
            "length_constraints:nth_paragraph_first_word",
            json!({"num_paragraphs": 3, "nth_paragraph": 2, "first_word": "then"}),
            "Start.\n\nThen.",
            FAIL,
        ),
        (
            "detectable_content:number_placeholders",
            json!({"num_placeholders": 2}),
            "Dear [name], at [address].",
            PASS,
        ),
        (
            "detectable_content:number_placeholders",
            json!({"num_placeholders": 2}),
            "Dear [name], at home.",
            FAIL,
        ),
        (
            "detectable_content:postscript",
            json!({"postscript_marker": "P.S."}),
            "Body.\n\np.s. see you",
            PASS,
        ),
        (
            "detectable_content:postscript",
            json!({"postscript_marker": "P.P.S"}),
            "Body.\nP. P. S. later",
            PASS,
        ),
        (
            "detectable_content:postscript",
            json!({"postscript_marker": "P.S."}),
            "Body without a note.",
            FAIL,
        ),
        (
            "detectable_format:number_bullet_lists",
            json!({"num_bullets": 2}),
            "* one\n- two",
            PASS,
        ),
        (
            "detectable_format:number_bullet_lists",
            json!({"num_bullets": 2}),
            "Points:\n* one\nDone.",
            FAIL,
        ),
        (
            "detectable_format:number_bullet_lists",
            json!({"num_bullets": 2}),
            "- Here are two points:\n* one\n* two",
            LOOSE_ONLY,
        ),
        (
            "detectable_format:constrained_response",
            json!({}),
            "After thought: My answer is maybe.",
            PASS,
        ),
        (
            "detectable_format:constrained_response",
            json!({}),
            "My answer is probably.",
            FAIL,
        ),
        (
            "detectable_format:number_highlighted_sections",
            json!({"num_highlights": 2}),
            "*one* and **two**",
            PASS,
        ),
        (
            "detectable_format:number_highlighted_sections",
            json!({"num_highlights": 2}),
            "*one* and * *",
            FAIL,
        ),
        (
            "detectable_format:multiple_sections",
            json!({"section_spliter": "Section", "num_sections": 2}),
            "Section 1\nA\nSection 2\nB",
            PASS,
        ),
        (
            "detectable_format:multiple_sections",
            json!({"section_spliter": "Section", "num_sections": 2}),
            "Section 1\nA\nsection 2\nB",
            FAIL,
        ),
        (
            "detectable_format:json_format",
            json!({}),
            "```json\n{\"a\": [1, 2]}\n```",
            PASS,
        ),
        (
            "detectable_format:json_format",
            json!({}),
            "{\"a\": 1,}",
            FAIL,
        ),
        (
            "detectable_format:json_format",
            json!({}),
            "Here is the JSON:\n{\"a\": 1}",
            LOOSE_ONLY,
        ),
        (
            "detectable_format:title",
            json!({}),
            "<<A Title>>\nText.",
            PASS,
        ),
        ("detectable_format:title", json!({}), "<< >>\nText.", FAIL),
        (
            "combination:two_responses",
            json!({}),
            "First answer.\n******\nSecond answer.",
            PASS,
        ),
        (
            "combination:two_responses",
            json!({}),
            "Same.\n******\nSame.",
            FAIL,
        ),
        (
            "combination:two_responses",
            json!({}),
            "One.\n******\n\n******\nTwo.",
            FAIL,
        ),
        (
            "combination:repeat_prompt",
            json!({"prompt_to_repeat": "Say hi."}),
            "say HI. Hi!",
            PASS,
        ),
        (
            "combination:repeat_prompt",
            json!({"prompt_to_repeat": "Say hi."}),
            "Hi!",
            FAIL,
        ),
        (
            "combination:repeat_prompt",
            json!({"prompt_to_repeat": "Say hi."}),
            "Sure!\nSay hi. Hi!",
            LOOSE_ONLY,
        ),
        (
            "startend:end_checker",
            json!({"end_phrase": "Any questions?"}),
            "Done. any questions?\"",
            PASS,
        ),
        (
            "startend:end_checker",
            json!({"end_phrase": "Any questions?"}),
            "Any questions? Done.",
            FAIL,
        ),
        (
            "startend:end_checker",
            json!({"end_phrase": "Any questions?"}),
            "Done. Any questions?\nHope this helps.",
            LOOSE_ONLY,
        ),
        (
            "change_case:capital_word_frequency",
            json!({"capital_frequency": 2, "capital_relation": "at least"}),
            "The NASA and ESA teams.",
            PASS,
        ),
        (
            "change_case:capital_word_frequency",
            json!({"capital_frequency": 2, "capital_relation": "at least"}),
            "The NASA team.",
            FAIL,
        ),
        (
            "change_case:capital_word_frequency",
            json!({"capital_frequency": 2, "capital_relation": "less than"}),
            "NASA, ESA and JAXA.",
            FAIL,
        ),
        (
            "change_case:english_capital",
            json!({}),
            "THIS IS ALL WRITTEN IN CAPITAL LETTERS, AS ASKED.",
            PASS,
        ),
        (
            "change_case:english_capital",
            json!({}),
            "THIS IS ALMOST all in capitals.",
            FAIL,
        ),
        (
            "change_case:english_capital",
            json!({}),
            "Sure, here it is:\nTHIS IS ALL WRITTEN IN CAPITAL LETTERS, AS ASKED.",
            LOOSE_ONLY,
        ),
        (
            "change_case:english_lowercase",
            json!({}),
            "this is all written in lowercase letters, as asked.",
            PASS,
        ),
        (
            "change_case:english_lowercase",
            json!({}),
            "this is Not all lowercase.",
            FAIL,
        ),
        (
            "punctuation:no_comma",
            json!({}),
            "No commas here at all.",
            PASS,
        ),
        ("punctuation:no_comma", json!({}), "One, two.", FAIL),
        (
            "punctuation:no_comma",
            json!({}),
            "Sure, here you go:\nNo commas here.",
            LOOSE_ONLY,
        ),
        ("startend:quotation", json!({}), "  \"Quoted.\"  ", PASS),
        ("startend:quotation", json!({}), "\"Unfinished.", FAIL),
        ("startend:quotation", json!({}), "\"", FAIL),
    ]
}

#[test]
fn every_instruction_type_passes_and_fails_strictly_and_loosely() {
    let cases = cases();
    for id in IDS {
        let of_type: Vec<_> = cases.iter().filter(|c| c.0 == id).collect();
        assert!(
            of_type.iter().any(|c| c.3 == PASS) && of_type.iter().any(|c| c.3 == FAIL),
            "{id} needs a passing and a failing case"
        );
    }
    for (id, kwargs, response, expected) in cases {
        assert_eq!(
            judge(id, kwargs.clone(), response),
            expected,
            "{id} {kwargs} on {response:?}"
        );
    }
}

#[test]
fn an_empty_response_follows_nothing() {
    assert_eq!(judge("punctuation:no_comma", json!({}), "  \n "), FAIL);
}

#[test]
fn loose_tries_asterisks_removed_and_lines_dropped() {
    let v = loose_variants("**Intro**\nbody\nend");
    assert_eq!(v[1], "Intro\nbody\nend");
    assert_eq!(
        (v[2].as_str(), v[3].as_str(), v[4].as_str()),
        ("body\nend", "**Intro**\nbody", "body")
    );
    assert_eq!(v[7], "body");
    assert_eq!(loose_variants("one line")[4], "");
}

#[test]
fn accuracies_count_prompts_and_instructions() {
    let p = |ids: &[&str]| TaskPrompt {
        key: json!(0),
        prompt: "p".into(),
        instruction_ids: ids.iter().map(|s| s.to_string()).collect(),
        instructions: ids
            .iter()
            .map(|i| Instruction::parse(i, &json!({})).unwrap())
            .collect(),
    };
    let a = p(&["punctuation:no_comma", "startend:quotation"]);
    let b = p(&["punctuation:no_comma"]);
    let scored = [score(&a, 0, "\"no commas\""), score(&b, 0, "a, b")];
    let (s, by_type) = summarize(&scored);
    assert_eq!(s.prompts, 2);
    assert_eq!((s.prompt_strict, s.inst_strict), (0.5, 2.0 / 3.0));
    assert_eq!(by_type["punctuation:no_comma"], (1, 1, 2));
    assert!(table(&by_type).contains("startend:quotation"));
}

#[test]
fn several_samples_a_prompt_score_the_first_and_count_pass_at_k() {
    let (_t, task_path) = file(
        "task.jsonl",
        &[
            task_line("A.", "punctuation:no_comma", json!({})),
            task_line("B.", "punctuation:no_comma", json!({})),
        ],
    );
    let task = Task::read(&task_path).unwrap();
    // A: samples 1 and 2 pass, 0 does not; B: only sample 0 passes. A's sample 1 comes twice:
    // the later line wins.
    let (_d, path) = file(
        "r.jsonl",
        &[
            json!({"prompt": "A.", "sample": 1, "response": "x, y"}),
            json!({"prompt": "B.", "sample": 2, "response": "x, y"}),
            json!({"prompt": "A.", "sample": 0, "response": "x, y"}),
            json!({"prompt": "B.", "sample": 0, "response": "fine"}),
            json!({"prompt": "A.", "sample": 2, "response": "fine"}),
            json!({"prompt": "B.", "sample": 1, "response": "a, b"}),
            json!({"prompt": "A.", "sample": 1, "response": "fine"}),
        ],
    );
    let responses = read_responses(&path, &task).unwrap();
    let order: Vec<(&str, usize)> = responses
        .iter()
        .map(|r| (r.prompt.prompt.as_str(), r.sample))
        .collect();
    assert_eq!(
        order,
        [
            ("A.", 0),
            ("A.", 1),
            ("A.", 2),
            ("B.", 0),
            ("B.", 1),
            ("B.", 2)
        ]
    );
    let scored: Vec<Scored> = responses
        .iter()
        .map(|r| score(r.prompt, r.sample, &r.response))
        .collect();
    let (s, by_type) = summarize(&scored);
    // First samples: A fails, B passes.
    assert_eq!((s.prompts, s.prompt_strict), (2, 0.5));
    assert_eq!(by_type["punctuation:no_comma"], (1, 1, 2));
    let p = s.passes.expect("several samples");
    assert_eq!(p.k, 3);
    assert!((p.prompt_strict_pass_at_1 - (2.0 / 3.0 + 1.0 / 3.0) / 2.0).abs() < 1e-12);
    assert_eq!(p.prompt_strict_pass_at_k, 1.0);
    let line = serde_json::to_value(s).unwrap();
    assert_eq!(line["samples"], 3);
    assert!(line.get("prompt_loose_pass_at_k").is_some());
    // One sample a prompt: no pass@k fields.
    let (one, _) = summarize(&scored[..1]);
    assert!(serde_json::to_value(one).unwrap().get("samples").is_none());
    let bad = responses_error(
        &[json!({"prompt": "A.", "sample": -1, "response": "x"})],
        &task,
    );
    assert!(
        bad.contains("r.jsonl:1") && bad.contains("`sample`"),
        "{bad}"
    );
}

#[test]
fn pass_at_k_is_the_chance_that_k_draws_hold_a_pass() {
    assert_eq!(pass_at_k(5, 0, 3), 0.0);
    assert_eq!(pass_at_k(5, 3, 3), 1.0);
    // 1 - C(3, 2) / C(5, 2) = 1 - 3/10.
    assert!((pass_at_k(5, 2, 2) - 0.7).abs() < 1e-12);
    assert!((pass_at_k(4, 1, 1) - 0.25).abs() < 1e-12);
}

fn responses_error(lines: &[Value], task: &Task) -> String {
    let (_d, path) = file("r.jsonl", lines);
    read_responses(&path, task).unwrap_err().to_string()
}

/// Writes `lines` to a file in a fresh folder.
fn file(name: &str, lines: &[Value]) -> (tempfile::TempDir, std::path::PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join(name);
    let text: String = lines.iter().map(|l| format!("{l}\n")).collect();
    std::fs::write(&path, text).unwrap();
    (dir, path)
}

fn task_line(prompt: &str, id: &str, kwargs: Value) -> Value {
    json!({"key": 7, "prompt": prompt, "instruction_id_list": [id], "kwargs": [kwargs]})
}

fn read_error(lines: &[Value]) -> String {
    let (_d, path) = file("task.jsonl", lines);
    Task::read(&path).unwrap_err().to_string()
}

#[test]
fn bad_task_data_is_named_by_file_line_and_field() {
    let ok = task_line("Write.", "punctuation:no_comma", json!({}));
    let e = read_error(&[
        ok.clone(),
        task_line("Write.", "keywords:rhymes", json!({})),
    ]);
    assert!(
        e.contains("task.jsonl:2") && e.contains("unknown instruction id \"keywords:rhymes\""),
        "{e}"
    );
    let e = read_error(&[task_line(
        "W.",
        "keywords:frequency",
        json!({"keyword": "a", "relation": "at least"}),
    )]);
    assert!(
        e.contains(":1:") && e.contains("needs the argument `frequency`"),
        "{e}"
    );
    let e = read_error(&[task_line(
        "W.",
        "length_constraints:number_words",
        json!({"num_words": "ten", "relation": "at least"}),
    )]);
    assert!(e.contains("`num_words` must be a whole number"), "{e}");
    let e = read_error(&[task_line(
        "W.",
        "keywords:frequency",
        json!({"keyword": "a", "frequency": 1, "relation": "most"}),
    )]);
    assert!(e.contains("\"less than\" or \"at least\""), "{e}");
    let e = read_error(&[task_line(
        "W.",
        "punctuation:no_comma",
        json!({"letter": "a"}),
    )]);
    assert!(e.contains("takes no argument `letter`"), "{e}");
    let e = read_error(&[task_line(" ", "punctuation:no_comma", json!({}))]);
    assert!(e.contains("`prompt` is empty"), "{e}");
}

#[test]
fn responses_must_answer_the_task_prompts() {
    let (_t, task_path) = file(
        "task.jsonl",
        &[task_line("Write.", "punctuation:no_comma", json!({}))],
    );
    let task = Task::read(&task_path).unwrap();
    let responses = |lines: &[Value]| {
        let (d, path) = file("responses.jsonl", lines);
        let r = read_responses(&path, &task)
            .map(|r| r.len())
            .map_err(|e| e.to_string());
        drop(d);
        r
    };
    assert_eq!(
        responses(&[json!({"prompt": "Write.", "response": "ok"})]),
        Ok(1)
    );
    let e = responses(&[
        json!({"prompt": "Write.", "response": "ok"}),
        json!({"prompt": "Other.", "response": "x"}),
    ])
    .unwrap_err();
    assert!(
        e.contains("responses.jsonl:2") && e.contains("not one of the task's prompts"),
        "{e}"
    );
    let e = responses(&[json!({"prompt": "", "response": "x"})]).unwrap_err();
    assert!(e.contains("`prompt` is empty"), "{e}");
    let e = responses(&[json!({"prompt": "Write."})]).unwrap_err();
    assert!(e.contains("`response`"), "{e}");
    let (_d, bad) = file("r.jsonl", &[]);
    std::fs::write(&bad, "{not json\n").unwrap();
    let e = read_responses(Path::new(&bad), &task)
        .unwrap_err()
        .to_string();
    assert!(e.contains("r.jsonl:1") && e.contains("not JSON"), "{e}");
}
