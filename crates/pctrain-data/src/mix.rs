//! Training formats (`nl`, `pc`, `nl-pc`), mixes of them, and how pseudo-code joins a response.

use std::fmt;
use std::str::FromStr;

use serde::Serialize;

use crate::error::{DataError, Result};
use crate::record::{Message, Record, Role};
use pctrain_core::hash::{stable_hash, unit_interval};

/// How one sample presents a record.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
pub enum Format {
    /// The record as it is.
    #[serde(rename = "nl")]
    Nl,
    /// Each user turn with pseudo-code is replaced by that pseudo-code.
    #[serde(rename = "pc")]
    Pc,
    /// User turns unchanged; each answer to a user turn with pseudo-code is the pseudo-code, then
    /// the response, joined by the [`PcJoin`] template.
    #[serde(rename = "nl-pc")]
    NlPc,
}

impl Format {
    pub const ALL: [Format; 3] = [Format::Nl, Format::Pc, Format::NlPc];

    pub fn as_str(self) -> &'static str {
        match self {
            Format::Nl => "nl",
            Format::Pc => "pc",
            Format::NlPc => "nl-pc",
        }
    }

    fn needs_pseudo_code(self) -> bool {
        self != Format::Nl
    }
}

impl fmt::Display for Format {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Format {
    type Err = String;

    fn from_str(s: &str) -> std::result::Result<Self, String> {
        Format::ALL
            .into_iter()
            .find(|f| f.as_str() == s)
            .ok_or_else(|| format!("unknown format {s:?} (expected nl, pc or nl-pc)"))
    }
}

/// A mix: `nl`, `pc`, `nl-pc`; a weighted blend `nl:0.5,nl-pc:0.5` where each record takes one
/// entry, picked by a seeded hash of its id; `nl+nl-pc` where each record gives one sample per
/// listed format. The two combine: `nl:0.3,nl+nl-pc:0.7`.
#[derive(Debug, Clone, PartialEq)]
pub struct Mix {
    spec: String,
    /// Each entry's formats and the upper end of its share of `[0, 1)`.
    entries: Vec<(Vec<Format>, f64)>,
}

impl Mix {
    /// The formats a record with this id is rendered in.
    pub fn formats_for(&self, seed: u64, id: &str) -> &[Format] {
        if self.entries.len() == 1 {
            return &self.entries[0].0;
        }
        let u = unit_interval(stable_hash(seed, id.as_bytes()));
        self.entries
            .iter()
            .find(|(_, upper)| u < *upper)
            .unwrap_or_else(|| self.entries.last().expect("a mix has at least one entry"))
            .0
            .as_slice()
    }

    /// Whether some answers it trains on start with pseudo-code (an `nl-pc` entry): a model
    /// trained on it answers that way too.
    pub fn answers_with_pseudo_code(&self) -> bool {
        self.entries.iter().any(|(f, _)| f.contains(&Format::NlPc))
    }
}

impl fmt::Display for Mix {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.spec)
    }
}

impl FromStr for Mix {
    type Err = DataError;

    fn from_str(spec: &str) -> Result<Self> {
        let err = |message: String| DataError::Mix {
            spec: spec.to_string(),
            message,
        };
        let mut weighted = Vec::new();
        let items: Vec<&str> = spec.split(',').collect();
        for item in &items {
            let item = item.trim();
            let (formats, weight) = match item.split_once(':') {
                Some((f, w)) => {
                    let w: f64 = w
                        .trim()
                        .parse()
                        .map_err(|_| err(format!("weight {w:?} is not a number")))?;
                    if !(w.is_finite() && w > 0.0) {
                        return Err(err(format!("weight {w} must be positive")));
                    }
                    (f, w)
                }
                None => (item, 1.0),
            };
            let mut list = Vec::new();
            for f in formats.split('+') {
                let f: Format = f.trim().parse().map_err(err)?;
                if list.contains(&f) {
                    return Err(err(format!("format {f} is listed twice in {formats:?}")));
                }
                list.push(f);
            }
            weighted.push((list, weight));
        }
        if items.len() > 1 && items.iter().any(|i| !i.contains(':')) {
            return Err(err(
                "a blend gives each entry a weight, e.g. nl:0.5,nl-pc:0.5".into(),
            ));
        }
        let total: f64 = weighted.iter().map(|(_, w)| w).sum();
        let mut upper = 0.0;
        let entries = weighted
            .into_iter()
            .map(|(list, w)| {
                upper += w / total;
                (list, upper)
            })
            .collect();
        Ok(Mix {
            spec: spec.to_string(),
            entries,
        })
    }
}

/// How pseudo-code and response are joined in an `nl-pc` answer: a template with `{pseudo_code}`
/// before `{response}`. The default is a fenced python block, a blank line, then the response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PcJoin {
    prefix: String,
    middle: String,
    suffix: String,
}

impl PcJoin {
    pub const DEFAULT: &'static str = "```python\n{pseudo_code}\n```\n\n{response}";

    /// Parses a template holding `{pseudo_code}` once, then `{response}` once.
    pub fn parse(template: &str) -> Result<Self> {
        let err =
            |m: &str| DataError::Config(format!("pseudo-code join template {template:?}: {m}"));
        let [pc, resp] = ["{pseudo_code}", "{response}"];
        if template.matches(pc).count() != 1 || template.matches(resp).count() != 1 {
            return Err(err("needs {pseudo_code} and {response} exactly once each"));
        }
        let (prefix, rest) = template.split_once(pc).expect("counted above");
        let Some((middle, suffix)) = rest.split_once(resp) else {
            return Err(err("{pseudo_code} must come before {response}"));
        };
        Ok(PcJoin {
            prefix: prefix.into(),
            middle: middle.into(),
            suffix: suffix.into(),
        })
    }

    /// The assistant text of an `nl-pc` sample.
    pub fn join(&self, pseudo_code: &str, response: &str) -> String {
        format!(
            "{}{}{}{}{}",
            self.prefix,
            pseudo_code.trim_end(),
            self.middle,
            response,
            self.suffix
        )
    }

    /// Strips the pseudo-code part from a generated answer, leaving the response. Whitespace around
    /// the template's delimiters is matched loosely, since models do not copy it exactly. An answer
    /// that does not start with the template's opening is returned unchanged.
    pub fn strip<'a>(&self, answer: &'a str) -> &'a str {
        let opening = self.prefix.trim();
        if opening.is_empty() && self.middle.trim().is_empty() {
            // Nothing marks where pseudo-code ends: stripping would cut real text.
            return answer;
        }
        let body = answer.trim_start();
        let Some(after_opening) = body.strip_prefix(opening) else {
            return answer;
        };
        let closing = self.middle.trim();
        let response = if closing.is_empty() {
            match after_opening.find(self.middle.as_str()) {
                Some(i) if !self.middle.is_empty() => &after_opening[i + self.middle.len()..],
                _ => return answer,
            }
        } else {
            match after_opening.find(closing) {
                Some(i) => after_opening[i + closing.len()..].trim_start(),
                None => return answer,
            }
        };
        let suffix = self.suffix.trim();
        match response.trim_end().strip_suffix(suffix) {
            Some(r) if !suffix.is_empty() => r.trim_end(),
            _ => response,
        }
    }
}

impl Default for PcJoin {
    fn default() -> Self {
        PcJoin::parse(PcJoin::DEFAULT).expect("the default template is valid")
    }
}

/// A record rendered in one format: the messages a chat template turns into text.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    pub id: String,
    pub format: Format,
    pub messages: Vec<Message>,
}

/// What mixing did to the records, for `data stats`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct MixCounts {
    /// Records rendered as `nl` because a format of their mix needs pseudo-code they lack (once
    /// per record, however many of its renditions fell back).
    pub fallbacks_to_nl: u64,
    /// Renditions dropped by `--require-pc` because the record lacks pseudo-code.
    pub dropped_without_pc: u64,
}

/// Settings that turn records into samples.
#[derive(Debug, Clone)]
pub struct Mixer {
    pub mix: Mix,
    /// Seed of the hash that picks a blend's entry per record.
    pub seed: u64,
    /// Drop renditions that need pseudo-code the record lacks, instead of falling back to `nl`.
    pub require_pc: bool,
    pub join: PcJoin,
}

impl Mixer {
    /// The samples a record gives under this mix, in the mix's order of formats.
    pub fn samples(&self, record: &Record, counts: &mut MixCounts) -> Vec<Sample> {
        let mut out: Vec<Sample> = Vec::new();
        let mut fell_back = false;
        for &format in self.mix.formats_for(self.seed, &record.id) {
            let mut actual = format;
            if format.needs_pseudo_code() && !record.has_pseudo_code() {
                if self.require_pc {
                    counts.dropped_without_pc += 1;
                    continue;
                }
                actual = Format::Nl;
            }
            fell_back |= actual != format;
            if out.iter().any(|s| s.format == actual) {
                continue;
            }
            out.push(Sample {
                id: record.id.clone(),
                format: actual,
                messages: self.render(record, actual),
            });
        }
        counts.fallbacks_to_nl += u64::from(fell_back);
        out
    }

    fn render(&self, record: &Record, format: Format) -> Vec<Message> {
        let mut user_turn = 0;
        let mut current_pc: Option<&str> = None;
        record
            .messages
            .iter()
            .map(|m| match m.role {
                Role::User => {
                    current_pc = record.pseudo_code[user_turn].as_deref();
                    user_turn += 1;
                    match (format, current_pc) {
                        (Format::Pc, Some(pc)) => Message::new(Role::User, pc),
                        _ => m.clone(),
                    }
                }
                Role::Assistant => match (format, current_pc) {
                    (Format::NlPc, Some(pc)) => {
                        Message::new(Role::Assistant, self.join.join(pc, &m.content))
                    }
                    _ => m.clone(),
                },
                Role::System => m.clone(),
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_single_blend_and_both() {
        let m: Mix = "nl-pc".parse().unwrap();
        assert_eq!(m.formats_for(0, "x"), &[Format::NlPc]);
        let m: Mix = "nl+nl-pc".parse().unwrap();
        assert_eq!(m.formats_for(0, "x"), &[Format::Nl, Format::NlPc]);
        let m: Mix = "nl:1,pc:3".parse().unwrap();
        assert_eq!(m.entries.len(), 2);
        assert!((m.entries[0].1 - 0.25).abs() < 1e-12);
    }

    #[test]
    fn rejects_bad_mixes() {
        for bad in [
            "",
            "nl-code",
            "nl:0",
            "nl:-1",
            "nl:x",
            "nl,pc",
            "nl+nl",
            "nl:0.5,pc:nan",
            "nl:0.5,pc",
        ] {
            assert!(bad.parse::<Mix>().is_err(), "{bad} should be rejected");
        }
    }

    #[test]
    fn join_template_needs_both_placeholders_in_order() {
        assert!(PcJoin::parse("{pseudo_code}").is_err());
        assert!(PcJoin::parse("{response}\n{pseudo_code}").is_err());
        assert!(PcJoin::parse("{pseudo_code}{pseudo_code}{response}").is_err());
        let j = PcJoin::parse("<pc>{pseudo_code}</pc>\n{response}").unwrap();
        assert_eq!(j.join("f()", "hi"), "<pc>f()</pc>\nhi");
    }

    #[test]
    fn strip_inverts_join_and_tolerates_loose_whitespace() {
        let j = PcJoin::default();
        let joined = j.join("def f() -> str:\n    return 'x'\n", "The answer.");
        assert_eq!(j.strip(&joined), "The answer.");
        let loose = "  ```python\ndef f():\n    pass```\nThe answer.";
        assert_eq!(j.strip(loose), "The answer.");
        assert_eq!(j.strip("No pseudo-code here."), "No pseudo-code here.");
        let unmarked = PcJoin::parse("{pseudo_code}\n\n{response}").unwrap();
        assert_eq!(
            unmarked.strip("Para one.\n\nPara two."),
            "Para one.\n\nPara two."
        );
        let tagged = PcJoin::parse("<pc>{pseudo_code}</pc>{response}</end>").unwrap();
        assert_eq!(tagged.strip("<pc>x = 1</pc> Hello </end>"), "Hello");
    }
}
