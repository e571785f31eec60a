//! `pctrain eval`: mean cross-entropy of a base model on the trained tokens of a data set.

use anyhow::{bail, Context, Result};
use clap::Args;
use pctrain_data::TextTokenizer;
use pctrain_model::LoraAdapter;
use pctrain_trainer::DType;
use pctrain_trainer::{evaluate, load_base};

use crate::data_cmd::DataArgs;

#[derive(Args)]
pub struct EvalArgs {
    /// A model folder (config.json, safetensors weights, tokenizer.json) or a hub id.
    #[arg(long)]
    base: String,
    #[command(flatten)]
    data: DataArgs,
    /// Where to run: cpu or cuda:N.
    #[arg(long, default_value = "cpu")]
    device: String,
    /// The base weights' type: f32, or bf16 on a GPU.
    #[arg(long, default_value = "f32")]
    dtype: String,
    /// A PEFT adapter folder to apply to the base.
    #[arg(long)]
    adapter: Option<std::path::PathBuf>,
    /// Packed rows scored together.
    #[arg(long, default_value_t = 4)]
    batch_size: usize,
}

pub fn run(args: EvalArgs) -> Result<()> {
    let device = crate::setup::device(&args.device)?;
    let dtype = crate::setup::parse_dtype(&args.dtype)?;
    let mut base =
        load_base(&args.base, dtype, &device).with_context(|| format!("loading {}", args.base))?;
    if let Some(dir) = &args.adapter {
        base.model.lora = Some(LoraAdapter::load(
            dir,
            &base.model.config,
            DType::F32,
            &device,
        )?);
    }
    let tokenizer = match args.data.tokenizer.as_deref() {
        Some(spec) => TextTokenizer::load(spec)?,
        None => base.tokenizer,
    };
    let pipeline = args.data.pipeline_with(tokenizer)?;
    let (samples, stats) = pipeline.encode_all(&args.data.data)?;
    if stats.invalid_skipped > 0 {
        eprintln!("skipped {} invalid records", stats.invalid_skipped);
    }
    if samples.is_empty() {
        bail!("no sample with a trained token in the data: nothing to evaluate");
    }
    let result = evaluate(
        &base.model,
        &samples,
        args.data.seq_len,
        pipeline.tokenizer.pad_id,
        args.batch_size,
    )?;
    println!("{}", serde_json::to_string(&result)?);
    Ok(())
}
