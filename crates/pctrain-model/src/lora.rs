//! LoRA adapters in PEFT's format: `adapter_config.json` and `adapter_model.safetensors` with keys
//! `base_model.model.model.layers.{i}.{self_attn|mlp}.{module}.lora_{A|B}.weight`.

use std::path::Path;

use candle_core::{DType, Device, Tensor};
use serde::{Deserialize, Serialize};

use crate::config::ModelConfig;
use crate::error::{ModelError, Result};
use crate::layers::linear::Lora;
use crate::rng::Rng64;
use crate::save::{write_atomic, write_safetensors};

/// The seven linear layers of a decoder layer that LoRA can adapt.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Target {
    Q,
    K,
    V,
    O,
    Gate,
    Up,
    Down,
}

impl Target {
    pub const ALL: [Target; 7] = [
        Target::Q,
        Target::K,
        Target::V,
        Target::O,
        Target::Gate,
        Target::Up,
        Target::Down,
    ];

    /// The module name transformers and PEFT use (`q_proj`, ...).
    pub fn module(self) -> &'static str {
        match self {
            Target::Q => "q_proj",
            Target::K => "k_proj",
            Target::V => "v_proj",
            Target::O => "o_proj",
            Target::Gate => "gate_proj",
            Target::Up => "up_proj",
            Target::Down => "down_proj",
        }
    }

    pub fn from_module(name: &str) -> Option<Target> {
        Target::ALL.into_iter().find(|t| t.module() == name)
    }

    /// `self_attn` or `mlp`.
    fn block(self) -> &'static str {
        match self {
            Target::Q | Target::K | Target::V | Target::O => "self_attn",
            _ => "mlp",
        }
    }

    /// `(out_features, in_features)` of this layer.
    pub fn shape(self, c: &ModelConfig) -> (usize, usize) {
        let (h, i) = (c.hidden_size, c.intermediate_size);
        match self {
            Target::Q => (c.num_heads * c.head_dim, h),
            Target::K | Target::V => (c.num_kv_heads * c.head_dim, h),
            Target::O => (h, c.num_heads * c.head_dim),
            Target::Gate | Target::Up => (i, h),
            Target::Down => (h, i),
        }
    }

    /// PEFT's key prefix for this layer in decoder layer `layer`.
    pub fn peft_prefix(self, layer: usize) -> String {
        format!(
            "base_model.model.model.layers.{layer}.{}.{}",
            self.block(),
            self.module()
        )
    }
}

/// LoRA hyper-parameters, as in `adapter_config.json`.
#[derive(Debug, Clone, PartialEq)]
pub struct LoraConfig {
    pub r: usize,
    pub alpha: f64,
    pub dropout: f64,
    pub rslora: bool,
    pub targets: Vec<Target>,
}

impl LoraConfig {
    /// `alpha / r`, or `alpha / sqrt(r)` with rsLoRA.
    pub fn scale(&self) -> f64 {
        if self.rslora {
            self.alpha / (self.r as f64).sqrt()
        } else {
            self.alpha / self.r as f64
        }
    }
}

/// The adapters of one decoder layer, by target (`None` where a layer is not adapted).
pub type LayerLora = [Option<Lora>; 7];

/// Every adapter of a model.
#[derive(Debug, Clone)]
pub struct LoraAdapter {
    pub config: LoraConfig,
    pub layers: Vec<LayerLora>,
}

impl LoraAdapter {
    /// A new adapter initialised as PEFT does: `A` from a Kaiming-uniform distribution with
    /// `a = sqrt(5)` (uniform in `±1/sqrt(in_features)`), `B` zero, so the model starts unchanged.
    pub fn init(
        model: &ModelConfig,
        config: LoraConfig,
        seed: u64,
        dtype: DType,
        device: &Device,
    ) -> Result<Self> {
        let mut rng = Rng64::new(seed);
        let scale = config.scale();
        let mut layers = Vec::with_capacity(model.num_layers);
        for _ in 0..model.num_layers {
            let mut layer: LayerLora = Default::default();
            for &t in &config.targets {
                let (out, inp) = t.shape(model);
                let bound = 1.0 / (inp as f64).sqrt();
                let a: Vec<f32> = (0..config.r * inp)
                    .map(|_| ((rng.unit() * 2.0 - 1.0) * bound) as f32)
                    .collect();
                layer[t as usize] = Some(Lora {
                    a: Tensor::from_vec(a, (config.r, inp), device)?.to_dtype(dtype)?,
                    b: Tensor::zeros((out, config.r), dtype, device)?,
                    scale,
                });
            }
            layers.push(layer);
        }
        Ok(LoraAdapter { config, layers })
    }

    /// Writes `adapter_model.safetensors` (f32, PEFT's key names, `{"format": "pt"}`) and
    /// `adapter_config.json` into `dir`, each atomically.
    pub fn save(&self, dir: &Path, base_model: Option<&str>) -> Result<()> {
        let mut tensors = Vec::new();
        for (l, layer) in self.layers.iter().enumerate() {
            for &t in &self.config.targets {
                if let Some(lora) = &layer[t as usize] {
                    let prefix = t.peft_prefix(l);
                    tensors.push((
                        format!("{prefix}.lora_A.weight"),
                        lora.a.to_dtype(DType::F32)?,
                    ));
                    tensors.push((
                        format!("{prefix}.lora_B.weight"),
                        lora.b.to_dtype(DType::F32)?,
                    ));
                }
            }
        }
        write_safetensors(&dir.join("adapter_model.safetensors"), &tensors)?;
        let c = &self.config;
        let config = PeftConfig {
            peft_type: "LORA".into(),
            task_type: Some("CAUSAL_LM".into()),
            base_model_name_or_path: base_model.map(String::from),
            r: c.r,
            lora_alpha: c.alpha,
            lora_dropout: c.dropout,
            target_modules: c.targets.iter().map(|t| t.module().to_string()).collect(),
            bias: "none".into(),
            use_rslora: c.rslora,
            use_dora: false,
            fan_in_fan_out: false,
            init_lora_weights: true,
            inference_mode: true,
            modules_to_save: None,
        };
        let text = serde_json::to_string_pretty(&config).expect("a config serialises") + "\n";
        write_atomic(&dir.join("adapter_config.json"), text.as_bytes())
    }

    /// Loads a PEFT adapter folder, checking names and shapes against the model.
    pub fn load(dir: &Path, model: &ModelConfig, dtype: DType, device: &Device) -> Result<Self> {
        let config = read_adapter_config(&dir.join("adapter_config.json"))?;
        let file = dir.join("adapter_model.safetensors");
        let err = |message: String| ModelError::Weights {
            path: file.clone(),
            message,
        };
        if !file.is_file() {
            return Err(err(
                "missing (only safetensors adapters load; adapter_model.bin is refused)".into(),
            ));
        }
        let tensors = candle_core::safetensors::load(&file, device)
            .map_err(|e| err(format!("cannot read safetensors: {e}")))?;
        let scale = config.scale();
        let mut layers = Vec::with_capacity(model.num_layers);
        for l in 0..model.num_layers {
            let mut layer: LayerLora = Default::default();
            for &t in &config.targets {
                let (out, inp) = t.shape(model);
                let prefix = t.peft_prefix(l);
                let get = |name: String, shape: [usize; 2]| -> Result<Tensor> {
                    let tensor = tensors
                        .get(&name)
                        .ok_or_else(|| err(format!("missing tensor `{name}`")))?;
                    if tensor.dims() != shape {
                        return Err(err(format!(
                            "tensor `{name}` has shape {:?}, expected {shape:?}",
                            tensor.dims()
                        )));
                    }
                    Ok(tensor.to_dtype(dtype)?)
                };
                layer[t as usize] = Some(Lora {
                    a: get(format!("{prefix}.lora_A.weight"), [config.r, inp])?,
                    b: get(format!("{prefix}.lora_B.weight"), [out, config.r])?,
                    scale,
                });
            }
            layers.push(layer);
        }
        Ok(LoraAdapter { config, layers })
    }
}

/// PEFT's `adapter_config.json` for a LoRA adapter: what pctrain writes, and reads back. Fields
/// it does not use are ignored; a null reads as the field's default, as PEFT reads it.
#[derive(Serialize, Deserialize)]
struct PeftConfig {
    peft_type: String,
    #[serde(default)]
    task_type: Option<String>,
    #[serde(default)]
    base_model_name_or_path: Option<String>,
    r: usize,
    lora_alpha: f64,
    #[serde(default, deserialize_with = "null_as_default")]
    lora_dropout: f64,
    target_modules: Vec<String>,
    #[serde(default, skip_deserializing)]
    bias: String,
    #[serde(default, deserialize_with = "null_as_default")]
    use_rslora: bool,
    #[serde(default, deserialize_with = "null_as_default")]
    use_dora: bool,
    #[serde(default, skip_deserializing)]
    fan_in_fan_out: bool,
    /// Written `true` (PEFT's default initialisation, which pctrain's matches); not read.
    #[serde(default, skip_deserializing)]
    init_lora_weights: bool,
    #[serde(default, skip_deserializing)]
    inference_mode: bool,
    #[serde(default, skip_deserializing)]
    modules_to_save: Option<Vec<String>>,
}

/// A field's default when it is null.
fn null_as_default<'de, D, T>(d: D) -> std::result::Result<T, D::Error>
where
    D: serde::Deserializer<'de>,
    T: Default + Deserialize<'de>,
{
    Ok(Option::<T>::deserialize(d)?.unwrap_or_default())
}

/// Reads r, alpha, dropout, rsLoRA and target modules from PEFT's `adapter_config.json`.
pub fn read_adapter_config(path: &Path) -> Result<LoraConfig> {
    let err = |message: String| ModelError::Config {
        path: path.to_path_buf(),
        message,
    };
    let text = std::fs::read_to_string(path).map_err(|source| ModelError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    let c: PeftConfig = serde_json::from_str(&text).map_err(|e| {
        if e.is_syntax() || e.is_eof() {
            err(format!("malformed JSON: {e}"))
        } else {
            err(e.to_string())
        }
    })?;
    if c.peft_type != "LORA" {
        return Err(err(format!("peft_type {:?} is not LORA", c.peft_type)));
    }
    if c.use_dora {
        return Err(err("DoRA adapters are not supported".into()));
    }
    if c.r == 0 {
        return Err(err("field `r`: expected a positive integer".into()));
    }
    let mut targets = c
        .target_modules
        .iter()
        .map(|n| {
            Target::from_module(n).ok_or_else(|| {
                err(format!(
                    "target module {n:?} is not one of q, k, v, o, gate, up, down_proj"
                ))
            })
        })
        .collect::<Result<Vec<_>>>()?;
    targets.sort();
    targets.dedup();
    Ok(LoraConfig {
        r: c.r,
        alpha: c.lora_alpha,
        dropout: c.lora_dropout,
        rslora: c.use_rslora,
        targets,
    })
}
