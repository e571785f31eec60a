//! From data files to tokenised samples: read, mix, render, tokenise, label, truncate. Streams
//! record by record; only what the caller keeps stays in memory.

use std::collections::BTreeMap;
use std::ops::{ControlFlow, Range};
use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::error::{DataError, Result};
use crate::labels::{trained_mask, Encoded};
use crate::mix::{MixCounts, Mixer};
use crate::reader::RecordReader;
use crate::record::Record;
use crate::template::ChatTemplate;
use crate::tokenizer::TextTokenizer;

/// Everything that turns records into training samples.
#[derive(Debug)]
pub struct Pipeline {
    pub mixer: Mixer,
    pub template: ChatTemplate,
    pub tokenizer: TextTokenizer,
    /// Samples longer than this many tokens are cut.
    pub seq_len: usize,
    /// Skip malformed records (counted) instead of failing.
    pub skip_invalid: bool,
    /// Threads that prepare records (rendering and tokenising); 1 prepares on the caller's.
    pub threads: usize,
}

/// A tokenised sample with the text it came from, for inspection.
#[derive(Debug, Clone)]
pub struct Prepared {
    pub encoded: Encoded,
    /// The rendered conversation.
    pub text: String,
    /// Byte ranges of `text` that are trained.
    pub spans: Vec<Range<usize>>,
    /// Byte range of each kept token in `text`.
    pub offsets: Vec<(usize, usize)>,
}

/// Counts over a pass through the data, for `data stats`.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Stats {
    /// Records read (valid ones).
    pub records: u64,
    /// Malformed records skipped by `--skip-invalid`.
    pub invalid_skipped: u64,
    /// Samples kept, by format.
    pub samples: BTreeMap<String, u64>,
    #[serde(flatten)]
    pub mix: MixCounts,
    /// Samples dropped because no trained token was left (after truncation, or none to begin with).
    pub dropped_untrained: u64,
    /// Samples cut at the sequence length.
    pub truncated: u64,
    /// Tokens of the kept samples.
    pub tokens: u64,
    /// Trained tokens of the kept samples.
    pub trained_tokens: u64,
}

impl Stats {
    pub fn sample_count(&self) -> u64 {
        self.samples.values().sum()
    }
}

impl Pipeline {
    /// Validates settings that do not depend on the data.
    pub fn new(
        mixer: Mixer,
        template: ChatTemplate,
        tokenizer: TextTokenizer,
        seq_len: usize,
        skip_invalid: bool,
    ) -> Result<Self> {
        if !(2..=MAX_SEQ_LEN).contains(&seq_len) {
            return Err(DataError::Config(format!(
                "sequence length {seq_len} is out of range (2 to {MAX_SEQ_LEN} tokens)"
            )));
        }
        if tokenizer.special.eos.is_none() {
            tracing::warn!("the tokenizer has no EOS token: answers will not be trained to stop");
        }
        let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
        Ok(Pipeline {
            mixer,
            template,
            tokenizer,
            seq_len,
            skip_invalid,
            threads,
        })
    }

    /// Runs through `files` in order (a hub dataset, `owner/name[@revision][:files]`, as its
    /// files), handing each kept sample to `visit` until it breaks. Records are prepared in
    /// parallel, a batch at a time, and visited in file order.
    pub fn run(
        &self,
        files: &[PathBuf],
        mut visit: impl FnMut(Prepared) -> ControlFlow<()>,
    ) -> Result<Stats> {
        let mut stats = Stats::default();
        for path in &pctrain_hub::data_files(files)? {
            let mut reader = RecordReader::open(path)?;
            loop {
                // Each record with its line.
                let mut batch: Vec<(u64, Result<Record>)> = Vec::with_capacity(BATCH_RECORDS);
                while batch.len() < BATCH_RECORDS {
                    match reader.next() {
                        Some(r) => batch.push((reader.line(), r)),
                        None => break,
                    }
                }
                if batch.is_empty() {
                    break;
                }
                let prepared = self.prepare_batch(&batch);
                for ((line, record), prepared) in batch.into_iter().zip(prepared) {
                    let outcome = match (record, prepared) {
                        (Err(e), _) => Err(e),
                        (Ok(_), Some(r)) => r.map_err(|e| at_line(path, line, e)),
                        (Ok(_), None) => unreachable!("every valid record is prepared"),
                    };
                    let (samples, counts) = match outcome {
                        Ok(s) => s,
                        Err(e) if self.skip_invalid && e.is_invalid_record() => {
                            tracing::warn!("skipped: {e}");
                            stats.invalid_skipped += 1;
                            continue;
                        }
                        Err(e) => return Err(e),
                    };
                    stats.records += 1;
                    stats.mix.fallbacks_to_nl += counts.mix.fallbacks_to_nl;
                    stats.mix.dropped_without_pc += counts.mix.dropped_without_pc;
                    stats.dropped_untrained += counts.dropped_untrained;
                    for p in samples {
                        *stats
                            .samples
                            .entry(p.encoded.format.as_str().to_string())
                            .or_default() += 1;
                        stats.tokens += p.encoded.len() as u64;
                        stats.trained_tokens += p.encoded.trained_tokens() as u64;
                        stats.truncated += u64::from(p.encoded.truncated);
                        if visit(p).is_break() {
                            return Ok(stats);
                        }
                    }
                }
            }
        }
        Ok(stats)
    }

    /// Every kept sample of `files`, without the text.
    pub fn encode_all(&self, files: &[PathBuf]) -> Result<(Vec<Encoded>, Stats)> {
        let mut out = Vec::new();
        let stats = self.run(files, |p| {
            out.push(p.encoded);
            ControlFlow::Continue(())
        })?;
        Ok((out, stats))
    }

    /// Prepares the valid records of a batch on up to `threads` threads; `None` for invalid ones.
    fn prepare_batch(&self, batch: &[(u64, Result<Record>)]) -> Vec<Option<Result<Prepare>>> {
        let threads = self.threads.clamp(1, batch.len().max(1));
        let work = |items: &[(u64, Result<Record>)]| -> Vec<Option<Result<Prepare>>> {
            items
                .iter()
                .map(|(_, r)| r.as_ref().ok().map(|record| self.prepare(record)))
                .collect()
        };
        if threads == 1 {
            return work(batch);
        }
        let chunk = batch.len().div_ceil(threads);
        std::thread::scope(|scope| {
            let handles: Vec<_> = batch
                .chunks(chunk)
                .map(|items| scope.spawn(move || work(items)))
                .collect();
            handles
                .into_iter()
                .flat_map(|h| h.join().unwrap_or_else(|p| std::panic::resume_unwind(p)))
                .collect()
        })
    }

    /// The samples one record gives; samples left with no trained token are dropped (counted).
    pub fn prepare(&self, record: &Record) -> Result<Prepare> {
        let mut counts = PrepareCounts::default();
        let samples = self.mixer.samples(record, &mut counts.mix);
        let mut out = Vec::with_capacity(samples.len());
        for sample in samples {
            let rendered = self.template.render_with_spans(
                &sample.id,
                &sample.messages,
                &self.tokenizer.special,
            )?;
            let mut tokens = self.tokenizer.encode(&rendered.text)?;
            let truncated = tokens.ids.len() > self.seq_len;
            tokens.ids.truncate(self.seq_len);
            tokens.offsets.truncate(self.seq_len);
            let trained = trained_mask(&tokens.offsets, &rendered.spans);
            if !trained.contains(&true) {
                counts.dropped_untrained += 1;
                continue;
            }
            out.push(Prepared {
                encoded: Encoded {
                    id: sample.id,
                    format: sample.format,
                    input_ids: tokens.ids,
                    trained,
                    truncated,
                },
                text: rendered.text,
                spans: rendered.spans,
                offsets: tokens.offsets,
            });
        }
        Ok((out, counts))
    }
}

/// The longest sequence length accepted (1M tokens, beyond any model pctrain trains).
pub const MAX_SEQ_LEN: usize = 1 << 20;

/// Records read and prepared together; large enough to keep every thread busy.
const BATCH_RECORDS: usize = 512;

/// What preparing one record gives: its samples and what was dropped on the way.
pub type Prepare = (Vec<Prepared>, PrepareCounts);

/// Counts from preparing one record.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PrepareCounts {
    pub mix: MixCounts,
    /// Samples left without a trained token.
    pub dropped_untrained: u64,
}

/// Gives a sample's error the file and line of its record.
fn at_line(path: &Path, line: u64, e: DataError) -> DataError {
    match e {
        DataError::Record { .. } => e,
        other => DataError::Record {
            path: path.to_path_buf(),
            line,
            message: other.to_string(),
        },
    }
}
