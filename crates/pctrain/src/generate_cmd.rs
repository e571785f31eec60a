//! `pctrain generate`: a model's answers to a prompt (streamed to stdout) or to every record of
//! data files (one JSON line each, in input order).

use std::collections::{HashMap, HashSet};
use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use clap::Args;
use indicatif::{ProgressBar, ProgressStyle};
use pctrain_data::constraints::constraint_fields;
use pctrain_data::reader::written_lines;
use pctrain_data::TrainedWith;
use pctrain_data::{ChatTemplate, Message, PcJoin, RecordReader, Role, TemplateChoice};
use pctrain_eval::generation::{prompt_of, stop_tokens};
use pctrain_eval::{Answer, GenerateOptions, Generator};
use pctrain_model::{LoraAdapter, Sampling};
use pctrain_trainer::{load_base, BaseModel, DType};

/// The model to answer with.
#[derive(Args, Debug, Clone)]
pub struct ModelArgs {
    /// A model folder (config.json, safetensors weights, tokenizer.json) or a hub id.
    #[arg(long)]
    pub base: Option<String>,
    /// A PEFT adapter folder to apply to the base.
    #[arg(long)]
    pub adapter: Option<PathBuf>,
    /// Where to run: cpu or cuda:N.
    #[arg(long, default_value = "cpu")]
    pub device: String,
    /// The base weights' type: f32, or bf16 on a GPU.
    #[arg(long, default_value = "f32")]
    pub dtype: String,
}

/// How answers are decoded and read.
#[derive(Args, Debug, Clone)]
pub struct DecodeArgs {
    /// A system message put before prompts that have none.
    #[arg(long)]
    pub system: Option<String>,
    /// Most tokens an answer may have.
    #[arg(long, default_value_t = 512)]
    pub max_new_tokens: usize,
    /// Sample at this temperature (default: greedy, the most likely token).
    #[arg(long)]
    pub temperature: Option<f64>,
    /// With --temperature: sample from the smallest set of most likely tokens whose probability
    /// reaches this.
    #[arg(long, default_value_t = 1.0)]
    pub top_p: f64,
    /// With --temperature: sample from the K most likely tokens only (0: all).
    #[arg(long, default_value_t = 0)]
    pub top_k: usize,
    /// Answers a prompt, sampled (needs --temperature); each line says its `sample` (0..K).
    #[arg(long, default_value_t = 1)]
    pub samples: usize,
    /// Strip the pseudo-code part of answers (default: when the model's pctrain.json says it
    /// was trained to answer with pseudo-code first).
    #[arg(long, conflicts_with = "no_strip_pc")]
    pub strip_pc: bool,
    /// Keep answers whole.
    #[arg(long)]
    pub no_strip_pc: bool,
}

impl DecodeArgs {
    pub fn options(&self, batch_size: usize, seed: u64) -> Result<GenerateOptions> {
        let sampling = match self.temperature {
            None if self.top_k != 0 || self.top_p != 1.0 => bail!(
                "--top-k and --top-p cut a sampled distribution: give --temperature T (without it \
                 decoding is greedy)"
            ),
            None => Sampling::Greedy,
            Some(t) if t > 0.0 && self.top_p > 0.0 && self.top_p <= 1.0 => Sampling::Sample {
                temperature: t,
                top_p: self.top_p,
                top_k: self.top_k,
                seed,
            },
            Some(t) => bail!(
                "--temperature {t} --top-p {}: the temperature must be above 0 and top-p in (0, 1]",
                self.top_p
            ),
        };
        if batch_size == 0 {
            bail!("--batch-size must be at least 1");
        }
        if self.max_new_tokens == 0 {
            bail!("--max-new-tokens must be at least 1");
        }
        if self.samples == 0 {
            bail!("--samples must be at least 1");
        }
        if self.samples > 1 && sampling == Sampling::Greedy {
            bail!(
                "--samples {}: greedy answers would all be the same; sample with --temperature T",
                self.samples
            );
        }
        Ok(GenerateOptions {
            max_new_tokens: self.max_new_tokens,
            sampling,
            batch_size,
            samples: self.samples,
        })
    }
}

#[derive(Args)]
pub struct GenerateArgs {
    #[command(flatten)]
    model: ModelArgs,
    #[command(flatten)]
    decode: DecodeArgs,
    /// One prompt: its answer is printed to stdout as it is decoded.
    #[arg(long, conflicts_with = "data", required_unless_present = "data")]
    prompt: Option<String>,
    /// Data files (JSONL or Parquet, Tulu, Alpaca or IFEval shape, or a hub dataset
    /// owner/name): the conversation up to each record's last user turn is its prompt.
    #[arg(long, num_args = 1.., requires = "output")]
    data: Vec<PathBuf>,
    /// Where --data's answers go: one JSON line per record and sample, {"id", "prompt",
    /// "sample", "response", "response_raw", "new_tokens"}, with the record's constraints
    /// ("instruction_id_list", "kwargs") when it has any. Answers are appended as they end; a
    /// rerun with the same arguments skips those already written, and the finished file is in
    /// input order.
    #[arg(long)]
    output: Option<PathBuf>,
    /// auto (the model's chat template, else tulu), hf, tulu, llama3, mistral, granite, chatml, or
    /// a .jinja file.
    #[arg(long, default_value = "auto")]
    template: String,
    /// With --strip-pc on a model without pctrain.json: the join template to strip.
    #[arg(long, default_value = PcJoin::DEFAULT)]
    pc_template: String,
    /// Answers decoded together (continuous batching: a finished answer's slot takes the next
    /// prompt at once).
    #[arg(long, default_value_t = 16)]
    batch_size: usize,
    /// Seed of sampling.
    #[arg(long, default_value_t = 42)]
    seed: u64,
}

/// A loaded model with its template, end tokens and pseudo-code stripping.
pub struct Answerer {
    pub base: BaseModel,
    pub template: ChatTemplate,
    pub stop: Vec<u32>,
    pub strip: Option<PcJoin>,
}

impl Answerer {
    /// Loads `model`'s base and adapter, with the chat template `template` names; `pc_template`
    /// is stripped on --strip-pc when the model does not say how it was trained.
    pub fn load(
        model: &ModelArgs,
        decode: &DecodeArgs,
        template: &str,
        pc_template: &str,
    ) -> Result<Answerer> {
        let Some(spec) = &model.base else {
            bail!("--base is needed: the model to answer with");
        };
        let device = crate::setup::device(&model.device)?;
        let dtype = crate::setup::dtype(&model.dtype, &device)?;
        let mut base =
            load_base(spec, dtype, &device).with_context(|| format!("loading {spec}"))?;
        if let Some(dir) = &model.adapter {
            base.model.lora = Some(
                LoraAdapter::load(dir, &base.model.config, DType::F32, &device)
                    .with_context(|| format!("loading the adapter {}", dir.display()))?,
            );
        }
        let template =
            TemplateChoice::parse(template)?.load(base.tokenizer.chat_template.as_deref())?;
        let stop = stop_tokens(Some(&base.dir), &base.tokenizer, &template)?;
        let trained = match &model.adapter {
            Some(dir) => TrainedWith::read(dir)?,
            None => TrainedWith::read(&base.dir)?,
        };
        let strip = if decode.no_strip_pc {
            None
        } else if decode.strip_pc {
            Some(match &trained {
                Some(t) => PcJoin::parse(&t.pc_template)?,
                None => PcJoin::parse(pc_template)?,
            })
        } else {
            match &trained {
                Some(t) => t.strip()?,
                None => None,
            }
        };
        Ok(Answerer {
            base,
            template,
            stop,
            strip,
        })
    }

    pub fn generator(&self) -> Generator<'_> {
        Generator {
            model: &self.base.model,
            tokenizer: &self.base.tokenizer,
            template: &self.template,
            stop: self.stop.clone(),
            strip: self.strip.clone(),
        }
    }
}

/// A progress bar over `n` answers on stderr.
pub fn answers_bar(n: usize) -> ProgressBar {
    ProgressBar::new(n as u64).with_style(
        ProgressStyle::with_template("{msg} [{bar:30}] {pos}/{len} answers {elapsed} eta {eta}")
            .expect("valid template"),
    )
}

/// Writes `lines` (one JSON value each) to `path` atomically.
pub fn write_jsonl(path: &Path, lines: &[serde_json::Value]) -> Result<()> {
    let mut text = String::new();
    for l in lines {
        text += &serde_json::to_string(l)?;
        text.push('\n');
    }
    pctrain_model::save::write_atomic(path, text.as_bytes())
        .with_context(|| format!("writing {}", path.display()))
}

pub fn run(args: GenerateArgs) -> Result<()> {
    let opts = args.decode.options(args.batch_size, args.seed)?;
    let answerer = Answerer::load(&args.model, &args.decode, &args.template, &args.pc_template)?;
    let generator = answerer.generator();
    if let Some(prompt) = &args.prompt {
        let mut messages = Vec::new();
        if let Some(s) = &args.decode.system {
            messages.push(Message::new(Role::System, s.as_str()));
        }
        messages.push(Message::new(Role::User, prompt.as_str()));
        let mut out = std::io::stdout().lock();
        let mut failed = None;
        let answer = generator.stream(&messages, &opts, |piece| {
            if failed.is_none() {
                failed = out
                    .write_all(piece.as_bytes())
                    .and_then(|_| out.flush())
                    .err();
            }
        })?;
        if answer.response != answer.response_raw {
            eprintln!(
                "\n[stripped pseudo-code; the response is:]\n{}",
                answer.response
            );
        }
        match failed {
            Some(e) if e.kind() == std::io::ErrorKind::BrokenPipe => return Ok(()),
            Some(e) => return Err(e.into()),
            None => writeln!(out)?,
        }
        return Ok(());
    }
    let output = args
        .output
        .as_ref()
        .expect("clap requires --output with --data");
    answer_records(&args, &generator, &opts, output)
}

/// A record to answer: its id, prompt and constraints (IFEval's two fields, or none).
struct ToAnswer {
    id: String,
    prompt: Vec<Message>,
    constraints: Option<(serde_json::Value, serde_json::Value)>,
}

/// Answers every record of `--data` into `output`: each answer appended as it ends, answers an
/// earlier run of the same settings wrote skipped, and the whole file put in input order at the
/// end. The settings are kept beside the output ([`settings_path`]).
fn answer_records(
    args: &GenerateArgs,
    generator: &Generator,
    opts: &GenerateOptions,
    output: &Path,
) -> Result<()> {
    let records = read_records(args)?;
    let index: HashMap<&str, usize> = records
        .iter()
        .enumerate()
        .map(|(i, r)| (r.id.as_str(), i))
        .collect();
    let k = opts.samples;
    let done = earlier_answers(output, &records, &index, k, &decode_settings(args))?;
    let jobs: Vec<(usize, usize)> = (0..records.len() * k)
        .map(|j| (j / k, j % k))
        .filter(|job| !done.contains(job))
        .collect();
    let bar = answers_bar(records.len() * k);
    bar.set_message("generating");
    bar.set_position(done.len() as u64);
    let mut file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(output)
        .with_context(|| format!("opening {}", output.display()))?;
    let prompts: Vec<Vec<Message>> = records.iter().map(|r| r.prompt.clone()).collect();
    let started = std::time::Instant::now();
    let (mut tokens, mut written, mut failed) = (0, 0, None);
    let decoded = generator.answer_jobs(&prompts, &jobs, opts, |j, a| {
        let (i, sample) = jobs[j];
        tokens += a.new_tokens;
        written += 1;
        let line = answer_line(&records[i], sample, &a) + "\n";
        // One write an answer, so that a stop leaves at most one partial last line.
        if failed.is_none() {
            failed = file
                .write_all(line.as_bytes())
                .and_then(|_| file.flush())
                .err();
        }
        bar.inc(1);
    });
    if decoded.is_err() && done.is_empty() && written == 0 {
        // Nothing was answered: leave no empty output behind.
        let _ = std::fs::remove_file(output);
        let _ = std::fs::remove_file(settings_path(output));
    }
    decoded?;
    if let Some(e) = failed {
        return Err(e).with_context(|| format!("writing {}", output.display()));
    }
    let secs = started.elapsed().as_secs_f64();
    bar.finish_and_clear();
    drop(file);
    // In input order, each record's samples in order.
    let mut lines = written_lines(output, "not an answer line of `pctrain generate`")?;
    let key = |v: &serde_json::Value| {
        let id = v["id"].as_str().unwrap_or_default();
        (index.get(id).copied(), v["sample"].as_u64())
    };
    lines.sort_by_key(|(_, v)| key(v));
    let sorted: Vec<serde_json::Value> = lines.into_iter().map(|(_, v)| v).collect();
    write_jsonl(output, &sorted)?;
    eprintln!(
        "wrote {} answer{} to {} ({} from an earlier run; {tokens} tokens in {secs:.1} s, {:.1} \
         tokens/s)",
        sorted.len(),
        if sorted.len() == 1 { "" } else { "s" },
        output.display(),
        done.len(),
        tokens as f64 / secs.max(1e-9)
    );
    Ok(())
}

/// The records of `--data` to answer, their ids distinct (answers are matched to them by id).
fn read_records(args: &GenerateArgs) -> Result<Vec<ToAnswer>> {
    let mut records = Vec::new();
    let mut seen: HashMap<String, String> = HashMap::new();
    for path in pctrain_hub::data_files(&args.data)? {
        let mut reader = RecordReader::open(&path)?;
        while let Some(record) = reader.next() {
            let record = record?;
            let here = format!("{}:{}", path.display(), reader.line());
            if let Some(first) = seen.insert(record.id.clone(), here.clone()) {
                bail!(
                    "{here}: the id {:?} is also the id of {first}; answers are matched to records \
                     by id, so each needs its own",
                    record.id
                );
            }
            records.push(ToAnswer {
                prompt: prompt_of(&record, args.decode.system.as_deref())?,
                constraints: (!record.constraints.is_empty())
                    .then(|| constraint_fields(&record.constraints)),
                id: record.id,
            });
        }
    }
    if records.is_empty() {
        bail!("the data holds no record to answer");
    }
    Ok(records)
}

/// What decides the answers of `generate --data` (the batch size does not, on the CPU).
fn decode_settings(args: &GenerateArgs) -> serde_json::Value {
    let (m, d) = (&args.model, &args.decode);
    serde_json::json!({
        "base": m.base, "adapter": m.adapter, "device": m.device, "dtype": m.dtype,
        "template": args.template, "pc_template": args.pc_template, "system": d.system,
        "max_new_tokens": d.max_new_tokens, "temperature": d.temperature, "top_p": d.top_p,
        "top_k": d.top_k, "samples": d.samples, "seed": args.seed, "strip_pc": d.strip_pc,
        "no_strip_pc": d.no_strip_pc,
    })
}

/// `OUT.jsonl` -> `OUT.generate.json`: the settings the answers in `OUT.jsonl` were made with.
fn settings_path(output: &Path) -> PathBuf {
    let stem = output
        .file_stem()
        .map_or_else(|| "answers".into(), |s| s.to_string_lossy().into_owned());
    output.with_file_name(format!("{stem}.generate.json"))
}

/// The answers (record, sample) an earlier run of the same settings wrote to `output`; a line a
/// stop cut short is removed. Answers of other settings or other records are an error. Without
/// earlier answers, `settings` are written beside the output.
fn earlier_answers(
    output: &Path,
    records: &[ToAnswer],
    index: &HashMap<&str, usize>,
    k: usize,
    settings: &serde_json::Value,
) -> Result<HashSet<(usize, usize)>> {
    let what = "not an answer line of `pctrain generate`";
    let earlier = written_lines(output, what)?;
    let beside = settings_path(output);
    let start_afresh = "give another --output, or remove it to start afresh";
    if earlier.is_empty() {
        let text = serde_json::to_string_pretty(settings)? + "\n";
        pctrain_model::save::write_atomic(&beside, text.as_bytes())
            .with_context(|| format!("writing {}", beside.display()))?;
    } else {
        let saved: Option<serde_json::Value> = std::fs::read_to_string(&beside)
            .ok()
            .and_then(|t| serde_json::from_str(&t).ok());
        match saved {
            None => bail!(
                "{} holds answers, but not {} with the settings they were made with: {start_afresh}",
                output.display(),
                beside.display()
            ),
            Some(saved) if &saved != settings => {
                let changed: Vec<&str> = settings
                    .as_object()
                    .into_iter()
                    .flatten()
                    .filter(|(key, v)| saved.get(key.as_str()) != Some(v))
                    .map(|(key, _)| key.as_str())
                    .collect();
                bail!(
                    "{} holds answers made with other settings ({} differ, see {}): {start_afresh}",
                    output.display(),
                    changed.join(", "),
                    beside.display()
                )
            }
            Some(_) => {}
        }
    }
    let mut done = HashSet::new();
    for (line, v) in &earlier {
        let at = format!("{}:{line}", output.display());
        let (Some(id), Some(sample), Some(prompt)) = (
            v.get("id").and_then(|v| v.as_str()),
            v.get("sample").and_then(|v| v.as_u64()),
            v.get("prompt").and_then(|v| v.as_str()),
        ) else {
            bail!("{at}: {what} (no `id`, `sample` or `prompt`)");
        };
        let i = match index.get(id) {
            Some(&i) if (sample as usize) < k => i,
            _ => bail!(
                "{at}: holds an answer (id {id:?}, sample {sample}) that is not one of this run's \
                 --data and --samples: {start_afresh}"
            ),
        };
        let asked = records[i].prompt.last().map_or("", |m| m.content.as_str());
        if prompt != asked {
            bail!("{at}: answers another prompt than record {id:?} of --data has: {start_afresh}");
        }
        done.insert((i, sample as usize));
    }
    pctrain_data::reader::cut_torn_tail(output)?;
    Ok(done)
}

/// The output line of sample `sample` of `record`'s answers.
fn answer_line(record: &ToAnswer, sample: usize, a: &Answer) -> String {
    let last = record.prompt.last().map_or("", |m| m.content.as_str());
    let mut line = serde_json::json!({
        "id": record.id,
        "prompt": last,
        "sample": sample,
        "response": a.response,
        "response_raw": a.response_raw,
        "new_tokens": a.new_tokens,
    });
    if let Some((ids, kwargs)) = &record.constraints {
        line["instruction_id_list"] = ids.clone();
        line["kwargs"] = kwargs.clone();
    }
    line.to_string()
}
