//! IFEval's 25 verifiable instructions, each with its arguments (the task data's `kwargs`) and the
//! check of a response, as the reference evaluation defines them.

use regex::{Regex, RegexBuilder};
use serde_json::{Map, Value};

use super::text::{count_sentences, count_words, detect_language, is_lower, is_upper, word_tokens};

/// `less than` or `at least` a threshold.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Relation {
    LessThan,
    AtLeast,
}

impl Relation {
    fn holds(self, count: usize, threshold: usize) -> bool {
        match self {
            Relation::LessThan => count < threshold,
            Relation::AtLeast => count >= threshold,
        }
    }
}

/// One instruction with its arguments.
#[derive(Debug, Clone)]
pub enum Instruction {
    KeywordsExistence(Vec<Pattern>),
    KeywordFrequency(Pattern, usize, Relation),
    ForbiddenWords(Vec<Pattern>),
    LetterFrequency(String, usize, Relation),
    ResponseLanguage(String),
    NumberSentences(usize, Relation),
    NumberParagraphs(usize),
    NumberWords(usize, Relation),
    NthParagraphFirstWord {
        paragraphs: usize,
        nth: usize,
        first_word: String,
    },
    NumberPlaceholders(usize),
    /// Matched against the lowercased response.
    Postscript(Pattern),
    NumberBulletLists(usize),
    ConstrainedResponse,
    NumberHighlightedSections(usize),
    MultipleSections(Pattern, usize),
    JsonFormat,
    Title,
    TwoResponses,
    RepeatPrompt(String),
    EndChecker(String),
    CapitalWordFrequency(usize, Relation),
    EnglishCapital,
    EnglishLowercase,
    NoComma,
    Quotation,
}

/// A pattern the reference builds from an argument with `re` (its text is a regular expression
/// there too; text that is not a valid one here is matched literally), with the argument.
#[derive(Debug, Clone)]
pub struct Pattern(Regex, String);

impl Pattern {
    /// `before + text + after`, matched ignoring case (with `text` escaped if it is not a valid
    /// pattern).
    fn around(before: &str, text: &str, after: &str, ignore_case: bool) -> Self {
        let build = |t: &str| {
            RegexBuilder::new(&format!("{before}{t}{after}"))
                .case_insensitive(ignore_case)
                .build()
        };
        Pattern(
            build(text).unwrap_or_else(|_| {
                build(&regex::escape(text)).expect("an escaped pattern is valid")
            }),
            text.to_string(),
        )
    }

    /// The argument the pattern was made from.
    pub fn text(&self) -> &str {
        &self.1
    }

    fn new(text: &str) -> Self {
        Self::around("", text, "", true)
    }
}

/// The instruction ids, in the reference's order.
pub const IDS: [&str; 25] = [
    "keywords:existence",
    "keywords:frequency",
    "keywords:forbidden_words",
    "keywords:letter_frequency",
    "language:response_language",
    "length_constraints:number_sentences",
    "length_constraints:number_paragraphs",
    "length_constraints:number_words",
    "length_constraints:nth_paragraph_first_word",
    "detectable_content:number_placeholders",
    "detectable_content:postscript",
    "detectable_format:number_bullet_lists",
    "detectable_format:constrained_response",
    "detectable_format:number_highlighted_sections",
    "detectable_format:multiple_sections",
    "detectable_format:json_format",
    "detectable_format:title",
    "combination:two_responses",
    "combination:repeat_prompt",
    "startend:end_checker",
    "change_case:capital_word_frequency",
    "change_case:english_capital",
    "change_case:english_lowercase",
    "punctuation:no_comma",
    "startend:quotation",
];

/// The three answers `detectable_format:constrained_response` accepts.
pub const CONSTRAINED: [&str; 3] = [
    "My answer is yes.",
    "My answer is no.",
    "My answer is maybe.",
];

/// The arguments of one instruction: its `kwargs` object, `null` values left out.
struct Args<'a> {
    id: &'a str,
    map: Map<String, Value>,
    used: Vec<&'static str>,
}

impl Args<'_> {
    fn take(&mut self, key: &'static str) -> Option<Value> {
        self.used.push(key);
        self.map.remove(key)
    }

    fn missing(&self, key: &str) -> String {
        format!("{}: needs the argument `{key}`", self.id)
    }

    fn count(&mut self, key: &'static str) -> Result<usize, String> {
        match self.take(key) {
            None => Err(self.missing(key)),
            Some(v) => match v.as_f64() {
                Some(f) if f >= 0.0 && f.fract() == 0.0 => Ok(f as usize),
                _ => Err(format!(
                    "{}: `{key}` must be a whole number of at least 0, got {v}",
                    self.id
                )),
            },
        }
    }

    fn text(&mut self, key: &'static str) -> Result<String, String> {
        match self.take(key) {
            None => Err(self.missing(key)),
            Some(Value::String(s)) => Ok(s),
            Some(v) => Err(format!("{}: `{key}` must be a string, got {v}", self.id)),
        }
    }

    fn texts(&mut self, key: &'static str) -> Result<Vec<String>, String> {
        match self.take(key) {
            None => Err(self.missing(key)),
            Some(Value::Array(items)) if !items.is_empty() => items
                .into_iter()
                .map(|v| match v {
                    Value::String(s) => Ok(s),
                    v => Err(format!("{}: `{key}` must hold strings, got {v}", self.id)),
                })
                .collect(),
            Some(v) => Err(format!(
                "{}: `{key}` must be a list of strings, got {v}",
                self.id
            )),
        }
    }

    fn relation(&mut self, key: &'static str) -> Result<Relation, String> {
        match self.text(key)?.as_str() {
            "less than" => Ok(Relation::LessThan),
            "at least" => Ok(Relation::AtLeast),
            other => Err(format!(
                "{}: `{key}` must be \"less than\" or \"at least\", got {other:?}",
                self.id
            )),
        }
    }

    /// Every argument given was read.
    fn done(self) -> Result<(), String> {
        match self.map.keys().next() {
            None => Ok(()),
            Some(k) => Err(format!(
                "{}: takes no argument `{k}` (it takes {})",
                self.id,
                if self.used.is_empty() {
                    "none".to_string()
                } else {
                    self.used.join(", ")
                }
            )),
        }
    }
}

impl Instruction {
    /// The instruction `id` with its `kwargs` (a JSON object; `null` values count as absent).
    pub fn parse(id: &str, kwargs: &Value) -> Result<Instruction, String> {
        let map = match kwargs {
            Value::Object(m) => m
                .iter()
                .filter(|(_, v)| !v.is_null())
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
            Value::Null => Map::new(),
            other => return Err(format!("{id}: kwargs must be an object, got {other}")),
        };
        let mut a = Args {
            id,
            map,
            used: Vec::new(),
        };
        let i = match id {
            "keywords:existence" => {
                let words = a.texts("keywords")?;
                Instruction::KeywordsExistence(words.iter().map(|w| Pattern::new(w)).collect())
            }
            "keywords:frequency" => {
                let keyword = a.text("keyword")?;
                Instruction::KeywordFrequency(
                    Pattern::new(keyword.trim()),
                    a.count("frequency")?,
                    a.relation("relation")?,
                )
            }
            "keywords:forbidden_words" => {
                let words = a.texts("forbidden_words")?;
                Instruction::ForbiddenWords(
                    words
                        .iter()
                        .map(|w| Pattern::around(r"\b", w, r"\b", true))
                        .collect(),
                )
            }
            "keywords:letter_frequency" => {
                let letter = a.text("letter")?;
                if letter.trim().chars().count() != 1 {
                    return Err(format!("{id}: `letter` must be one letter, got {letter:?}"));
                }
                Instruction::LetterFrequency(
                    letter.trim().to_lowercase(),
                    a.count("let_frequency")?,
                    a.relation("let_relation")?,
                )
            }
            "language:response_language" => Instruction::ResponseLanguage(a.text("language")?),
            "length_constraints:number_sentences" => {
                Instruction::NumberSentences(a.count("num_sentences")?, a.relation("relation")?)
            }
            "length_constraints:number_paragraphs" => {
                Instruction::NumberParagraphs(a.count("num_paragraphs")?)
            }
            "length_constraints:number_words" => {
                Instruction::NumberWords(a.count("num_words")?, a.relation("relation")?)
            }
            "length_constraints:nth_paragraph_first_word" => {
                let paragraphs = a.count("num_paragraphs")?;
                let nth = a.count("nth_paragraph")?;
                if nth == 0 {
                    return Err(format!("{id}: `nth_paragraph` counts from 1"));
                }
                Instruction::NthParagraphFirstWord {
                    paragraphs,
                    nth,
                    first_word: a.text("first_word")?.to_lowercase(),
                }
            }
            "detectable_content:number_placeholders" => {
                Instruction::NumberPlaceholders(a.count("num_placeholders")?)
            }
            "detectable_content:postscript" => {
                let marker = a.text("postscript_marker")?.trim().to_string();
                let p = match marker.as_str() {
                    "P.P.S" => Pattern::around("", r"(?m)\s*p\.\s?p\.\s?s.*$", "", false),
                    "P.S." => Pattern::around("", r"(?m)\s*p\.\s?s\..*$", "", false),
                    other => Pattern::around(r"(?m)\s*", &other.to_lowercase(), ".*$", false),
                };
                Instruction::Postscript(Pattern(p.0, marker))
            }
            "detectable_format:number_bullet_lists" => {
                Instruction::NumberBulletLists(a.count("num_bullets")?)
            }
            "detectable_format:constrained_response" => Instruction::ConstrainedResponse,
            "detectable_format:number_highlighted_sections" => {
                Instruction::NumberHighlightedSections(a.count("num_highlights")?)
            }
            "detectable_format:multiple_sections" => {
                let spliter = a.text("section_spliter")?;
                let splits = Pattern::around(r"\s?", spliter.trim(), r"\s?\d+\s?", false);
                Instruction::MultipleSections(splits, a.count("num_sections")?)
            }
            "detectable_format:json_format" => Instruction::JsonFormat,
            "detectable_format:title" => Instruction::Title,
            "combination:two_responses" => Instruction::TwoResponses,
            "combination:repeat_prompt" => Instruction::RepeatPrompt(a.text("prompt_to_repeat")?),
            "startend:end_checker" => {
                Instruction::EndChecker(a.text("end_phrase")?.trim().to_string())
            }
            "change_case:capital_word_frequency" => Instruction::CapitalWordFrequency(
                a.count("capital_frequency")?,
                a.relation("capital_relation")?,
            ),
            "change_case:english_capital" => Instruction::EnglishCapital,
            "change_case:english_lowercase" => Instruction::EnglishLowercase,
            "punctuation:no_comma" => Instruction::NoComma,
            "startend:quotation" => Instruction::Quotation,
            other => {
                return Err(format!(
                    "unknown instruction id {other:?} (IFEval has {})",
                    IDS.join(", ")
                ))
            }
        };
        a.done()?;
        Ok(i)
    }

    /// Whether `response` follows the instruction.
    pub fn check(&self, response: &str) -> bool {
        match self {
            Instruction::KeywordsExistence(words) => words.iter().all(|w| w.0.is_match(response)),
            Instruction::KeywordFrequency(word, n, rel) => {
                rel.holds(word.0.find_iter(response).count(), *n)
            }
            Instruction::ForbiddenWords(words) => !words.iter().any(|w| w.0.is_match(response)),
            Instruction::LetterFrequency(letter, n, rel) => {
                let lower = response.to_lowercase();
                rel.holds(lower.matches(letter.as_str()).count(), *n)
            }
            Instruction::ResponseLanguage(lang) => {
                detect_language(response).is_none_or(|l| &l == lang)
            }
            Instruction::NumberSentences(n, rel) => rel.holds(count_sentences(response), *n),
            Instruction::NumberParagraphs(n) => star_paragraphs(response) == Some(*n),
            Instruction::NumberWords(n, rel) => rel.holds(count_words(response), *n),
            Instruction::NthParagraphFirstWord {
                paragraphs,
                nth,
                first_word,
            } => nth_paragraph_first_word(response, *paragraphs, *nth, first_word),
            Instruction::NumberPlaceholders(n) => {
                pattern(r"\[.*?\]").find_iter(response).count() >= *n
            }
            Instruction::Postscript(p) => p.0.is_match(&response.to_lowercase()),
            Instruction::NumberBulletLists(n) => {
                let stars = pattern(r"(?m)^\s*\*[^\*].*$").find_iter(response).count();
                let dashes = pattern(r"(?m)^\s*-.*$").find_iter(response).count();
                stars + dashes == *n
            }
            Instruction::ConstrainedResponse => {
                let r = response.trim();
                CONSTRAINED.iter().any(|c| r.contains(c))
            }
            Instruction::NumberHighlightedSections(n) => {
                let single = pattern(r"\*[^\n\*]*\*")
                    .find_iter(response)
                    .filter(|m| !m.as_str().trim_matches('*').trim().is_empty())
                    .count();
                let double = pattern(r"\*\*[^\n\*]*\*\*")
                    .find_iter(response)
                    .filter(|m| {
                        let s = m.as_str();
                        !s[2..s.len() - 2].trim().is_empty()
                    })
                    .count();
                single + double >= *n
            }
            Instruction::MultipleSections(spliter, n) => {
                spliter.0.find_iter(response).count() >= *n
            }
            Instruction::JsonFormat => {
                let mut v = response.trim();
                for prefix in ["```json", "```Json", "```JSON", "```"] {
                    v = v.strip_prefix(prefix).unwrap_or(v);
                }
                let v = v.strip_suffix("```").unwrap_or(v).trim();
                serde_json::from_str::<Value>(v).is_ok()
            }
            Instruction::Title => pattern(r"<<[^\n]+>>").find_iter(response).any(|m| {
                !m.as_str()
                    .trim_start_matches('<')
                    .trim_end_matches('>')
                    .trim()
                    .is_empty()
            }),
            Instruction::TwoResponses => two_responses(response),
            Instruction::RepeatPrompt(prompt) => response
                .trim()
                .to_lowercase()
                .starts_with(&prompt.trim().to_lowercase()),
            Instruction::EndChecker(phrase) => response
                .trim()
                .trim_matches('"')
                .to_lowercase()
                .ends_with(&phrase.to_lowercase()),
            Instruction::CapitalWordFrequency(n, rel) => {
                let capital = word_tokens(response)
                    .into_iter()
                    .filter(|w| is_upper(w))
                    .count();
                rel.holds(capital, *n)
            }
            Instruction::EnglishCapital => {
                is_upper(response) && detect_language(response).is_none_or(|l| l == "en")
            }
            Instruction::EnglishLowercase => {
                is_lower(response) && detect_language(response).is_none_or(|l| l == "en")
            }
            Instruction::NoComma => !response.contains(','),
            Instruction::Quotation => {
                let v = response.trim();
                v.chars().count() > 1 && v.starts_with('"') && v.ends_with('"')
            }
        }
    }
}

/// A fixed pattern of the checks.
fn pattern(p: &str) -> Regex {
    Regex::new(p).expect("the checks' patterns are valid")
}

/// Paragraphs split by the markdown divider `***`: empty ones may stand only first or last; an
/// empty one elsewhere fails (`None`).
fn star_paragraphs(response: &str) -> Option<usize> {
    let parts: Vec<&str> = pattern(r"\s?\*\*\*\s?").split(response).collect();
    let mut count = parts.len();
    for (i, p) in parts.iter().enumerate() {
        if p.trim().is_empty() {
            if i == 0 || i == parts.len() - 1 {
                count -= 1;
            } else {
                return None;
            }
        }
    }
    Some(count)
}

/// `paragraphs` paragraphs split by a blank line (`\n\n`), the `nth` (from 1) starting with
/// `first_word` (lowercase, punctuation after it ignored).
fn nth_paragraph_first_word(
    response: &str,
    paragraphs: usize,
    nth: usize,
    first_word: &str,
) -> bool {
    let parts: Vec<&str> = response.split("\n\n").collect();
    let count = parts.iter().filter(|p| !p.trim().is_empty()).count();
    if nth > count {
        return false;
    }
    let paragraph = parts[nth - 1].trim();
    let Some(word) = paragraph.split_whitespace().next() else {
        return false;
    };
    let word = word.trim_start_matches('\'').trim_start_matches('"');
    let first: String = word
        .chars()
        .take_while(|c| !matches!(c, '.' | ',' | '?' | '!' | '\'' | '"'))
        .flat_map(char::to_lowercase)
        .collect();
    count == paragraphs && first == first_word
}

/// Two different answers separated by `******` (empty parts allowed only at the ends).
fn two_responses(response: &str) -> bool {
    let parts: Vec<&str> = response.split("******").collect();
    let mut valid = Vec::new();
    for (i, p) in parts.iter().enumerate() {
        if p.trim().is_empty() {
            if i != 0 && i != parts.len() - 1 {
                return false;
            }
        } else {
            valid.push(*p);
        }
    }
    valid.len() == 2 && valid[0].trim() != valid[1].trim()
}
