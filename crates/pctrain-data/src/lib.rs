//! pctrain's data pipeline: records in Tulu, Alpaca or IFEval shape, rendered in a pseudo-code mix
//! (`nl`, `pc`, `nl-pc`, blends), through a chat template, to token ids with labels, packed into
//! rows with per-sample positions and segment ids.
//!
//! ```text
//! JSONL -> Record -> Sample (mix) -> Rendered (template, spans) -> Encoded (ids, labels) -> rows
//! ```

pub mod constraints;
pub mod error;
pub mod labels;
pub mod loader;
pub mod mix;
pub mod pack;
pub mod pipeline;
pub mod reader;
pub mod record;
pub mod template;
pub mod tokenizer;
pub mod trained_with;

pub use error::{DataError, Result};
pub use labels::{Encoded, IGNORE_INDEX};
pub use loader::{Loader, LoaderConfig, Position};
pub use mix::{Format, Mix, MixCounts, Mixer, PcJoin, Sample};
pub use pack::{PackedRow, Row};
pub use pipeline::{Pipeline, Prepared, Stats};
pub use reader::{JsonlReader, ParquetReader, RecordReader};
pub use record::{Message, Record, Role};
pub use template::{ChatTemplate, Rendered, SpecialTokens, TemplateChoice};
pub use tokenizer::{TextTokenizer, Tokens};
pub use trained_with::TrainedWith;
