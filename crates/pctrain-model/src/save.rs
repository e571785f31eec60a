//! Writing safetensors the way transformers and PEFT expect them (metadata `{"format": "pt"}`),
//! atomically, so a crash leaves either the old file or the new one.

use std::collections::HashMap;
use std::path::Path;

use candle_core::{Device, Tensor};

use crate::error::{ModelError, Result};

/// Writes `tensors` to `path` with `{"format": "pt"}` metadata, atomically.
pub fn write_safetensors(path: &Path, tensors: &[(String, Tensor)]) -> Result<()> {
    let metadata = HashMap::from([("format".to_string(), "pt".to_string())]);
    // On the CPU, so that a copy from a GPU that fails is an error here.
    let contiguous: Vec<(String, Tensor)> = tensors
        .iter()
        .map(|(n, t)| Ok((n.clone(), t.to_device(&Device::Cpu)?.contiguous()?)))
        .collect::<Result<_>>()?;
    let bytes = safetensors::serialize(
        contiguous.iter().map(|(n, t)| (n.as_str(), t)),
        Some(metadata),
    )
    .map_err(|e| ModelError::Weights {
        path: path.to_path_buf(),
        message: format!("cannot serialise: {e}"),
    })?;
    write_atomic(path, &bytes)
}

/// Writes `bytes` to `path` (a bare file name, a relative or an absolute path) whole or not at
/// all ([`pctrain_core::fs::write_atomic`]).
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    pctrain_core::fs::write_atomic(path, bytes).map_err(|source| ModelError::Io {
        path: path.to_path_buf(),
        source,
    })
}
