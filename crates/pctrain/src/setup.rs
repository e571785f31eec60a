//! What a run's settings build: the device, the model (base weights and adapter), the data
//! pipeline, and what an export carries besides weights.

use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use pctrain_data::TrainedWith;
use pctrain_data::{Pipeline, TextTokenizer};
use pctrain_export::{published_name, ExportMeta};
use pctrain_model::lora::read_adapter_config;
use pctrain_model::{LoraAdapter, LoraConfig, Model, TrainMode};
use pctrain_trainer::preset::TINY_CONFIG;
use pctrain_trainer::World;
use pctrain_trainer::{load_base, tiny_model, DType, Device};

use crate::data_cmd::DataArgs;
use crate::settings::{Method, Settings};

/// The device a `--device` value names.
pub fn device(spec: &str) -> Result<Device> {
    match spec {
        "cpu" => Ok(Device::Cpu),
        s if s == "cuda" || s.starts_with("cuda:") => cuda_device(s),
        other => bail!("unknown device {other:?} (cpu or cuda:N)"),
    }
}

/// Runs `f` in the run's world (MPI's under mpirun or srun, else this process alone); an error on
/// one of several ranks is reported with its rank and ends them all, which would otherwise wait
/// for it.
pub fn in_world(f: impl FnOnce(&World) -> Result<()>) -> Result<()> {
    let world = World::init().context("starting MPI")?;
    let result = f(&world);
    if let Err(e) = &result {
        if world.size() > 1 {
            eprintln!(
                "error on rank {} of {}: {e:#}; ending every rank",
                world.rank(),
                world.size()
            );
            world.abort(1);
        }
    }
    result
}

/// The device of this rank: `spec` alone, or with several ranks on GPUs, the GPU of its local
/// rank among those it sees (`spec` names none: launchers that give each rank one GPU make it
/// `cuda:0` for all).
pub fn rank_device(spec: &str, world: &World) -> Result<Device> {
    if world.size() == 1 || spec == "cpu" {
        return device(spec);
    }
    if spec != "cuda" {
        bail!(
            "--device {spec}: with {} ranks each takes the GPU of its local rank; say --device \
             cuda (or cpu)",
            world.size()
        );
    }
    let local = world.local_rank();
    let gpu = local % visible_gpus()?.max(1);
    let device = device(&format!("cuda:{gpu}")).with_context(|| {
        format!(
            "rank {} (local rank {local} of {} on its machine) opening GPU {gpu}",
            world.rank(),
            world.local_size()
        )
    })?;
    join_gpus(&device, world)?;
    Ok(device)
}

/// Refuses two ranks of a machine on one GPU (more ranks than GPUs), then joins the ranks' GPUs
/// for their sums (NCCL, built with `cuda` and `mpi`).
#[cfg(feature = "cuda")]
fn join_gpus(device: &Device, world: &World) -> Result<()> {
    let Device::Cuda(dev) = device else {
        return Ok(());
    };
    let uuid = pctrain_model::cuda::device_uuid(dev)?;
    if let Err((a, b)) = world.distinct_on_machine(uuid) {
        bail!(
            "local ranks {a} and {b} of this machine got the same GPU: start at most one rank per \
             GPU ({} ranks here, {} GPUs visible to each)",
            world.local_size(),
            visible_gpus()?
        );
    }
    world
        .join_gpus(dev.cuda_stream())
        .context("joining the ranks' GPUs")?;
    Ok(())
}

#[cfg(not(feature = "cuda"))]
fn join_gpus(_: &Device, _: &World) -> Result<()> {
    Ok(())
}

/// GPUs this process sees.
#[cfg(feature = "cuda")]
fn visible_gpus() -> Result<usize> {
    pctrain_model::cuda::device_count().context("counting the GPUs")
}

#[cfg(not(feature = "cuda"))]
fn visible_gpus() -> Result<usize> {
    Ok(1)
}

#[cfg(feature = "cuda")]
fn cuda_device(spec: &str) -> Result<Device> {
    let ordinal = match spec.strip_prefix("cuda:") {
        None => 0,
        Some(n) => n
            .parse()
            .with_context(|| format!("device {spec:?}: expected cuda:N with N a GPU number"))?,
    };
    let device = Device::new_cuda(ordinal).with_context(|| format!("opening GPU {ordinal}"))?;
    if let Device::Cuda(d) = &device {
        pctrain_model::cuda::keep_freed_memory(d)
            .with_context(|| format!("setting up GPU {ordinal}'s memory pool"))?;
    }
    Ok(device)
}

#[cfg(not(feature = "cuda"))]
fn cuda_device(spec: &str) -> Result<Device> {
    bail!(
        "device {spec:?}: this pctrain was built without CUDA; on a GPU machine build it with \
         `cargo build --release --features cuda` (see the README), or use --device cpu"
    )
}

/// The dtype a `--dtype` value names.
pub fn parse_dtype(spec: &str) -> Result<DType> {
    Ok(match spec {
        "f32" | "float32" => DType::F32,
        "bf16" | "bfloat16" => DType::BF16,
        "f16" | "float16" => bail!(
            "dtype {spec}: not supported (pctrain's kernels take f32 and bf16); use --dtype bf16 \
             on a GPU, or f32"
        ),
        other => bail!("unknown dtype {other:?} (f32, or bf16 on a GPU)"),
    })
}

/// The dtype a `--dtype` value names, checked against the device.
pub fn dtype(spec: &str, device: &Device) -> Result<DType> {
    let dtype = parse_dtype(spec)?;
    if device.is_cpu() && dtype != DType::F32 {
        bail!("dtype {spec}: on the CPU pctrain runs in f32; use --dtype f32 (bf16 is for CUDA)");
    }
    Ok(dtype)
}

/// A run's model and data, ready to train.
pub struct Setup {
    pub model: Model,
    pub pipeline: Pipeline,
    pub mode: TrainMode,
    /// The base's folder (None for `tiny`).
    pub base_dir: Option<PathBuf>,
}

/// Takes rank, alpha, dropout, targets and rsLoRA from `init_adapter`'s config, so that the
/// settings written into the run say what really trains.
pub fn adopt_init_adapter(settings: &mut Settings) -> Result<()> {
    let Some(dir) = settings.init_adapter.clone() else {
        return Ok(());
    };
    let config = read_adapter_config(&dir.join("adapter_config.json"))
        .with_context(|| format!("--init-adapter {}", dir.display()))?;
    settings.method = Some(Method::Lora);
    settings.lora.r = config.r;
    settings.lora.alpha = config.alpha;
    settings.lora.dropout = config.dropout;
    settings.lora.rslora = config.rslora;
    settings.lora.targets = config
        .targets
        .iter()
        .map(|t| t.module().to_string())
        .collect();
    Ok(())
}

/// Loads the base (or draws the tiny model), attaches the adapter of a LoRA run, and builds the
/// data pipeline with the base's tokenizer (or `tokenizer`).
pub fn build(settings: &Settings, device: &Device, dtype: DType) -> Result<Setup> {
    let (mut model, tokenizer, base_dir) = if settings.tiny() {
        if dtype != DType::F32 {
            bail!("the tiny preset trains in f32; use --dtype f32");
        }
        (
            tiny_model(settings.seed, device)?,
            TextTokenizer::tiny()?,
            None,
        )
    } else {
        let base = load_base(&settings.base, dtype, device)
            .with_context(|| format!("loading the base {}", settings.base))?;
        (base.model, base.tokenizer, Some(base.dir))
    };
    let mode = match settings.method() {
        Method::Full => TrainMode::Full,
        Method::Lora => TrainMode::Lora,
    };
    if mode == TrainMode::Lora {
        let adapter = match &settings.init_adapter {
            Some(dir) => LoraAdapter::load(dir, &model.config, DType::F32, device)
                .with_context(|| format!("--init-adapter {}", dir.display()))?,
            None => LoraAdapter::init(
                &model.config,
                LoraConfig {
                    r: settings.lora.r,
                    alpha: settings.lora.alpha,
                    dropout: settings.lora.dropout,
                    rslora: settings.lora.rslora,
                    targets: settings.targets()?,
                },
                settings.seed,
                DType::F32,
                device,
            )?,
        };
        model.lora = Some(adapter);
    }
    let tokenizer = match settings.tokenizer.as_deref() {
        None => tokenizer,
        Some("tiny") => TextTokenizer::tiny()?,
        Some(spec) => TextTokenizer::load(spec)?,
    };
    let pipeline = data_args(settings).pipeline_with(tokenizer)?;
    Ok(Setup {
        model,
        pipeline,
        mode,
        base_dir,
    })
}

/// The data arguments the settings hold, as the data commands take them.
pub fn data_args(settings: &Settings) -> DataArgs {
    DataArgs {
        data: settings.data.clone(),
        mix: settings.mix.clone(),
        tokenizer: settings.tokenizer.clone(),
        template: settings.template.clone(),
        seq_len: settings.seq_len,
        seed: settings.seed,
        require_pc: settings.require_pc,
        skip_invalid: settings.skip_invalid,
        pc_template: settings.pc_template.clone(),
    }
}

/// What an export of this run carries besides weights: the base's config and generation config,
/// the tokenizer files with the chat template the run trained with, and the model card's summary.
pub fn export_meta(settings: &Settings, setup: &Setup) -> Result<ExportMeta> {
    let read_json = |name: &str| -> Result<Option<serde_json::Value>> {
        let Some(dir) = &setup.base_dir else {
            return Ok(None);
        };
        let path = dir.join(name);
        if !path.is_file() {
            return Ok(None);
        }
        let text = std::fs::read_to_string(&path)
            .with_context(|| format!("reading {}", path.display()))?;
        let value = serde_json::from_str(&text)
            .with_context(|| format!("{}: malformed JSON", path.display()))?;
        Ok(Some(value))
    };
    let config = match read_json("config.json")? {
        Some(c) => c,
        None => serde_json::from_str(TINY_CONFIG).expect("the tiny config parses"),
    };
    let tokenizer_files = setup
        .pipeline
        .tokenizer
        .export_files(Some(setup.pipeline.template.source()));
    let summary = format!(
        "Trained with `pctrain` ({}): mix `{}`, template `{}`, {} on {}.",
        env!("CARGO_PKG_VERSION"),
        settings.mix,
        published_name(setup.pipeline.template.name()),
        match setup.mode {
            TrainMode::Lora => format!(
                "LoRA r={} alpha={} on {}",
                settings.lora.r,
                settings.lora.alpha,
                settings
                    .targets()?
                    .iter()
                    .map(|t| t.module())
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
            TrainMode::Full => "full fine-tuning".to_string(),
        },
        settings
            .data
            .iter()
            .map(|p| published_name(&p.to_string_lossy()))
            .collect::<Vec<_>>()
            .join(", ")
    );
    Ok(ExportMeta {
        config,
        generation_config: read_json("generation_config.json")?,
        tokenizer_files,
        base: settings.base.clone(),
        summary,
        trained_with: TrainedWith {
            mix: settings.mix.clone(),
            pc_template: settings.pc_template.clone(),
        },
    })
}
