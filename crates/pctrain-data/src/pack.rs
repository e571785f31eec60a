//! Packing samples into rows of a fixed length, and the tensors of a row.
//!
//! Best-fit decreasing within windows of samples: each sample goes into the open row with the
//! least room that still fits it. Windows keep the cost bounded and the epoch's shuffle visible.

use std::collections::BTreeMap;

use crate::labels::{Encoded, IGNORE_INDEX};

/// Which samples fill one row, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Row {
    /// Indices into the dataset.
    pub samples: Vec<usize>,
    /// Tokens used (at most the sequence length).
    pub tokens: usize,
}

/// Packs `order` (dataset indices) into rows of `seq_len` tokens, best-fit decreasing within
/// consecutive windows of `window` samples. Every sample must fit (`len <= seq_len`).
pub fn pack_best_fit(
    lengths: &[usize],
    order: &[usize],
    seq_len: usize,
    window: usize,
) -> Vec<Row> {
    let mut rows = Vec::new();
    for chunk in order.chunks(window.max(1)) {
        let mut chunk = chunk.to_vec();
        // Longest first; ties keep their shuffled order.
        chunk.sort_by_key(|&i| std::cmp::Reverse(lengths[i]));
        let first = rows.len();
        // Open rows by remaining room: room -> row indices with that room.
        let mut by_room: BTreeMap<usize, Vec<usize>> = BTreeMap::new();
        for i in chunk {
            let len = lengths[i];
            assert!(
                len <= seq_len,
                "sample of {len} tokens exceeds the row length {seq_len}"
            );
            let fit = by_room.range(len..).next().map(|(&room, _)| room);
            let r = match fit {
                Some(room) => {
                    let list = by_room.get_mut(&room).expect("key from range");
                    let r = list.pop().expect("non-empty list");
                    if list.is_empty() {
                        by_room.remove(&room);
                    }
                    r
                }
                None => {
                    rows.push(Row {
                        samples: Vec::new(),
                        tokens: 0,
                    });
                    rows.len() - 1
                }
            };
            rows[r].samples.push(i);
            rows[r].tokens += len;
            let room = seq_len - rows[r].tokens;
            if room > 0 {
                by_room.entry(room).or_default().push(r);
            }
        }
        debug_assert!(rows[first..].iter().all(|r| r.tokens <= seq_len));
    }
    rows
}

/// One sample per row, in `order`.
pub fn one_per_row(lengths: &[usize], order: &[usize]) -> Vec<Row> {
    order
        .iter()
        .map(|&i| Row {
            samples: vec![i],
            tokens: lengths[i],
        })
        .collect()
}

/// The tensors of one row, each `seq_len` long.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PackedRow {
    pub input_ids: Vec<u32>,
    /// Aligned with `input_ids`; [`IGNORE_INDEX`] where not trained and on padding.
    pub labels: Vec<i64>,
    /// Position within its sample, restarting at 0 for each sample; 0 on padding.
    pub position_ids: Vec<u32>,
    /// 1-based sample number within the row; 0 on padding. Attention never crosses segments.
    pub segment_ids: Vec<u32>,
}

impl PackedRow {
    /// Lays out `row`'s samples one after another and pads to `seq_len` with `pad_id`.
    pub fn build(samples: &[Encoded], row: &Row, seq_len: usize, pad_id: u32) -> PackedRow {
        let mut out = PackedRow {
            input_ids: Vec::with_capacity(seq_len),
            labels: Vec::with_capacity(seq_len),
            position_ids: Vec::with_capacity(seq_len),
            segment_ids: Vec::with_capacity(seq_len),
        };
        for (seg, &i) in row.samples.iter().enumerate() {
            let s = &samples[i];
            out.input_ids.extend_from_slice(&s.input_ids);
            out.labels.extend(s.labels());
            out.position_ids.extend(0..s.len() as u32);
            out.segment_ids
                .extend(std::iter::repeat_n(seg as u32 + 1, s.len()));
        }
        let pad = seq_len.saturating_sub(out.input_ids.len());
        out.input_ids.extend(std::iter::repeat_n(pad_id, pad));
        out.labels.extend(std::iter::repeat_n(IGNORE_INDEX, pad));
        out.position_ids.extend(std::iter::repeat_n(0, pad));
        out.segment_ids.extend(std::iter::repeat_n(0, pad));
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn best_fit_fills_rows_and_keeps_every_sample_once() {
        let lengths = [7, 3, 5, 2, 1, 4, 6];
        let order: Vec<usize> = (0..lengths.len()).collect();
        let rows = pack_best_fit(&lengths, &order, 10, 64);
        let mut seen: Vec<usize> = rows.iter().flat_map(|r| r.samples.clone()).collect();
        seen.sort();
        assert_eq!(seen, order);
        for r in &rows {
            assert!(r.tokens <= 10);
            assert_eq!(
                r.tokens,
                r.samples.iter().map(|&i| lengths[i]).sum::<usize>()
            );
        }
        // 28 tokens fit in 3 rows of 10.
        assert_eq!(rows.len(), 3);
    }

    #[test]
    fn windows_bound_packing() {
        let lengths = [5; 8];
        let order: Vec<usize> = (0..8).collect();
        assert_eq!(pack_best_fit(&lengths, &order, 10, 3).len(), 5);
        assert_eq!(pack_best_fit(&lengths, &order, 10, 8).len(), 4);
    }
}
