//! Pseudo-code written from IFEval-style constraints: each instruction type's step, the whole
//! block's shape, and `write_from_constraints` over good and bad files.

use std::path::{Path, PathBuf};

use pctrain_data::constraints::{Constraint, IDS};
use pctrain_data::RecordReader;
use pctrain_pseudo::from_constraints::{entry_name, goal_of};
use pctrain_pseudo::{check_structure, pseudo_code_from_constraints, write_from_constraints};
use serde_json::{json, Value};

fn constraint(id: &str, kwargs: Value) -> Constraint {
    Constraint {
        id: id.into(),
        kwargs,
    }
}

/// `(id, kwargs, fragments its pseudo-code must hold)` for every instruction type: the step's
/// comment and code, and the parameter with its value in the call.
fn cases() -> Vec<(&'static str, Value, Vec<&'static str>)> {
    vec![
        (
            "keywords:existence",
            json!({"keywords": ["tide", "moon"]}),
            vec![
                "# work in each keyword at least once",
                "response = include_words(response, keywords)",
                "keywords (list[str]): words the response must include",
                r#"keywords=["tide", "moon"]"#,
            ],
        ),
        (
            "keywords:frequency",
            json!({"keyword": "river", "frequency": 3, "relation": "at least"}),
            vec![
                "# use the keyword at least min_keyword_uses times",
                "response = set_word_uses(response, keyword, at_least=min_keyword_uses)",
                r#"keyword="river", min_keyword_uses=3"#,
            ],
        ),
        (
            "keywords:forbidden_words",
            json!({"forbidden_words": ["very", "really"]}),
            vec![
                "# leave out every forbidden word",
                "response = remove_words(response, forbidden_words)",
                r#"forbidden_words=["very", "really"]"#,
            ],
        ),
        (
            "keywords:letter_frequency",
            json!({"letter": "Q", "let_frequency": 2, "let_relation": "less than"}),
            vec![
                "# make the letter appear fewer than letter_count_below times",
                "response = set_letter_count(response, letter, below=letter_count_below)",
                r#"letter="q", letter_count_below=2"#,
            ],
        ),
        (
            "language:response_language",
            json!({"language": "de"}),
            vec![
                "# write the whole response in that language and no other",
                "response = translate(response, to=language)",
                r#"language="German""#,
            ],
        ),
        (
            "length_constraints:number_sentences",
            json!({"num_sentences": 4, "relation": "less than"}),
            vec![
                "# keep to fewer than sentences_below sentences",
                "response = fit_sentences(response, below=sentences_below)",
                "sentences_below=4",
            ],
        ),
        (
            "length_constraints:number_paragraphs",
            json!({"num_paragraphs": 3}),
            vec![
                "# write exactly num_paragraphs paragraphs divided by ***",
                "paragraphs = split_into_paragraphs(response, count=num_paragraphs)",
                r#"response = "\n***\n".join(paragraphs)"#,
                "num_paragraphs=3",
            ],
        ),
        (
            "length_constraints:number_words",
            json!({"num_words": 300, "relation": "at least"}),
            vec![
                "# write at least min_words words",
                "response = fit_words(response, at_least=min_words)",
                "min_words (int): the fewest words allowed",
                "min_words=300",
            ],
        ),
        (
            "length_constraints:nth_paragraph_first_word",
            json!({"num_paragraphs": 4, "nth_paragraph": 2, "first_word": "however"}),
            vec![
                "paragraph nth_paragraph starting with first_word",
                "paragraphs[nth_paragraph - 1] = start_with(paragraphs[nth_paragraph - 1], first_word)",
                r#"response = "\n\n".join(paragraphs)"#,
                r#"num_paragraphs=4, nth_paragraph=2, first_word="however""#,
            ],
        ),
        (
            "detectable_content:number_placeholders",
            json!({"num_placeholders": 2}),
            vec![
                "# leave at least min_placeholders placeholders in square brackets",
                "response = add_placeholders(response, at_least=min_placeholders)",
                "min_placeholders=2",
            ],
        ),
        (
            "detectable_content:postscript",
            json!({"postscript_marker": "P.S."}),
            vec![
                "# add a postscript at the end, starting with postscript_marker",
                "write_postscript(response)",
                r#"postscript_marker="P.S.""#,
            ],
        ),
        (
            "detectable_format:number_bullet_lists",
            json!({"num_bullets": 5}),
            vec![
                "# put the points in exactly num_bullets markdown bullets",
                "response = as_bullet_points(response, count=num_bullets)",
                "num_bullets=5",
            ],
        ),
        (
            "detectable_format:constrained_response",
            json!({}),
            vec![
                "# answer with exactly one of the allowed phrases",
                "response = pick_one(response, allowed_answers)",
                r#"allowed_answers=["My answer is yes.", "My answer is no.", "My answer is maybe."]"#,
            ],
        ),
        (
            "detectable_format:number_highlighted_sections",
            json!({"num_highlights": 2}),
            vec![
                "# highlight at least min_highlights sections with markdown",
                "response = highlight_sections(response, at_least=min_highlights)",
                "min_highlights=2",
            ],
        ),
        (
            "detectable_format:multiple_sections",
            json!({"section_spliter": "Section", "num_sections": 3}),
            vec![
                "# split the response into num_sections sections, each headed by section_label",
                "response = head_sections(sections, label=section_label)",
                r#"section_label="Section", num_sections=3"#,
            ],
        ),
        (
            "detectable_format:json_format",
            json!({}),
            vec![
                "# wrap the whole response in JSON",
                "    if as_json:\n        response = to_json(response)",
                "as_json=True",
            ],
        ),
        (
            "detectable_format:title",
            json!({}),
            vec![
                "# put a title in double angular brackets at the top",
                r#"response = "<<" + make_title(response) + ">>\n" + response"#,
                "with_title=True",
            ],
        ),
        (
            "combination:two_responses",
            json!({}),
            vec![
                "# give two different responses, separated by six asterisks",
                "second = draft_different_response(request, response)",
                r#"separator="******""#,
            ],
        ),
        (
            "combination:repeat_prompt",
            json!({"prompt_to_repeat": "Say \"hi\" twice."}),
            vec![
                "# repeat the request word for word first, then answer",
                r#"response = prompt_to_repeat + "\n" + response"#,
                r#"prompt_to_repeat="Say \"hi\" twice.""#,
            ],
        ),
        (
            "startend:end_checker",
            json!({"end_phrase": "Any other questions?"}),
            vec![
                "# finish with the end phrase, nothing after it",
                "response = end_with(response, end_phrase)",
                r#"end_phrase="Any other questions?""#,
            ],
        ),
        (
            "change_case:capital_word_frequency",
            json!({"capital_frequency": 5, "capital_relation": "at least"}),
            vec![
                "# write at least min_capital_words words in all capital letters",
                "response = set_capital_words(response, at_least=min_capital_words)",
                "min_capital_words=5",
            ],
        ),
        (
            "change_case:english_capital",
            json!({}),
            vec![
                "# write everything in English capital letters",
                "    if all_capitals:\n        response = response.upper()",
                "all_capitals=True",
            ],
        ),
        (
            "change_case:english_lowercase",
            json!({}),
            vec![
                "# write everything in English lowercase letters",
                "    if all_lowercase:\n        response = response.lower()",
                "all_lowercase=True",
            ],
        ),
        (
            "punctuation:no_comma",
            json!({}),
            vec![
                "# use no comma anywhere",
                r#"response = rephrase_without(response, ",")"#,
                "no_commas=True",
            ],
        ),
        (
            "startend:quotation",
            json!({}),
            vec![
                "# wrap the whole response in double quotation marks",
                r#"response = '"' + response + '"'"#,
                "in_quotes=True",
            ],
        ),
    ]
}

#[test]
fn every_instruction_type_has_its_step_and_passes_the_structure_check() {
    let cases = cases();
    let mut ids: Vec<&str> = cases.iter().map(|c| c.0).collect();
    ids.sort_unstable();
    let mut all = IDS.to_vec();
    all.sort_unstable();
    assert_eq!(ids, all, "one case per instruction type");
    for (id, kwargs, fragments) in cases {
        let code = pseudo_code_from_constraints(
            "Write a short story about a lighthouse keeper. Keep it gentle.",
            &[constraint(id, kwargs)],
        )
        .unwrap();
        let checked = check_structure(&code).unwrap_or_else(|e| panic!("{id}: {e}\n{code}"));
        assert_eq!(checked.entry, "write_short_story_lighthouse", "{id}");
        for f in fragments {
            assert!(code.contains(f), "{id}: no {f:?} in\n{code}");
        }
    }
}

#[test]
fn a_block_has_the_goal_one_step_a_constraint_in_order_and_distinct_names() {
    let code = pseudo_code_from_constraints(
        "Describe the water cycle for children! Use simple words.\nMore details here.",
        &[
            constraint("startend:end_checker", json!({"end_phrase": "The end."})),
            constraint(
                "length_constraints:number_paragraphs",
                json!({"num_paragraphs": 2}),
            ),
            constraint(
                "length_constraints:nth_paragraph_first_word",
                json!({"num_paragraphs": 2, "nth_paragraph": 1, "first_word": "rain"}),
            ),
            constraint("keywords:existence", json!({"keywords": ["cloud"]})),
        ],
    )
    .unwrap();
    assert!(check_structure(&code).is_ok(), "{code}");
    assert!(
        code.starts_with("def describe_water_cycle_children(\n    request: str,\n"),
        "{code}"
    );
    assert!(
        code.contains("\"\"\"Describe the water cycle for children!\n"),
        "{code}"
    );
    assert!(
        code.contains("num_paragraphs: int,\n    num_paragraphs_2: int,"),
        "{code}"
    );
    // Content first, the end phrase last, whatever the prompt's order.
    let at = |s: &str| {
        code.find(s)
            .unwrap_or_else(|| panic!("no {s:?} in\n{code}"))
    };
    assert!(at("# work in each keyword") < at("# write exactly num_paragraphs "));
    assert!(at("# write num_paragraphs_2 paragraphs") < at("# finish with the end phrase"));
    assert_eq!(
        code.matches("\n    # ").count(),
        5,
        "a draft step and one a constraint"
    );
    assert!(
        code.ends_with(
            ">>> describe_water_cycle_children(request=\"Describe the water cycle for children!\", \
             keywords=[\"cloud\"], num_paragraphs=2, num_paragraphs_2=2, nth_paragraph=1, \
             first_word=\"rain\", end_phrase=\"The end.\")"
        ),
        "{code}"
    );
}

#[test]
fn goals_and_names_come_from_the_first_sentence() {
    assert_eq!(goal_of("  Write a poem. Use rhyme."), "Write a poem.");
    assert_eq!(
        goal_of("Version 2.5 is out: summarise it"),
        "Version 2.5 is out: summarise it"
    );
    let long = format!("Explain {} now.", "very ".repeat(60));
    let g = goal_of(&long);
    assert!(g.ends_with("...") && g.chars().count() <= 163, "{g}");
    assert_eq!(entry_name("Write a poem about the sea."), "write_poem_sea");
    assert_eq!(entry_name("2024 in review"), "task_2024_review");
    assert_eq!(entry_name("Что это?"), "answer_request");
    assert_eq!(entry_name("Pass."), "pass_task");
    assert_eq!(entry_name("Translate."), "translate_task");
    assert_eq!(entry_name("Response."), "response_task");
    assert_eq!(goal_of("Say\u{0}hi\tnow. Then stop."), "Say hi now.");
    let odd = pseudo_code_from_constraints(
        "Quote \"\"\"this\"\"\" with a \\ backslash.",
        &[constraint("punctuation:no_comma", json!({}))],
    )
    .unwrap();
    assert!(check_structure(&odd).is_ok(), "{odd}");
}

fn write(dir: &Path, name: &str, lines: &[Value]) -> PathBuf {
    let path = dir.join(name);
    let text: String = lines.iter().map(|l| format!("{l}\n")).collect();
    std::fs::write(&path, text).unwrap();
    path
}

#[test]
fn records_in_ifeval_and_tulu_shape_get_pseudo_code_and_keep_their_constraints() {
    let dir = tempfile::tempdir().unwrap();
    let input = write(
        dir.path(),
        "in.jsonl",
        &[
            json!({"key": 1001, "prompt": "Write a haiku about frost.",
                   "instruction_id_list": ["change_case:english_lowercase"], "kwargs": [{}],
                   "response": "white frost on the glass"}),
            json!({"id": "t1", "messages": [
                       {"role": "user", "content": "List three fruits."},
                       {"role": "assistant", "content": "* apple\n* pear\n* plum"}],
                   "instruction_id_list": ["detectable_format:number_bullet_lists"],
                   "kwargs": [{"num_bullets": 3}]}),
            json!({"id": "plain", "instruction": "Say hi.", "output": "hi"}),
            json!({"id": "had", "prompt": "Count to two.", "pseudo_code": "def f(): ...",
                   "instruction_id_list": ["punctuation:no_comma"], "kwargs": [{}]}),
        ],
    );
    let output = dir.path().join("out.jsonl");
    let summary = write_from_constraints(&[input], &output).unwrap();
    assert_eq!(
        (
            summary.records,
            summary.written,
            summary.without_constraints,
            summary.already_had_pseudo_code
        ),
        (4, 2, 1, 1)
    );
    let records: Vec<_> = RecordReader::open(&output)
        .unwrap()
        .map(Result::unwrap)
        .collect();
    assert_eq!(records[0].id, "1001");
    assert_eq!(records[0].messages.len(), 2);
    let pc = records[0].pseudo_code[0].as_deref().unwrap();
    assert!(
        pc.contains("all_lowercase=True") && check_structure(pc).is_ok(),
        "{pc}"
    );
    assert_eq!(
        records[0].constraints[0].id,
        "change_case:english_lowercase"
    );
    assert_eq!(records[1].constraints[0].kwargs, json!({"num_bullets": 3}));
    assert!(records[1].pseudo_code[0]
        .as_deref()
        .unwrap()
        .contains("num_bullets=3"));
    assert_eq!(records[2].pseudo_code, [None]);
    assert_eq!(records[3].pseudo_code[0].as_deref(), Some("def f(): ..."));
}

#[test]
fn bad_constraints_are_errors_with_file_line_and_nothing_is_written() {
    let dir = tempfile::tempdir().unwrap();
    let good = json!({"key": 1, "prompt": "Write.", "instruction_id_list": ["punctuation:no_comma"], "kwargs": [{}]});
    let bad = [
        (
            json!({"key": 2, "prompt": "Write.", "instruction_id_list": ["keywords:rhymes"], "kwargs": [{}]}),
            "unknown instruction id \"keywords:rhymes\"",
        ),
        (
            json!({"key": 2, "prompt": "Write.", "instruction_id_list": ["keywords:frequency"],
                   "kwargs": [{"keyword": "a", "relation": "at least"}]}),
            "needs the argument `frequency`",
        ),
        (
            json!({"key": 2, "prompt": "Write.", "instruction_id_list": ["length_constraints:number_words"],
                   "kwargs": [{"num_words": "ten", "relation": "at least"}]}),
            "`num_words` must be a whole number",
        ),
        (
            json!({"key": 2, "prompt": "Write.", "instruction_id_list": ["keywords:existence"],
                   "kwargs": [{"keywords": "tide"}]}),
            "`keywords` must be a list of strings",
        ),
        (
            json!({"key": 2, "prompt": "Write.", "instruction_id_list": ["punctuation:no_comma"]}),
            "`kwargs` is missing",
        ),
    ];
    let output = dir.path().join("out.jsonl");
    std::fs::write(&output, "kept\n").unwrap();
    for (line, expected) in bad {
        let input = write(dir.path(), "in.jsonl", &[good.clone(), line]);
        let e = write_from_constraints(&[input], &output)
            .unwrap_err()
            .to_string();
        assert!(e.contains("in.jsonl:2") && e.contains(expected), "{e}");
        assert_eq!(std::fs::read_to_string(&output).unwrap(), "kept\n");
    }
}

#[test]
fn every_pair_of_types_and_odd_arguments_pass_the_structure_check() {
    let mut cases: Vec<(&str, Value)> = cases().into_iter().map(|(id, k, _)| (id, k)).collect();
    let odd = "Line one\nline \"two\" with a \\ backslash, ''' and \"\"\" and 日本語 🙂";
    cases.push(("startend:end_checker", json!({ "end_phrase": odd })));
    cases.push((
        "combination:repeat_prompt",
        json!({ "prompt_to_repeat": odd }),
    ));
    cases.push((
        "keywords:existence",
        json!({ "keywords": [odd, "a\u{1}b"] }),
    ));
    for (a, ka) in &cases {
        for (b, kb) in &cases {
            let both = [constraint(a, ka.clone()), constraint(b, kb.clone())];
            let code = pseudo_code_from_constraints(odd, &both).unwrap();
            let checked =
                check_structure(&code).unwrap_or_else(|e| panic!("{a} + {b}: {e}\n{code}"));
            assert!(!checked.entry.is_empty());
            assert_eq!(code.matches("\n    # ").count(), 3, "{a} + {b}\n{code}");
        }
    }
}
