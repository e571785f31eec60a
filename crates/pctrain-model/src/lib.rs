//! pctrain's models: Llama, Mistral and Granite decoders read from Hugging Face folders, with LoRA
//! adapters in PEFT's format. Every layer lives in its own file under [`layers`].

pub(crate) mod backend;
pub mod backward;
pub mod config;
pub mod cpu;
#[cfg(feature = "cuda")]
pub mod cuda;
pub mod error;
pub mod generate;
pub(crate) mod layer;
pub mod layers;
pub mod lora;
pub mod memory;
pub mod model;
pub mod params;
pub(crate) mod pass;
pub mod profile;
pub mod rng;
pub mod save;
pub(crate) mod tensor;
pub mod trainable;
pub mod weights;

pub use backward::{Grads, LayerGrads, StepOptions, TrainMode};
pub use config::{Architecture, ModelConfig};
pub use error::{ModelError, Result};
pub use generate::{DecodeOptions, Event, Request, Sampling};
pub use lora::{LoraAdapter, LoraConfig, Target};
pub use memory::MemoryAccount;
pub use model::{Batch, Model};
pub use params::{LayerParam, Param, Part};
pub use trainable::Gradients;
pub use weights::ModelWeights;
