//! Where the assistant turns are in a rendered conversation.
//!
//! The template is rendered twice: with the real messages, and with each assistant content
//! replaced by a unique sentinel. The sentinel rendering splits into the template's own text
//! around each assistant turn; walking the real rendering with those pieces gives each assistant
//! content's exact byte range, whatever the template adds around it. Templates that change the
//! content in ways other than trimming fall back to an ordered search for the content.

use std::ops::Range;

use super::{ChatTemplate, SpecialTokens};
use crate::error::{DataError, Result};
use crate::record::{Message, Role};

/// A conversation rendered for training.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rendered {
    pub text: String,
    /// Byte ranges of `text` that are trained: each assistant content and the end-of-turn or EOS
    /// token right after it. Sorted, disjoint.
    pub spans: Vec<Range<usize>>,
}

pub(super) fn render_with_spans(
    template: &ChatTemplate,
    id: &str,
    messages: &[Message],
    special: &SpecialTokens,
) -> Result<Rendered> {
    let text = template.render(messages, false, special)?;
    let contents: Vec<&str> = messages
        .iter()
        .filter(|m| m.role == Role::Assistant)
        .map(|m| m.content.as_str())
        .collect();
    if contents.is_empty() {
        return Ok(Rendered {
            text,
            spans: Vec::new(),
        });
    }
    let pieces = sentinel_pieces(template, messages, special)?;
    let content_spans = pieces
        .and_then(|p| walk_pieces(&text, &p, &contents))
        .or_else(|| ordered_search(&text, &contents))
        .ok_or_else(|| DataError::Sample {
            id: id.to_string(),
            message: format!(
                "chat template {} does not render the assistant's text verbatim, so the trained \
                 span cannot be found",
                template.name()
            ),
        })?;
    let closing = template.closing_tokens(special);
    let spans = content_spans
        .into_iter()
        .map(|span| span.start..extend_to_closing(&text, span.end, &closing))
        .collect();
    Ok(Rendered { text, spans })
}

fn sentinel(i: usize) -> String {
    format!("\u{E000}pctrain-assistant-{i}\u{E001}")
}

/// The template's text between assistant contents: `n + 1` pieces for `n` assistant turns, or
/// `None` when the template does not show each sentinel exactly once, in order.
fn sentinel_pieces(
    template: &ChatTemplate,
    messages: &[Message],
    special: &SpecialTokens,
) -> Result<Option<Vec<String>>> {
    let mut i = 0;
    let marked: Vec<Message> = messages
        .iter()
        .map(|m| match m.role {
            Role::Assistant => {
                i += 1;
                Message::new(Role::Assistant, sentinel(i - 1))
            }
            _ => m.clone(),
        })
        .collect();
    let Ok(rendered) = template.render(&marked, false, special) else {
        return Ok(None);
    };
    let mut pieces = Vec::with_capacity(i + 1);
    let mut rest = rendered.as_str();
    for k in 0..i {
        let s = sentinel(k);
        if rest.matches(s.as_str()).count() != 1 {
            return Ok(None);
        }
        let (before, after) = rest.split_once(s.as_str()).expect("counted above");
        pieces.push(before.to_string());
        rest = after;
    }
    pieces.push(rest.to_string());
    Ok(Some(pieces))
}

/// Walks `text` with the template's pieces, taking each content as written or trimmed.
fn walk_pieces(text: &str, pieces: &[String], contents: &[&str]) -> Option<Vec<Range<usize>>> {
    let mut pos = 0;
    let mut spans = Vec::with_capacity(contents.len());
    for (i, content) in contents.iter().enumerate() {
        pos += pieces[i].len();
        if !text.get(..pos)?.ends_with(pieces[i].as_str()) {
            return None;
        }
        let next = &pieces[i + 1];
        let last = i + 1 == contents.len();
        let c = candidates(content).into_iter().find(|c| {
            let Some(after) = text[pos..].strip_prefix(c) else {
                return false;
            };
            if last {
                after == next
            } else {
                after.starts_with(next.as_str())
            }
        })?;
        spans.push(pos..pos + c.len());
        pos += c.len();
    }
    Some(spans)
}

/// Finds each content (as written or trimmed) after the previous one. A content that occurs more
/// than once there is ambiguous (the user may have quoted it): no spans then.
fn ordered_search(text: &str, contents: &[&str]) -> Option<Vec<Range<usize>>> {
    let mut pos = 0;
    let mut spans = Vec::with_capacity(contents.len());
    for content in contents {
        let (start, c) = candidates(content)
            .into_iter()
            .filter(|c| !c.is_empty())
            .find_map(|c| text[pos..].find(c).map(|i| (pos + i, c)))?;
        // Another occurrence may overlap this one: look from its second character on.
        let second = start + c.chars().next().map_or(1, char::len_utf8);
        if text[second..].contains(c) {
            return None;
        }
        spans.push(start..start + c.len());
        pos = start + c.len();
    }
    Some(spans)
}

fn candidates(content: &str) -> Vec<&str> {
    let mut c = vec![
        content,
        content.trim(),
        content.trim_start(),
        content.trim_end(),
    ];
    c.dedup();
    c
}

/// Extends a content span over the closing token that follows it, spaces allowed between.
fn extend_to_closing(text: &str, end: usize, closing: &[String]) -> usize {
    let rest = &text[end..];
    let after_spaces = rest.trim_start_matches(' ');
    let skipped = rest.len() - after_spaces.len();
    closing
        .iter()
        .find(|tok| after_spaces.starts_with(tok.as_str()))
        .map_or(end, |tok| end + skipped + tok.len())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn special() -> SpecialTokens {
        SpecialTokens {
            bos: Some("<s>".into()),
            eos: Some("</s>".into()),
            ..Default::default()
        }
    }

    fn conv(turns: &[(Role, &str)]) -> Vec<Message> {
        turns.iter().map(|(r, c)| Message::new(*r, *c)).collect()
    }

    #[test]
    fn spans_cover_content_and_eos_even_when_the_user_repeats_the_answer() {
        let t = ChatTemplate::from_builtin(super::super::builtin("tulu").unwrap()).unwrap();
        let msgs = conv(&[(Role::User, "Say: yes"), (Role::Assistant, "yes")]);
        let r = t.render_with_spans("x", &msgs, &special()).unwrap();
        assert_eq!(r.text, "<s><|user|>\nSay: yes\n<|assistant|>\nyes</s>");
        assert_eq!(r.spans.len(), 1);
        assert_eq!(&r.text[r.spans[0].clone()], "yes</s>");
    }

    #[test]
    fn trimmed_content_is_found() {
        let t = ChatTemplate::from_builtin(super::super::builtin("llama3").unwrap()).unwrap();
        let msgs = conv(&[(Role::User, "hi"), (Role::Assistant, "  hello \n")]);
        let r = t.render_with_spans("x", &msgs, &special()).unwrap();
        assert_eq!(&r.text[r.spans[0].clone()], "hello<|eot_id|>");
    }

    #[test]
    fn a_template_that_rewrites_content_falls_back_or_fails_clearly() {
        let upper = "{% for m in messages %}{{ m.content | upper }};{% endfor %}";
        let t = ChatTemplate::new("upper", upper, &[]).unwrap();
        let msgs = conv(&[(Role::User, "q"), (Role::Assistant, "abc")]);
        let err = t.render_with_spans("rec-1", &msgs, &special()).unwrap_err();
        assert!(err.to_string().contains("rec-1"), "{err}");
        let msgs = conv(&[(Role::User, "q"), (Role::Assistant, "ABC")]);
        let r = t.render_with_spans("rec-2", &msgs, &special()).unwrap();
        assert_eq!(&r.text[r.spans[0].clone()], "ABC");
        // The answer also stands in the user's turn: ambiguous, so refused rather than guessed.
        let msgs = conv(&[(Role::User, "SAY ABC"), (Role::Assistant, "ABC")]);
        assert!(t.render_with_spans("rec-3", &msgs, &special()).is_err());
        // An answer that starts with a character of several bytes.
        for answer in ["ÉTÉ", "日本", "🙂OK"] {
            let msgs = conv(&[(Role::User, "q"), (Role::Assistant, answer)]);
            let r = t.render_with_spans("rec-4", &msgs, &special()).unwrap();
            assert_eq!(&r.text[r.spans[0].clone()], answer);
        }
    }
}
