//! pctrain's trainer: loading a base model, the optimizer and learning-rate schedule, the training
//! loop, checkpoints and held-out loss.

pub mod base;
pub mod checkpoint;
pub mod eval;
pub mod optim;
pub mod preset;
pub mod ranks;
pub mod schedule;
pub mod step;
pub mod train;

pub use base::{load_base, BaseModel};
pub use candle_core::{DType, Device, Tensor};
pub use checkpoint::{
    checkpoint_ranks, checkpoints, load_checkpoint, remove_unfinished, save_checkpoint,
    CheckpointError,
};
pub use eval::{evaluate, EvalResult};
pub use optim::{clip_grad_norm, AdamW, AdamWConfig, Clip, Shard};
pub use pctrain_dist::World;
pub use preset::tiny_model;
pub use schedule::{Decay, Schedule};
pub use step::{optimizer_step, StepError, StepReport};
pub use train::{collate, train, Finished, Progress, TrainConfig};
