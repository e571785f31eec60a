//! Writing safetensors the way transformers and PEFT expect them (metadata `{"format": "pt"}`),
//! atomically: a temporary file in the same folder, renamed over the target, so a crash leaves
//! either the old file or the new one.

use std::collections::HashMap;
use std::io::Write;
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

/// Writes `bytes` to `path` (a bare file name, a relative or an absolute path) through a
/// temporary file and a rename, both made durable.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let io = |source| ModelError::Io {
        path: path.to_path_buf(),
        source,
    };
    // A bare name's parent is the empty path, which names no folder to open.
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    std::fs::create_dir_all(dir).map_err(io)?;
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy())
        .unwrap_or_default();
    let tmp = dir.join(format!(".{name}.{}.tmp", std::process::id()));
    let result = (|| {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)?;
        // Make the rename itself durable.
        std::fs::File::open(dir)?.sync_all()
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result.map_err(io)
}
