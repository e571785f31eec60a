//! Token ids and labels for one sample. Labels are aligned with the ids, as in transformers (the
//! model shifts them): a trained token keeps its id, every other position is [`IGNORE_INDEX`].

use std::ops::Range;

use serde::Serialize;

use crate::mix::Format;

/// The label of a position that is not trained.
pub const IGNORE_INDEX: i64 = -100;

/// One tokenised sample.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Encoded {
    pub id: String,
    pub format: Format,
    pub input_ids: Vec<u32>,
    /// Whether each position is trained (its label is its id).
    pub trained: Vec<bool>,
    /// Whether the sample was cut at the sequence length.
    pub truncated: bool,
}

impl Encoded {
    pub fn len(&self) -> usize {
        self.input_ids.len()
    }

    pub fn is_empty(&self) -> bool {
        self.input_ids.is_empty()
    }

    /// Labels aligned with `input_ids`.
    pub fn labels(&self) -> Vec<i64> {
        self.input_ids
            .iter()
            .zip(&self.trained)
            .map(|(&id, &t)| if t { i64::from(id) } else { IGNORE_INDEX })
            .collect()
    }

    pub fn trained_tokens(&self) -> usize {
        self.trained.iter().filter(|&&t| t).count()
    }
}

/// Marks the tokens whose byte range overlaps a trained span. A token that straddles a span's edge
/// (a leading space merged with the first word, say) is trained, since it carries trained text.
/// `spans` are sorted and disjoint; `offsets` are in token order.
pub fn trained_mask(offsets: &[(usize, usize)], spans: &[Range<usize>]) -> Vec<bool> {
    offsets
        .iter()
        .map(|&(start, end)| {
            // The first span that ends after this token starts.
            let s = spans.partition_point(|span| span.end <= start);
            spans.get(s).is_some_and(|span| {
                if start == end {
                    span.start <= start
                } else {
                    span.start < end
                }
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn overlap_marks_straddling_tokens() {
        // text: "ab cd|ef" with a span over "cd" (bytes 3..5)
        let offsets = [(0, 2), (2, 5), (5, 6), (6, 8)];
        assert_eq!(
            trained_mask(&offsets, std::slice::from_ref(&(3..5))),
            vec![false, true, false, false]
        );
        assert_eq!(
            trained_mask(&offsets, &[0..1, 6..8]),
            vec![true, false, false, true]
        );
        assert_eq!(trained_mask(&offsets, &[]), vec![false; 4]);
    }

    #[test]
    fn labels_follow_the_mask() {
        let e = Encoded {
            id: "x".into(),
            format: Format::Nl,
            input_ids: vec![5, 6, 7],
            trained: vec![false, true, true],
            truncated: false,
        };
        assert_eq!(e.labels(), vec![IGNORE_INDEX, 6, 7]);
        assert_eq!(e.trained_tokens(), 2);
    }
}
