//! What a run measures at its evaluation steps (every `eval_every` and the last): the loss on
//! held-out data, and a benchmark's accuracy on the answers of the model as it trains.

use anyhow::{Context, Result};
use pctrain_data::TrainedWith;
use pctrain_data::{Encoded, Pipeline};
use pctrain_eval::generation::stop_tokens;
use pctrain_eval::ifeval::{summarize, Task};
use pctrain_eval::{GenerateOptions, Generator};
use pctrain_model::{Model, Sampling};
use pctrain_trainer::evaluate;
use serde_json::Value;

use crate::ifeval_cmd;
use crate::settings::{EvalTaskName, Settings};
use crate::setup::Setup;

/// IFEval answered during training.
struct IfEvalProbe {
    task: Task,
    limit: Option<usize>,
    opts: GenerateOptions,
    stop: Vec<u32>,
    strip: Option<pctrain_data::PcJoin>,
}

/// The measures of a run, ready to take.
pub struct Evaluations {
    held_out: Vec<Encoded>,
    ifeval: Option<IfEvalProbe>,
    every: u64,
    seq_len: usize,
}

impl Evaluations {
    /// Reads the held-out data and the benchmark's prompts the settings ask for.
    pub fn set_up(settings: &Settings, run: &Setup) -> Result<Evaluations> {
        let held_out = if settings.eval_data.is_empty() {
            Vec::new()
        } else {
            run.pipeline
                .encode_all(&settings.eval_data)
                .context("reading the eval data")?
                .0
        };
        let ifeval = match settings.eval_task {
            None => None,
            Some(EvalTaskName::Ifeval) => {
                let trained = TrainedWith {
                    mix: settings.mix.clone(),
                    pc_template: settings.pc_template.clone(),
                };
                Some(IfEvalProbe {
                    task: ifeval_cmd::load_task(settings.eval_task_data.as_deref())?,
                    limit: (settings.eval_limit > 0).then_some(settings.eval_limit),
                    opts: GenerateOptions {
                        max_new_tokens: settings.eval_max_new_tokens,
                        sampling: Sampling::Greedy,
                        batch_size: 16,
                        samples: 1,
                    },
                    stop: stop_tokens(
                        run.base_dir.as_deref(),
                        &run.pipeline.tokenizer,
                        &run.pipeline.template,
                    )?,
                    strip: trained.strip()?,
                })
            }
        };
        Ok(Evaluations {
            held_out,
            ifeval,
            every: settings.eval_every,
            seq_len: settings.seq_len,
        })
    }

    /// Whether step `step` evaluates (`last`: the run's last step).
    pub fn due(&self, step: u64, last: bool) -> bool {
        let any = !self.held_out.is_empty() || self.ifeval.is_some();
        any && (last || (self.every > 0 && step.is_multiple_of(self.every)))
    }

    /// Takes every measure of `model` into `line`; returns a short summary for the log.
    pub fn measure(&self, model: &Model, pipeline: &Pipeline, line: &mut Value) -> Result<String> {
        let mut said = Vec::new();
        if !self.held_out.is_empty() {
            let e = evaluate(
                model,
                &self.held_out,
                self.seq_len,
                pipeline.tokenizer.pad_id,
                4,
            )?;
            line["eval_loss"] = e.loss.into();
            line["eval_tokens"] = e.tokens.into();
            said.push(format!("eval loss {:.4}", e.loss));
        }
        if let Some(probe) = &self.ifeval {
            let generator = Generator {
                model,
                tokenizer: &pipeline.tokenizer,
                template: &pipeline.template,
                stop: probe.stop.clone(),
                strip: probe.strip.clone(),
            };
            let answers =
                ifeval_cmd::answer_task(&generator, &probe.task, probe.limit, &probe.opts, false)?;
            let (s, _) = summarize(&ifeval_cmd::score_answers(&probe.task, &answers));
            line["ifeval_prompts"] = s.prompts.into();
            line["ifeval_prompt_strict"] = s.prompt_strict.into();
            line["ifeval_inst_strict"] = s.inst_strict.into();
            line["ifeval_prompt_loose"] = s.prompt_loose.into();
            line["ifeval_inst_loose"] = s.inst_loose.into();
            said.push(format!(
                "ifeval prompt strict {:.3} (of {})",
                s.prompt_strict, s.prompts
            ));
        }
        Ok(said.join(", "))
    }
}
