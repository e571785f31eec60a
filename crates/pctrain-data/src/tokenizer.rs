//! Tokenizers: a `tokenizer.json`, a model folder, or a hub id, with the special tokens and chat
//! template of `tokenizer_config.json` (and `chat_template.jinja`, which wins).

use std::path::Path;

use serde_json::Value;
use tokenizers::Tokenizer;

use crate::error::{DataError, Result};
use crate::template::SpecialTokens;
use pctrain_hub::{self as hub, HubRepo};

/// The `tiny` preset's `tokenizer.json`.
pub const TINY_TOKENIZER: &[u8] = include_bytes!("../../../assets/tiny/tokenizer.json");
/// The `tiny` preset's `tokenizer_config.json`.
pub const TINY_CONFIG: &str = include_str!("../../../assets/tiny/tokenizer_config.json");

/// A tokenizer with what chat templates and labels need from its config.
pub struct TextTokenizer {
    tokenizer: Tokenizer,
    /// Where it came from, for messages.
    source: String,
    pub special: SpecialTokens,
    /// The model's own chat template, if it has one.
    pub chat_template: Option<String>,
    /// Id used to pad rows: the pad token, else EOS, else 0.
    pub pad_id: u32,
    /// `tokenizer.json` and `tokenizer_config.json` as read, for exports.
    json_bytes: Vec<u8>,
    config_text: Option<String>,
}

impl std::fmt::Debug for TextTokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TextTokenizer")
            .field("source", &self.source)
            .finish()
    }
}

/// Token ids of a text and each token's byte range in it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tokens {
    pub ids: Vec<u32>,
    pub offsets: Vec<(usize, usize)>,
}

impl TextTokenizer {
    /// Loads from a `tokenizer.json` file, a folder holding one, or a hub id (`owner/name[@rev]`).
    pub fn load(spec: &str) -> Result<Self> {
        let path = Path::new(spec);
        if path.is_file() {
            let folder = path.parent().unwrap_or(Path::new("."));
            let config = folder.join("tokenizer_config.json");
            let jinja = folder.join("chat_template.jinja");
            return Self::from_files(
                path,
                config.is_file().then_some(config.as_path()),
                jinja.is_file().then_some(jinja.as_path()),
            );
        }
        if path.is_dir() {
            let json = path.join("tokenizer.json");
            if !json.is_file() {
                return Err(DataError::tokenizer(
                    spec,
                    "folder has no tokenizer.json (only fast tokenizers in tokenizer.json are supported)",
                ));
            }
            let config = path.join("tokenizer_config.json");
            let jinja = path.join("chat_template.jinja");
            return Self::from_files(
                &json,
                config.is_file().then_some(config.as_path()),
                jinja.is_file().then_some(jinja.as_path()),
            );
        }
        match HubRepo::parse(spec) {
            Some(repo) => Self::from_hub(&repo),
            None => Err(DataError::io(
                path,
                std::io::Error::new(
                    std::io::ErrorKind::NotFound,
                    "no such tokenizer.json or model folder, and not a hub id (owner/name)",
                ),
            )),
        }
    }

    /// Downloads `tokenizer.json`, and when present `tokenizer_config.json` and
    /// `chat_template.jinja`, into the Hugging Face cache.
    pub fn from_hub(repo: &HubRepo) -> Result<Self> {
        let json = hub::fetch(repo, "tokenizer.json", true)?.expect("required file");
        let config = hub::fetch(repo, "tokenizer_config.json", false)?;
        let jinja = hub::fetch(repo, "chat_template.jinja", false)?;
        Self::from_files(&json, config.as_deref(), jinja.as_deref())
    }

    /// Loads `tokenizer.json` with an optional `tokenizer_config.json` and `chat_template.jinja`.
    pub fn from_files(json: &Path, config: Option<&Path>, jinja: Option<&Path>) -> Result<Self> {
        let json_bytes = std::fs::read(json).map_err(|e| DataError::io(json, e))?;
        let tokenizer = Tokenizer::from_bytes(&json_bytes)
            .map_err(|e| DataError::tokenizer(json.display(), e))?;
        let config = match config {
            Some(p) => Some((
                p,
                std::fs::read_to_string(p).map_err(|e| DataError::io(p, e))?,
            )),
            None => None,
        };
        let jinja = match jinja {
            Some(p) => Some(std::fs::read_to_string(p).map_err(|e| DataError::io(p, e))?),
            None => None,
        };
        Self::from_parts(
            tokenizer,
            json.display().to_string(),
            json_bytes,
            config.as_ref().map(|(p, t)| (*p, t.as_str())),
            jinja,
        )
    }

    /// The tokenizer of the `tiny` preset, built into the binary: a byte-level BPE trained on the
    /// project's own text (`assets/tiny`).
    pub fn tiny() -> Result<Self> {
        let tokenizer =
            Tokenizer::from_bytes(TINY_TOKENIZER).map_err(|e| DataError::tokenizer("tiny", e))?;
        Self::from_parts(
            tokenizer,
            "tiny".into(),
            TINY_TOKENIZER.to_vec(),
            Some((Path::new("assets/tiny/tokenizer_config.json"), TINY_CONFIG)),
            None,
        )
    }

    /// Joins a tokenizer with its config text (`path` names it in errors) and chat template.
    fn from_parts(
        tokenizer: Tokenizer,
        source: String,
        json_bytes: Vec<u8>,
        config: Option<(&Path, &str)>,
        chat_template_jinja: Option<String>,
    ) -> Result<Self> {
        let all_special: Vec<String> = {
            let mut added: Vec<(u32, String)> = tokenizer
                .get_added_tokens_decoder()
                .into_iter()
                .filter(|(_, t)| t.special)
                .map(|(id, t)| (id, t.content))
                .collect();
            added.sort();
            added.into_iter().map(|(_, c)| c).collect()
        };
        let (mut special, mut chat_template) = match config {
            Some((path, text)) => read_config(path, text)?,
            None => (SpecialTokens::default(), None),
        };
        special.all = all_special;
        if config.is_none() {
            guess_special_tokens(&mut special);
        }
        if chat_template_jinja.is_some() {
            chat_template = chat_template_jinja;
        }
        let id_of = |t: &Option<String>| t.as_deref().and_then(|t| tokenizer.token_to_id(t));
        let pad_id = id_of(&special.pad).or(id_of(&special.eos)).unwrap_or(0);
        Ok(TextTokenizer {
            tokenizer,
            source,
            special,
            chat_template,
            pad_id,
            json_bytes,
            config_text: config.map(|(_, t)| t.to_string()),
        })
    }

    /// The files a saved model carries for this tokenizer: `tokenizer.json` as loaded,
    /// `tokenizer_config.json` with `chat_template` set to `template`, and `chat_template.jinja`
    /// (transformers reads either).
    pub fn export_files(&self, template: Option<&str>) -> Vec<(String, Vec<u8>)> {
        let mut files = vec![("tokenizer.json".to_string(), self.json_bytes.clone())];
        let mut config = self
            .config_text
            .as_deref()
            .and_then(|t| serde_json::from_str::<serde_json::Value>(t).ok())
            .filter(|v| v.is_object())
            .unwrap_or_else(|| serde_json::json!({}));
        if let Some(template) = template {
            config["chat_template"] = template.into();
            files.push(("chat_template.jinja".into(), template.as_bytes().to_vec()));
        }
        let text = serde_json::to_string_pretty(&config).expect("a JSON value serialises") + "\n";
        files.push(("tokenizer_config.json".into(), text.into_bytes()));
        files
    }

    /// Encodes `text` as it is: no BOS or EOS added (chat templates write their own).
    pub fn encode(&self, text: &str) -> Result<Tokens> {
        let enc = self
            .tokenizer
            .encode(text, false)
            .map_err(|e| DataError::tokenizer(&self.source, e))?;
        Ok(Tokens {
            ids: enc.get_ids().to_vec(),
            offsets: enc.get_offsets().to_vec(),
        })
    }

    /// Decodes ids to text, special tokens included.
    pub fn decode(&self, ids: &[u32]) -> Result<String> {
        self.tokenizer
            .decode(ids, false)
            .map_err(|e| DataError::tokenizer(&self.source, e))
    }

    /// Decodes ids to text without the special tokens, as a model's answer is read.
    pub fn decode_text(&self, ids: &[u32]) -> Result<String> {
        self.tokenizer
            .decode(ids, true)
            .map_err(|e| DataError::tokenizer(&self.source, e))
    }

    pub fn token_to_id(&self, token: &str) -> Option<u32> {
        self.tokenizer.token_to_id(token)
    }

    pub fn vocab_size(&self) -> usize {
        self.tokenizer.get_vocab_size(true)
    }

    /// The underlying `tokenizers` tokenizer.
    pub fn inner(&self) -> &Tokenizer {
        &self.tokenizer
    }
}

/// Reads special tokens and `chat_template` from `tokenizer_config.json`.
fn read_config(path: &Path, text: &str) -> Result<(SpecialTokens, Option<String>)> {
    let bad = |message: String| DataError::Config(format!("{}: {message}", path.display()));
    let v: Value = serde_json::from_str(text).map_err(|e| bad(format!("malformed JSON: {e}")))?;
    let token = |key: &str| -> Result<Option<String>> {
        match v.get(key) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::String(s)) => Ok(Some(s.clone())),
            Some(Value::Object(o)) => match o.get("content") {
                Some(Value::String(s)) => Ok(Some(s.clone())),
                _ => Err(bad(format!(
                    "field `{key}`: object without a string `content`"
                ))),
            },
            Some(_) => Err(bad(format!(
                "field `{key}`: expected a string or an object"
            ))),
        }
    };
    let chat_template = match v.get("chat_template") {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) => Some(s.clone()),
        // Named templates: [{"name": "default", "template": "..."}, ...]
        Some(Value::Array(named)) => {
            let pick = named
                .iter()
                .find(|t| t.get("name").and_then(Value::as_str) == Some("default"))
                .or_else(|| named.first());
            pick.and_then(|t| t.get("template"))
                .and_then(Value::as_str)
                .map(String::from)
        }
        Some(_) => {
            return Err(bad(
                "field `chat_template`: expected a string or a list".into()
            ))
        }
    };
    let special = SpecialTokens {
        bos: token("bos_token")?,
        eos: token("eos_token")?,
        unk: token("unk_token")?,
        pad: token("pad_token")?,
        all: Vec::new(),
    };
    Ok((special, chat_template))
}

/// A bare `tokenizer.json` names no BOS or EOS: take the usual ones among its special tokens.
fn guess_special_tokens(special: &mut SpecialTokens) {
    let find = |names: &[&str]| {
        names
            .iter()
            .find(|n| special.all.iter().any(|t| t == *n))
            .map(|n| n.to_string())
    };
    special.bos = find(&["<|begin_of_text|>", "<s>", "<|startoftext|>", "<bos>"]);
    special.eos = find(&[
        "<|end_of_text|>",
        "</s>",
        "<|endoftext|>",
        "<|im_end|>",
        "<eos>",
    ]);
    special.unk = find(&["<unk>", "<|unk|>"]);
    special.pad = find(&["<pad>", "<|pad|>", "<|finetune_right_pad_id|>"]);
}
