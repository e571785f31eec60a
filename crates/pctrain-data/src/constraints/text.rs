//! The text measures IFEval's checks rest on: words, sentences, tokens, letter case and the
//! language of a response, each as the reference evaluation measures it (Python's `str`
//! methods, NLTK's tokenizers, `langdetect`), from maintained crates where one fits.

use std::sync::OnceLock;

use langdetect::{DetectorFactory, Seed};
use regex::Regex;

/// Words as NLTK's `RegexpTokenizer(r"\w+")` finds them.
pub fn count_words(text: &str) -> usize {
    static WORD: OnceLock<Regex> = OnceLock::new();
    WORD.get_or_init(|| Regex::new(r"\w+").expect("a valid pattern"))
        .find_iter(text)
        .count()
}

/// Sentences, by `sentencex`'s English rules (the reference uses NLTK's Punkt English model;
/// see the module's tests for the cases it handles alike).
pub fn count_sentences(text: &str) -> usize {
    sentencex::segment("en", text)
        .iter()
        .filter(|s| !s.trim().is_empty())
        .count()
}

/// Tokens as NLTK's `word_tokenize` splits English: on white space, with leading and trailing
/// punctuation split off and the clitics `n't`, `'s`, `'re`, `'ve`, `'ll`, `'d`, `'m` separated.
pub fn word_tokens(text: &str) -> Vec<&str> {
    const CLITICS: [&str; 7] = ["n't", "'s", "'re", "'ve", "'ll", "'d", "'m"];
    let mut out = Vec::new();
    for word in text.split_whitespace() {
        let start = word.len() - word.trim_start_matches(is_split_punct).len();
        let core = word[start..].trim_end_matches(is_split_punct);
        let end = start + core.len();
        out.extend(
            word[..start]
                .char_indices()
                .map(|(i, c)| &word[i..i + c.len_utf8()]),
        );
        if !core.is_empty() {
            let lower = core.to_lowercase();
            match CLITICS
                .iter()
                .find(|c| lower.ends_with(*c) && lower.len() > c.len())
            {
                Some(c) => {
                    let cut = core.len() - c.len();
                    out.push(&core[..cut]);
                    out.push(&core[cut..]);
                }
                None => out.push(core),
            }
        }
        out.extend(
            word[end..]
                .char_indices()
                .map(|(i, c)| &word[end + i..end + i + c.len_utf8()]),
        );
    }
    out
}

/// Punctuation `word_tokenize` splits off a word's ends.
fn is_split_punct(c: char) -> bool {
    matches!(
        c,
        '.' | ','
            | ';'
            | ':'
            | '!'
            | '?'
            | '"'
            | '('
            | ')'
            | '['
            | ']'
            | '{'
            | '}'
            | '`'
            | '\''
            | '“'
            | '”'
            | '‘'
            | '’'
            | '…'
    )
}

/// Python's `str.isupper()`: some cased character, and none of them lowercase.
pub fn is_upper(text: &str) -> bool {
    text.chars().any(char::is_uppercase) && !text.chars().any(char::is_lowercase)
}

/// Python's `str.islower()`: some cased character, and none of them uppercase.
pub fn is_lower(text: &str) -> bool {
    text.chars().any(char::is_lowercase) && !text.chars().any(char::is_uppercase)
}

/// The language of `text` as an ISO 639-1 code (`zh-cn`, `zh-tw` for Chinese), by the
/// `langdetect` crate, which reproduces Python's `langdetect` bit for bit; seeded with 0, so the
/// same text always gets the same answer. `None` when the text has nothing to detect from
/// (the reference counts such an instruction as followed).
pub fn detect_language(text: &str) -> Option<String> {
    static FACTORY: OnceLock<DetectorFactory> = OnceLock::new();
    let factory = FACTORY.get_or_init(|| {
        let mut f = DetectorFactory::builtin().clone();
        f.seed = Seed::Int(0);
        f
    });
    factory.detect(text).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn words_tokens_and_case_follow_the_reference() {
        assert_eq!(count_words("Hello, world! It's 2024 — naïve café."), 7);
        assert_eq!(
            word_tokens("\"HELLO, WORLD!\" I DON'T (know)."),
            ["\"", "HELLO", ",", "WORLD", "!", "\"", "I", "DO", "N'T", "(", "know", ")", "."]
        );
        assert!(is_upper("HELLO, 123 WORLD") && !is_upper("Hello") && !is_upper("123"));
        assert!(is_lower("hello, 123 world") && !is_lower("hello World") && !is_lower("..."));
    }

    #[test]
    fn sentences_are_counted_past_abbreviations_and_numbers() {
        assert_eq!(count_sentences("One. Two? Three!"), 3);
        assert_eq!(count_sentences("Mr. Smith paid 3.50 dollars. He left."), 2);
        assert_eq!(count_sentences(""), 0);
    }

    #[test]
    fn languages_are_told_apart_and_repeat() {
        assert_eq!(
            detect_language("This is a sentence in English, plainly.").as_deref(),
            Some("en")
        );
        assert_eq!(
            detect_language("Ceci est une phrase écrite en français.").as_deref(),
            Some("fr")
        );
        assert_eq!(
            detect_language("Это предложение написано по-русски.").as_deref(),
            Some("ru")
        );
        let text = "Mixed words, palabras y mots";
        assert_eq!(detect_language(text), detect_language(text));
        assert_eq!(detect_language("12345 !!!"), None);
    }
}
