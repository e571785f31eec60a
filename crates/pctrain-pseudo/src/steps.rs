//! The pseudo-code of each IFEval instruction type: the parameters it adds to the entry function
//! (name, type, docstring line, the call's value) and its commented step.

use pctrain_data::constraints::{Instruction, Pattern, Relation, CONSTRAINED};

/// One parameter of the entry function.
#[derive(Debug, Clone, PartialEq)]
pub struct Param {
    pub name: String,
    /// Its Python type, e.g. `int`, `list[str]`.
    pub ty: &'static str,
    /// What it means, for the docstring.
    pub doc: String,
    /// Its value in the call, as a Python literal.
    pub value: String,
}

/// A constraint's part of the pseudo-code: parameters and the step that meets it.
#[derive(Debug, Clone, PartialEq)]
pub struct Step {
    pub params: Vec<Param>,
    /// The comment above the step, without `# `.
    pub comment: String,
    /// The step's code lines (relative indentation kept), working on `response`.
    pub code: Vec<String>,
    /// Where the step stands among the others: content first, then structure, additions, case,
    /// the end phrase, and wrapping (JSON, quotation marks: IFEval finds an end phrase inside
    /// quotation marks) last.
    pub order: u8,
}

/// Parameter names already taken in one function.
#[derive(Debug, Default)]
pub struct Names(Vec<String>);

impl Names {
    /// `base`, or `base_2`, `base_3`... when it is taken.
    pub fn take(&mut self, base: &str) -> String {
        let mut name = base.to_string();
        let mut n = 1;
        while self.0.contains(&name) {
            n += 1;
            name = format!("{base}_{n}");
        }
        self.0.push(name.clone());
        name
    }
}

/// The local variables and helper functions the steps use.
const USED_NAMES: [&str; 28] = [
    "request",
    "response",
    "paragraphs",
    "sections",
    "second",
    "draft_response",
    "draft_different_response",
    "add_placeholders",
    "as_bullet_points",
    "end_with",
    "fit_sentences",
    "fit_words",
    "head_sections",
    "highlight_sections",
    "include_words",
    "make_title",
    "pick_one",
    "remove_words",
    "rephrase_without",
    "set_capital_words",
    "set_letter_count",
    "set_word_uses",
    "split_into_paragraphs",
    "split_into_sections",
    "start_with",
    "to_json",
    "translate",
    "write_postscript",
];

/// Whether the steps use `name` for a variable or a helper.
pub fn is_used_name(name: &str) -> bool {
    USED_NAMES.contains(&name)
}

/// A Python string literal of `s`.
pub fn py_str(s: &str) -> String {
    serde_json::to_string(s).expect("a string serialises")
}

/// A Python list literal of `items`' strings.
fn py_strs<'a>(items: impl IntoIterator<Item = &'a str>) -> String {
    let inner: Vec<String> = items.into_iter().map(py_str).collect();
    format!("[{}]", inner.join(", "))
}

fn texts(patterns: &[Pattern]) -> String {
    py_strs(patterns.iter().map(Pattern::text))
}

fn param(names: &mut Names, base: &str, ty: &'static str, doc: &str, value: String) -> Param {
    Param {
        name: names.take(base),
        ty,
        doc: doc.to_string(),
        value,
    }
}

/// A flag parameter (`True`) for an instruction without arguments.
fn flag(names: &mut Names, base: &str, doc: &str) -> Param {
    param(names, base, "bool", doc, "True".into())
}

/// A count with its relation: the parameter, named `min_WHAT` or `WHAT_below`, and the keyword
/// argument its step passes it as (`at_least` or `below`).
fn bound(
    names: &mut Names,
    what: &str,
    n: usize,
    relation: Relation,
    noun: &str,
) -> (Param, &'static str) {
    if relation == Relation::AtLeast {
        let doc = format!("the fewest {noun} allowed");
        (
            param(names, &format!("min_{what}"), "int", &doc, n.to_string()),
            "at_least",
        )
    } else {
        let doc = format!("the number of {noun} must stay below this");
        (
            param(names, &format!("{what}_below"), "int", &doc, n.to_string()),
            "below",
        )
    }
}

fn step(params: Vec<Param>, comment: String, code: Vec<String>, order: u8) -> Step {
    Step {
        params,
        comment,
        code,
        order,
    }
}

/// The step of an instruction, its parameters named apart from those in `names`.
pub fn step_of(instruction: &Instruction, names: &mut Names) -> Step {
    use Instruction as I;
    match instruction {
        I::KeywordsExistence(words) => {
            let p = param(
                names,
                "keywords",
                "list[str]",
                "words the response must include",
                texts(words),
            );
            let code = vec![format!("response = include_words(response, {})", p.name)];
            step(
                vec![p],
                "work in each keyword at least once".into(),
                code,
                0,
            )
        }
        I::KeywordFrequency(word, n, relation) => {
            let word = param(
                names,
                "keyword",
                "str",
                "a word whose uses are counted",
                py_str(word.text()),
            );
            let (n, rel) = bound(names, "keyword_uses", *n, *relation, "uses of the keyword");
            let comment = match relation {
                Relation::AtLeast => format!("use the keyword at least {} times", n.name),
                Relation::LessThan => format!("use the keyword fewer than {} times", n.name),
            };
            let code = vec![format!(
                "response = set_word_uses(response, {}, {rel}={})",
                word.name, n.name
            )];
            step(vec![word, n], comment, code, 0)
        }
        I::ForbiddenWords(words) => {
            let p = param(
                names,
                "forbidden_words",
                "list[str]",
                "words the response must not contain",
                texts(words),
            );
            let code = vec![format!("response = remove_words(response, {})", p.name)];
            step(vec![p], "leave out every forbidden word".into(), code, 0)
        }
        I::LetterFrequency(letter, n, relation) => {
            let letter = param(
                names,
                "letter",
                "str",
                "a letter whose appearances are counted",
                py_str(letter),
            );
            let (n, rel) = bound(
                names,
                "letter_count",
                *n,
                *relation,
                "appearances of the letter",
            );
            let comment = match relation {
                Relation::AtLeast => format!("make the letter appear at least {} times", n.name),
                Relation::LessThan => format!("make the letter appear fewer than {} times", n.name),
            };
            let code = vec![format!(
                "response = set_letter_count(response, {}, {rel}={})",
                letter.name, n.name
            )];
            step(vec![letter, n], comment, code, 0)
        }
        I::ResponseLanguage(code) => {
            let name = language_name(code).unwrap_or(code);
            let p = param(
                names,
                "language",
                "str",
                "the only language the response may use",
                py_str(name),
            );
            let lines = vec![format!("response = translate(response, to={})", p.name)];
            step(
                vec![p],
                "write the whole response in that language and no other".into(),
                lines,
                1,
            )
        }
        I::NumberSentences(n, relation) => {
            let (n, rel) = bound(names, "sentences", *n, *relation, "sentences");
            let comment = match relation {
                Relation::AtLeast => format!("write at least {} sentences", n.name),
                Relation::LessThan => format!("keep to fewer than {} sentences", n.name),
            };
            let code = vec![format!(
                "response = fit_sentences(response, {rel}={})",
                n.name
            )];
            step(vec![n], comment, code, 1)
        }
        I::NumberWords(n, relation) => {
            let (n, rel) = bound(names, "words", *n, *relation, "words");
            let comment = match relation {
                Relation::AtLeast => format!("write at least {} words", n.name),
                Relation::LessThan => format!("keep to fewer than {} words", n.name),
            };
            let code = vec![format!("response = fit_words(response, {rel}={})", n.name)];
            step(vec![n], comment, code, 1)
        }
        I::NumberParagraphs(n) => {
            let n = param(
                names,
                "num_paragraphs",
                "int",
                "paragraphs, divided by the markdown divider ***",
                n.to_string(),
            );
            let code = vec![
                format!(
                    "paragraphs = split_into_paragraphs(response, count={})",
                    n.name
                ),
                r#"response = "\n***\n".join(paragraphs)"#.into(),
            ];
            let comment = format!("write exactly {} paragraphs divided by ***", n.name);
            step(vec![n], comment, code, 2)
        }
        I::NthParagraphFirstWord {
            paragraphs,
            nth,
            first_word,
        } => {
            let n = param(
                names,
                "num_paragraphs",
                "int",
                "paragraphs, divided by a blank line",
                paragraphs.to_string(),
            );
            let nth = param(
                names,
                "nth_paragraph",
                "int",
                "the paragraph (from 1) that starts with first_word",
                nth.to_string(),
            );
            let word = param(
                names,
                "first_word",
                "str",
                "the word that paragraph starts with",
                py_str(first_word),
            );
            let comment = format!(
                "write {} paragraphs divided by blank lines, paragraph {} starting with {}",
                n.name, nth.name, word.name
            );
            let code = vec![
                format!(
                    "paragraphs = split_into_paragraphs(response, count={})",
                    n.name
                ),
                format!(
                    "paragraphs[{0} - 1] = start_with(paragraphs[{0} - 1], {1})",
                    nth.name, word.name
                ),
                r#"response = "\n\n".join(paragraphs)"#.into(),
            ];
            step(vec![n, nth, word], comment, code, 2)
        }
        I::NumberPlaceholders(n) => {
            let p = param(
                names,
                "min_placeholders",
                "int",
                "the fewest placeholders in square brackets, like [address]",
                n.to_string(),
            );
            let code = vec![format!(
                "response = add_placeholders(response, at_least={})",
                p.name
            )];
            let comment = format!(
                "leave at least {} placeholders in square brackets, like [name]",
                p.name
            );
            step(vec![p], comment, code, 2)
        }
        I::Postscript(marker) => {
            let p = param(
                names,
                "postscript_marker",
                "str",
                "how the postscript at the end starts",
                py_str(marker.text()),
            );
            let code = vec![format!(
                r#"response = response + "\n\n" + {} + " " + write_postscript(response)"#,
                p.name
            )];
            let comment = format!("add a postscript at the end, starting with {}", p.name);
            step(vec![p], comment, code, 3)
        }
        I::NumberBulletLists(n) => {
            let p = param(
                names,
                "num_bullets",
                "int",
                "markdown bullet points (* item), no more and no fewer",
                n.to_string(),
            );
            let code = vec![format!(
                "response = as_bullet_points(response, count={})",
                p.name
            )];
            let comment = format!("put the points in exactly {} markdown bullets", p.name);
            step(vec![p], comment, code, 2)
        }
        I::ConstrainedResponse => {
            let p = param(
                names,
                "allowed_answers",
                "list[str]",
                "the phrases the answer must be one of",
                py_strs(CONSTRAINED),
            );
            let code = vec![format!("response = pick_one(response, {})", p.name)];
            step(
                vec![p],
                "answer with exactly one of the allowed phrases".into(),
                code,
                4,
            )
        }
        I::NumberHighlightedSections(n) => {
            let p = param(
                names,
                "min_highlights",
                "int",
                "the fewest sections highlighted in markdown, like *highlighted section*",
                n.to_string(),
            );
            let code = vec![format!(
                "response = highlight_sections(response, at_least={})",
                p.name
            )];
            let comment = format!(
                "highlight at least {} sections with markdown, like *this part*",
                p.name
            );
            step(vec![p], comment, code, 2)
        }
        I::MultipleSections(label, n) => {
            let label = param(
                names,
                "section_label",
                "str",
                "the word each section's heading starts with",
                py_str(label.text()),
            );
            let n = param(
                names,
                "num_sections",
                "int",
                "sections, each headed by the label and its number",
                n.to_string(),
            );
            let comment = format!(
                "split the response into {} sections, each headed by {} and its number",
                n.name, label.name
            );
            let code = vec![
                format!("sections = split_into_sections(response, count={})", n.name),
                format!("response = head_sections(sections, label={})", label.name),
            ];
            step(vec![label, n], comment, code, 2)
        }
        I::JsonFormat => {
            let p = flag(names, "as_json", "the whole response is valid JSON");
            let code = if_flag(&p, "response = to_json(response)");
            step(vec![p], "wrap the whole response in JSON".into(), code, 6)
        }
        I::Title => {
            let p = flag(
                names,
                "with_title",
                "the response has a title in double angular brackets, like <<title>>",
            );
            let code = if_flag(
                &p,
                r#"response = "<<" + make_title(response) + ">>\n" + response"#,
            );
            step(
                vec![p],
                "put a title in double angular brackets at the top".into(),
                code,
                2,
            )
        }
        I::TwoResponses => {
            let p = param(
                names,
                "separator",
                "str",
                "what stands between the two different responses",
                py_str("******"),
            );
            let code = vec![
                "second = draft_different_response(request, response)".into(),
                format!(r#"response = response + "\n" + {} + "\n" + second"#, p.name),
            ];
            step(
                vec![p],
                "give two different responses, separated by six asterisks".into(),
                code,
                3,
            )
        }
        I::RepeatPrompt(prompt) => {
            let p = param(
                names,
                "prompt_to_repeat",
                "str",
                "the request, repeated word for word before the answer",
                py_str(prompt),
            );
            let code = vec![format!(r#"response = {} + "\n" + response"#, p.name)];
            step(
                vec![p],
                "repeat the request word for word first, then answer".into(),
                code,
                3,
            )
        }
        I::EndChecker(phrase) => {
            let p = param(
                names,
                "end_phrase",
                "str",
                "the exact phrase the response ends with",
                py_str(phrase),
            );
            let code = vec![format!("response = end_with(response, {})", p.name)];
            step(
                vec![p],
                "finish with the end phrase, nothing after it".into(),
                code,
                5,
            )
        }
        I::CapitalWordFrequency(n, relation) => {
            let (n, rel) = bound(
                names,
                "capital_words",
                *n,
                *relation,
                "words in all capital letters",
            );
            let comment = match relation {
                Relation::AtLeast => {
                    format!("write at least {} words in all capital letters", n.name)
                }
                Relation::LessThan => {
                    format!("write fewer than {} words in all capital letters", n.name)
                }
            };
            let code = vec![format!(
                "response = set_capital_words(response, {rel}={})",
                n.name
            )];
            step(vec![n], comment, code, 4)
        }
        I::EnglishCapital => {
            let p = flag(
                names,
                "all_capitals",
                "the response is in English, in capital letters only",
            );
            let code = if_flag(&p, "response = response.upper()");
            step(
                vec![p],
                "write everything in English capital letters".into(),
                code,
                4,
            )
        }
        I::EnglishLowercase => {
            let p = flag(
                names,
                "all_lowercase",
                "the response is in English, in lowercase letters only",
            );
            let code = if_flag(&p, "response = response.lower()");
            step(
                vec![p],
                "write everything in English lowercase letters".into(),
                code,
                4,
            )
        }
        I::NoComma => {
            let p = flag(names, "no_commas", "the response has no comma at all");
            let code = if_flag(&p, r#"response = rephrase_without(response, ",")"#);
            step(vec![p], "use no comma anywhere".into(), code, 4)
        }
        I::Quotation => {
            let p = flag(
                names,
                "in_quotes",
                "the whole response is wrapped in double quotation marks",
            );
            let code = if_flag(&p, r#"response = '"' + response + '"'"#);
            step(
                vec![p],
                "wrap the whole response in double quotation marks".into(),
                code,
                6,
            )
        }
    }
}

/// `if FLAG:` over one line.
fn if_flag(flag: &Param, line: &str) -> Vec<String> {
    vec![format!("if {}:", flag.name), format!("    {line}")]
}

/// The English name of a language code `langdetect` gives (IFEval's `language` argument).
pub fn language_name(code: &str) -> Option<&'static str> {
    const NAMES: [(&str, &str); 55] = [
        ("af", "Afrikaans"),
        ("ar", "Arabic"),
        ("bg", "Bulgarian"),
        ("bn", "Bengali"),
        ("ca", "Catalan"),
        ("cs", "Czech"),
        ("cy", "Welsh"),
        ("da", "Danish"),
        ("de", "German"),
        ("el", "Greek"),
        ("en", "English"),
        ("es", "Spanish"),
        ("et", "Estonian"),
        ("fa", "Persian"),
        ("fi", "Finnish"),
        ("fr", "French"),
        ("gu", "Gujarati"),
        ("he", "Hebrew"),
        ("hi", "Hindi"),
        ("hr", "Croatian"),
        ("hu", "Hungarian"),
        ("id", "Indonesian"),
        ("it", "Italian"),
        ("ja", "Japanese"),
        ("kn", "Kannada"),
        ("ko", "Korean"),
        ("lt", "Lithuanian"),
        ("lv", "Latvian"),
        ("mk", "Macedonian"),
        ("ml", "Malayalam"),
        ("mr", "Marathi"),
        ("ne", "Nepali"),
        ("nl", "Dutch"),
        ("no", "Norwegian"),
        ("pa", "Punjabi"),
        ("pl", "Polish"),
        ("pt", "Portuguese"),
        ("ro", "Romanian"),
        ("ru", "Russian"),
        ("sk", "Slovak"),
        ("sl", "Slovenian"),
        ("so", "Somali"),
        ("sq", "Albanian"),
        ("sv", "Swedish"),
        ("sw", "Swahili"),
        ("ta", "Tamil"),
        ("te", "Telugu"),
        ("th", "Thai"),
        ("tl", "Tagalog"),
        ("tr", "Turkish"),
        ("uk", "Ukrainian"),
        ("ur", "Urdu"),
        ("vi", "Vietnamese"),
        ("zh-cn", "Chinese (simplified)"),
        ("zh-tw", "Chinese (traditional)"),
    ];
    NAMES.iter().find(|(c, _)| *c == code).map(|(_, n)| *n)
}
