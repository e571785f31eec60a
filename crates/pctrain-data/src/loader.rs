//! Epochs of packed rows: a seeded shuffle per epoch, packing, and a position `(epoch, index)` from
//! which iteration resumes exactly.

use serde::{Deserialize, Serialize};

use crate::error::{DataError, Result};
use crate::labels::Encoded;
use crate::pack::{one_per_row, pack_best_fit, PackedRow, Row};
use pctrain_core::hash::{stable_hash, SplitMix64};

/// Where iteration stands: the next row to yield is row `index` of epoch `epoch` (both from 0).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Position {
    pub epoch: u64,
    pub index: u64,
}

/// How samples become rows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoaderConfig {
    /// Tokens per row.
    pub seq_len: usize,
    /// Pack several samples per row (else one sample a row).
    pub packing: bool,
    /// Shuffle samples (and rows) each epoch.
    pub shuffle: bool,
    pub seed: u64,
    /// Epochs to run; iteration ends after the last.
    pub epochs: u64,
    /// Samples considered together by best-fit packing.
    pub pack_window: usize,
}

impl Default for LoaderConfig {
    fn default() -> Self {
        LoaderConfig {
            seq_len: 2048,
            packing: true,
            shuffle: true,
            seed: 0,
            epochs: 1,
            pack_window: 4096,
        }
    }
}

/// The rows of one epoch, in the order they are yielded.
pub fn epoch_rows(samples: &[Encoded], cfg: &LoaderConfig, epoch: u64) -> Vec<Row> {
    let lengths: Vec<usize> = samples.iter().map(Encoded::len).collect();
    let mut order: Vec<usize> = (0..samples.len()).collect();
    let mut rng = SplitMix64::new(stable_hash(cfg.seed, &epoch.to_le_bytes()));
    if cfg.shuffle {
        rng.shuffle(&mut order);
    }
    if !cfg.packing {
        return one_per_row(&lengths, &order);
    }
    let mut rows = pack_best_fit(&lengths, &order, cfg.seq_len, cfg.pack_window);
    if cfg.shuffle {
        // Best-fit decreasing puts long samples first in each window; shuffling rows undoes that.
        rng.shuffle(&mut rows);
    }
    rows
}

/// Share of row tokens that hold sample tokens rather than padding, in `[0, 1]`.
pub fn packing_efficiency(rows: &[Row], seq_len: usize) -> f64 {
    if rows.is_empty() {
        return 0.0;
    }
    let used: usize = rows.iter().map(|r| r.tokens).sum();
    used as f64 / (rows.len() * seq_len) as f64
}

/// Yields packed rows epoch after epoch, from a position.
pub struct Loader<'a> {
    samples: &'a [Encoded],
    cfg: LoaderConfig,
    pad_id: u32,
    pos: Position,
    /// Rows of `pos.epoch`, built when that epoch starts.
    rows: Option<Vec<Row>>,
}

impl<'a> Loader<'a> {
    /// Starts at `pos` (use `Position::default()` for the beginning). Every sample must fit a row.
    pub fn new(
        samples: &'a [Encoded],
        cfg: LoaderConfig,
        pad_id: u32,
        pos: Position,
    ) -> Result<Self> {
        if let Some(s) = samples.iter().find(|s| s.len() > cfg.seq_len) {
            return Err(DataError::Config(format!(
                "sample {} has {} tokens, more than the row length {}",
                s.id,
                s.len(),
                cfg.seq_len
            )));
        }
        let mut loader = Loader {
            samples,
            cfg,
            pad_id,
            pos,
            rows: None,
        };
        let per_epoch = loader.current_rows().len() as u64;
        if pos.index > per_epoch {
            return Err(DataError::Config(format!(
                "position {}:{} is past the end of epoch {} ({per_epoch} rows)",
                pos.epoch, pos.index, pos.epoch
            )));
        }
        Ok(loader)
    }

    /// The position of the next row.
    pub fn position(&self) -> Position {
        self.pos
    }

    /// Rows in the current epoch.
    pub fn rows_in_epoch(&mut self) -> usize {
        self.current_rows().len()
    }

    /// The rows of `pos.epoch`, built on first use.
    fn current_rows(&mut self) -> &[Row] {
        if self.rows.is_none() {
            self.rows = Some(epoch_rows(self.samples, &self.cfg, self.pos.epoch));
        }
        self.rows.as_deref().expect("built above")
    }
}

impl Iterator for Loader<'_> {
    type Item = (Position, PackedRow);

    fn next(&mut self) -> Option<Self::Item> {
        loop {
            if self.pos.epoch >= self.cfg.epochs {
                return None;
            }
            let index = self.pos.index as usize;
            if let Some(row) = self.current_rows().get(index).cloned() {
                let at = self.pos;
                self.pos.index += 1;
                let packed = PackedRow::build(self.samples, &row, self.cfg.seq_len, self.pad_id);
                return Some((at, packed));
            }
            if self.samples.is_empty() {
                return None;
            }
            self.pos = Position {
                epoch: self.pos.epoch + 1,
                index: 0,
            };
            self.rows = None;
        }
    }
}
