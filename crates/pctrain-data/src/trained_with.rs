//! `pctrain.json`: what a model folder or adapter trained by pctrain says of its training, so that
//! its answers can be read as they were trained (the pseudo-code they start with stripped).

use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::error::{DataError, Result};
use crate::mix::{Mix, PcJoin};

/// What a model folder or adapter trained by pctrain says of its training (`pctrain.json`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrainedWith {
    /// The mix (`nl-pc`, `nl:0.5,nl-pc:0.5`, ...).
    pub mix: String,
    /// The template joining pseudo-code and response.
    pub pc_template: String,
}

impl TrainedWith {
    pub const FILE: &'static str = "pctrain.json";

    /// `pctrain.json` of `dir`, if it has one.
    pub fn read(dir: &Path) -> Result<Option<TrainedWith>> {
        let path = dir.join(Self::FILE);
        if !path.is_file() {
            return Ok(None);
        }
        let err = |message: String| DataError::File {
            path: path.clone(),
            message,
        };
        let text = std::fs::read_to_string(&path).map_err(|e| err(e.to_string()))?;
        serde_json::from_str(&text)
            .map(Some)
            .map_err(|e| err(format!("malformed: {e}")))
    }

    /// The join to strip from answers: the pc template when the mix trains answers that start
    /// with pseudo-code.
    pub fn strip(&self) -> Result<Option<PcJoin>> {
        let mix: Mix = self.mix.parse()?;
        Ok(if mix.answers_with_pseudo_code() {
            Some(PcJoin::parse(&self.pc_template)?)
        } else {
            None
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_mixes_with_nl_pc_answers_strip() {
        let with = |mix: &str| TrainedWith {
            mix: mix.into(),
            pc_template: PcJoin::DEFAULT.into(),
        };
        assert!(with("nl").strip().unwrap().is_none());
        assert!(with("pc").strip().unwrap().is_none());
        assert!(with("nl:0.7,nl-pc:0.3").strip().unwrap().is_some());
        assert!(with("nl+nl-pc").strip().unwrap().is_some());
    }
}
