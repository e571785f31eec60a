//! Chat templates: a model's own Jinja `chat_template` or a built-in one, rendered with minijinja
//! set up as transformers sets up Jinja, and the assistant spans of the rendered text.

mod builtin;
mod pyjson;
mod spans;
mod strftime;

use std::path::{Path, PathBuf};

use minijinja::value::Value;
use minijinja::{Environment, Error as JinjaError, ErrorKind};
use serde::Serialize;

pub use builtin::{builtin, builtin_names, Builtin, BUILTINS};
pub use spans::Rendered;
pub use strftime::strftime;

use crate::error::{DataError, Result};
use crate::record::Message;

/// Special-token strings that templates see (`bos_token`, ...) and that close assistant turns.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SpecialTokens {
    pub bos: Option<String>,
    pub eos: Option<String>,
    pub unk: Option<String>,
    pub pad: Option<String>,
    /// Every special token of the tokenizer (added tokens marked special).
    pub all: Vec<String>,
}

/// Which template `--template` asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TemplateChoice {
    /// The tokenizer's own chat template when it has one, else `tulu`.
    Auto,
    /// The tokenizer's own chat template; an error when it has none.
    Model,
    Builtin(&'static Builtin),
    /// A Jinja file.
    File(PathBuf),
}

impl TemplateChoice {
    /// Parses `auto`, `hf`, a built-in name, or a path to a `.jinja` file.
    pub fn parse(name: &str) -> Result<Self> {
        match name {
            "auto" => Ok(TemplateChoice::Auto),
            "hf" | "model" => Ok(TemplateChoice::Model),
            _ => {
                if let Some(b) = builtin(name) {
                    Ok(TemplateChoice::Builtin(b))
                } else if name.ends_with(".jinja") || name.contains('/') {
                    Ok(TemplateChoice::File(PathBuf::from(name)))
                } else {
                    Err(DataError::UnknownTemplate {
                        name: name.to_string(),
                        available: builtin_names(),
                    })
                }
            }
        }
    }

    /// Builds the chosen template; `model_template` is the tokenizer's own, if any.
    pub fn load(&self, model_template: Option<&str>) -> Result<ChatTemplate> {
        let default = &BUILTINS[0];
        match (self, model_template) {
            (TemplateChoice::Auto, Some(text)) | (TemplateChoice::Model, Some(text)) => {
                ChatTemplate::new("the tokenizer's chat_template", text, &[])
            }
            (TemplateChoice::Auto, None) => ChatTemplate::from_builtin(default),
            (TemplateChoice::Model, None) => Err(DataError::template(
                "hf",
                "the tokenizer has no chat_template (tokenizer_config.json or chat_template.jinja); \
                 pick a built-in one with --template",
            )),
            (TemplateChoice::Builtin(b), _) => ChatTemplate::from_builtin(b),
            (TemplateChoice::File(path), _) => ChatTemplate::from_file(path),
        }
    }
}

/// A compiled chat template.
pub struct ChatTemplate {
    name: String,
    /// The Jinja source as given.
    source: String,
    env: Environment<'static>,
    /// Strings besides the EOS token that close an assistant turn.
    end_markers: Vec<String>,
}

impl std::fmt::Debug for ChatTemplate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChatTemplate")
            .field("name", &self.name)
            .finish()
    }
}

/// What a template sees as `messages[i]`.
#[derive(Debug, Clone, Serialize)]
struct TemplateMessage<'a> {
    role: &'a str,
    content: &'a str,
}

impl ChatTemplate {
    /// Compiles `source` in an environment that behaves as transformers' does: `trim_blocks`,
    /// `lstrip_blocks`, loop controls, Python string and dict methods, `raise_exception`, a
    /// Python-compatible `tojson`, and `strftime_now` (UTC). `{% generation %}` blocks render their
    /// body.
    pub fn new(name: &str, source: &str, end_markers: &[&str]) -> Result<Self> {
        let mut env = Environment::new();
        let syntax = minijinja::syntax::SyntaxConfig::builder()
            .trim_blocks(true)
            .lstrip_blocks(true)
            .keep_trailing_newline(false)
            .build()
            .map_err(|e| DataError::template(name, e))?;
        env.set_syntax(syntax);
        env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
        env.add_filter("tojson", pyjson::tojson);
        env.add_function(
            "raise_exception",
            |message: String| -> std::result::Result<Value, JinjaError> {
                Err(JinjaError::new(ErrorKind::InvalidOperation, message))
            },
        );
        let mut template = ChatTemplate {
            name: name.to_string(),
            source: source.to_string(),
            env,
            end_markers: end_markers.iter().map(|s| s.to_string()).collect(),
        };
        template.set_now(strftime::unix_now());
        template
            .env
            .add_template_owned("chat", rewrite_generation_tags(source))
            .map_err(|e| DataError::template(name, jinja_message(&e)))?;
        Ok(template)
    }

    pub fn from_builtin(b: &Builtin) -> Result<Self> {
        ChatTemplate::new(b.name, b.source, b.end_markers)
    }

    /// Reads a `.jinja` file.
    pub fn from_file(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| DataError::io(path, e))?;
        ChatTemplate::new(&path.display().to_string(), &text, &[])
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// The Jinja source, as an export's `chat_template`.
    pub fn source(&self) -> &str {
        &self.source
    }

    /// Fixes the time `strftime_now` reports (Unix seconds, UTC); it is the current time otherwise.
    pub fn set_now(&mut self, unix_seconds: i64) {
        self.env
            .add_function("strftime_now", move |format: String| {
                strftime::strftime(unix_seconds, &format)
            });
    }

    /// Renders `messages` to text, as `apply_chat_template(..., tokenize=False)` does.
    pub fn render(
        &self,
        messages: &[Message],
        add_generation_prompt: bool,
        special: &SpecialTokens,
    ) -> Result<String> {
        let messages: Vec<TemplateMessage> = messages
            .iter()
            .map(|m| TemplateMessage {
                role: match m.role {
                    crate::Role::System => "system",
                    crate::Role::User => "user",
                    crate::Role::Assistant => "assistant",
                },
                content: &m.content,
            })
            .collect();
        // Missing special tokens stay undefined, as in transformers, where only the tokens the
        // tokenizer has are passed.
        let mut ctx: Vec<(&str, Value)> = vec![
            ("messages", Value::from(minijinja::value::Serde(messages))),
            ("add_generation_prompt", Value::from(add_generation_prompt)),
            ("tools", Value::from(())),
            ("documents", Value::from(())),
        ];
        for (key, token) in [
            ("bos_token", &special.bos),
            ("eos_token", &special.eos),
            ("unk_token", &special.unk),
            ("pad_token", &special.pad),
        ] {
            if let Some(t) = token {
                ctx.push((key, Value::from(t.as_str())));
            }
        }
        let ctx: std::collections::BTreeMap<&str, Value> = ctx.into_iter().collect();
        let ctx = Value::from(ctx);
        let template = self
            .env
            .get_template("chat")
            .map_err(|e| DataError::template(&self.name, jinja_message(&e)))?;
        template
            .render(ctx)
            .map_err(|e| DataError::template(&self.name, jinja_message(&e)))
    }

    /// Renders a conversation for training and finds the byte spans of the assistant turns.
    pub fn render_with_spans(
        &self,
        id: &str,
        messages: &[Message],
        special: &SpecialTokens,
    ) -> Result<Rendered> {
        spans::render_with_spans(self, id, messages, special)
    }

    /// The token that closes an assistant turn in this template, found by rendering one: the
    /// longest of EOS, the template's markers and the special tokens that the text after the
    /// answer starts with (white space skipped). `None` when the turn ends in plain text.
    pub fn turn_end(&self, special: &SpecialTokens) -> Option<String> {
        const ANSWER: &str = "\u{1}pctrain-answer\u{1}";
        let messages = [
            Message::new(crate::Role::User, "Hi"),
            Message::new(crate::Role::Assistant, ANSWER),
        ];
        let text = self.render(&messages, false, special).ok()?;
        let after = text[text.find(ANSWER)? + ANSWER.len()..].trim_start();
        self.closing_tokens(special)
            .into_iter()
            .find(|t| after.starts_with(t.as_str()))
    }

    /// The strings that may close an assistant turn: EOS, this template's markers, and every special
    /// token of the tokenizer; longest first.
    fn closing_tokens(&self, special: &SpecialTokens) -> Vec<String> {
        let mut all: Vec<String> = special
            .eos
            .iter()
            .chain(&self.end_markers)
            .chain(&special.all)
            .filter(|s| !s.is_empty())
            .cloned()
            .collect();
        all.sort_by_key(|s| std::cmp::Reverse(s.len()));
        all.dedup();
        all
    }
}

/// transformers' `{% generation %}...{% endgeneration %}` marks assistant text; minijinja has no
/// such tag, so it becomes an always-true `if`, whitespace control kept.
fn rewrite_generation_tags(source: &str) -> String {
    let mut out = String::with_capacity(source.len());
    let mut rest = source;
    while let Some(start) = rest.find("{%") {
        out.push_str(&rest[..start]);
        // The tag runs to the first `%}` after its own `{%`.
        let Some(len) = rest[start + 2..].find("%}").map(|i| i + 4) else {
            rest = &rest[start..];
            break;
        };
        let tag = &rest[start..start + len];
        let body = &tag[2..len - 2];
        let inner = body.trim_matches(['-', '+']).trim();
        let open = if body.starts_with(['-', '+']) {
            &tag[..3]
        } else {
            "{%"
        };
        let close = if body.ends_with(['-', '+']) && body.len() > 1 {
            &tag[len - 3..]
        } else {
            "%}"
        };
        match inner {
            "generation" => out.push_str(&format!("{open} if true {close}")),
            "endgeneration" => out.push_str(&format!("{open} endif {close}")),
            _ => out.push_str(tag),
        }
        rest = &rest[start + len..];
    }
    out.push_str(rest);
    out
}

/// A Jinja error with its cause chain, on one line.
fn jinja_message(e: &JinjaError) -> String {
    let mut msg = e.to_string();
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        msg.push_str(&format!(": {s}"));
        source = s.source();
    }
    msg
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generation_tags_become_plain_blocks() {
        let src = "{%- generation -%}x{% endgeneration %}{% if a %}y{% endif %}";
        assert_eq!(
            rewrite_generation_tags(src),
            "{%- if true -%}x{% endif %}{% if a %}y{% endif %}"
        );
    }

    #[test]
    fn odd_tag_text_passes_through_unchanged() {
        for src in ["{%}", "a {% b", "{{ '{%}' }}", "{%-%}", "{%%}x"] {
            assert_eq!(rewrite_generation_tags(src), src, "{src}");
        }
    }

    #[test]
    fn template_choice_parses_names_and_files() {
        assert_eq!(TemplateChoice::parse("auto").unwrap(), TemplateChoice::Auto);
        assert!(
            matches!(TemplateChoice::parse("chatml").unwrap(), TemplateChoice::Builtin(b) if b.name == "chatml")
        );
        assert!(matches!(
            TemplateChoice::parse("my.jinja").unwrap(),
            TemplateChoice::File(_)
        ));
        let err = TemplateChoice::parse("vicuna").unwrap_err().to_string();
        assert!(err.contains("vicuna") && err.contains("tulu"), "{err}");
    }

    #[test]
    fn raise_exception_fails_the_render() {
        let t = ChatTemplate::new("t", "{{ raise_exception('no system role') }}", &[]).unwrap();
        let err = t.render(&[], false, &SpecialTokens::default()).unwrap_err();
        assert!(err.to_string().contains("no system role"), "{err}");
    }

    #[test]
    fn syntax_errors_name_the_template() {
        let err = ChatTemplate::new("broken", "{% for %}", &[]).unwrap_err();
        assert!(
            err.to_string().starts_with("chat template broken:"),
            "{err}"
        );
    }
}
