//! `metrics.jsonl`: one JSON object per optimizer step, appended as it happens, and `loss.svg`,
//! the loss curve drawn from it at each checkpoint.

use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use pctrain_model::save::write_atomic;
use serde_json::{json, Value};

use crate::plot;

/// The run's metrics file, open for appending.
pub struct MetricsLog {
    path: PathBuf,
    svg: PathBuf,
    file: std::fs::File,
}

impl MetricsLog {
    /// Opens `output/metrics.jsonl` for a run that continues after `start_step`: lines of later
    /// steps (written after the checkpoint a resumed run starts from) and a torn last line are
    /// dropped, so that each step appears once.
    pub fn open(output: &Path, start_step: u64) -> Result<Self> {
        let path = output.join("metrics.jsonl");
        if path.is_file() {
            let text = std::fs::read_to_string(&path)
                .with_context(|| format!("reading {}", path.display()))?;
            let kept: Vec<&str> = text
                .lines()
                .filter(|l| {
                    serde_json::from_str::<Value>(l)
                        .ok()
                        .and_then(|v| v["step"].as_u64())
                        .is_some_and(|s| s <= start_step)
                })
                .collect();
            let rewritten: String = kept.iter().map(|l| format!("{l}\n")).collect();
            if rewritten != text {
                write_atomic(&path, rewritten.as_bytes())?;
            }
        }
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .with_context(|| format!("opening {}", path.display()))?;
        Ok(MetricsLog {
            svg: output.join("loss.svg"),
            path,
            file,
        })
    }

    /// Appends one step's object as a line.
    pub fn append(&mut self, line: &Value) -> Result<()> {
        writeln!(self.file, "{line}")
            .and_then(|_| self.file.flush())
            .with_context(|| format!("writing {}", self.path.display()))
    }

    /// Redraws `loss.svg` from the file: training loss and, where measured, eval loss and
    /// IFEval's prompt-level strict accuracy (a fraction) by step.
    pub fn plot(&self) -> Result<()> {
        let text = std::fs::read_to_string(&self.path)
            .with_context(|| format!("reading {}", self.path.display()))?;
        let (mut train, mut eval, mut ifeval) = (Vec::new(), Vec::new(), Vec::new());
        for v in text
            .lines()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        {
            let Some(step) = v["step"].as_f64() else {
                continue;
            };
            if let Some(loss) = v["loss"].as_f64() {
                train.push((step, loss));
            }
            if let Some(loss) = v["eval_loss"].as_f64() {
                eval.push((step, loss));
            }
            if let Some(acc) = v["ifeval_prompt_strict"].as_f64() {
                ifeval.push((step, acc));
            }
        }
        let chart = plot::run_chart(
            &[("train", &train), ("eval", &eval)],
            &[("ifeval prompt strict", &ifeval)],
        );
        match chart {
            Ok(svg) => write_atomic(&self.svg, svg.as_bytes())?,
            // The chart is a view of metrics.jsonl: a drawing failure must not stop training.
            Err(e) => tracing::warn!("{} not redrawn: {e:#}", self.svg.display()),
        }
        Ok(())
    }
}

/// The process's memory, and the GPU's when training on one (used by every process, MiB).
pub fn memory(device: &pctrain_trainer::Device) -> Value {
    let m = process_memory();
    #[cfg(feature = "cuda")]
    let m = with_gpu_memory(m, device);
    let _ = device;
    m
}

#[cfg(feature = "cuda")]
fn with_gpu_memory(mut m: Value, device: &pctrain_trainer::Device) -> Value {
    if let pctrain_trainer::Device::Cuda(dev) = device {
        if let (Some(obj), Ok(used)) =
            (m.as_object_mut(), pctrain_model::cuda::memory_used_mib(dev))
        {
            obj.insert("gpu_used_mib".into(), ((used * 10.0).round() / 10.0).into());
        }
    }
    m
}

/// The process's resident memory now and at its peak, in MiB (Linux; null elsewhere).
pub fn process_memory() -> Value {
    let Ok(status) = std::fs::read_to_string("/proc/self/status") else {
        return Value::Null;
    };
    let field = |name: &str| -> Option<f64> {
        let line = status.lines().find(|l| l.starts_with(name))?;
        let kib: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
        Some((kib / 1024.0 * 10.0).round() / 10.0)
    };
    json!({"rss_mib": field("VmRSS:"), "peak_rss_mib": field("VmHWM:")})
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reopening_after_a_resume_drops_later_steps_and_torn_lines() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("metrics.jsonl");
        std::fs::write(
            &path,
            "{\"step\":1,\"loss\":3.0}\n{\"step\":2,\"loss\":2.5}\n{\"step\":3,\"loss\":2.0}\n{\"step\":4,\"lo",
        )
        .unwrap();
        let mut log = MetricsLog::open(dir.path(), 2).unwrap();
        log.append(&json!({"step": 3, "loss": 2.1})).unwrap();
        let steps: Vec<u64> = std::fs::read_to_string(&path)
            .unwrap()
            .lines()
            .map(|l| {
                serde_json::from_str::<Value>(l).unwrap()["step"]
                    .as_u64()
                    .unwrap()
            })
            .collect();
        assert_eq!(steps, [1, 2, 3]);
        log.plot().unwrap();
        let svg = std::fs::read_to_string(dir.path().join("loss.svg")).unwrap();
        assert!(
            svg.starts_with("<svg") && svg.contains("<polyline"),
            "{svg}"
        );
    }

    #[test]
    fn memory_is_reported_on_linux() {
        if cfg!(target_os = "linux") {
            let m = process_memory();
            assert!(m["rss_mib"].as_f64().unwrap() > 0.0);
            assert!(m["peak_rss_mib"].as_f64().unwrap() >= m["rss_mib"].as_f64().unwrap());
        }
    }
}
