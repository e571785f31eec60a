//! The pipeline's three prompts (generate, judge, repair): TOML files with a system message, a
//! user message template (minijinja: `{{ instruction }}`, `{{ pseudo_code }}`, `{{ reason }}`) and
//! few-shot examples. The defaults are `configs/prompts/`, built in; `--prompts DIR` replaces them
//! with a folder holding the same three files.

use std::path::Path;

use minijinja::Environment;
use serde::Deserialize;

use crate::error::{PseudoError, Result};

/// One chat message sent to the teacher.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct ChatMessage {
    pub role: &'static str,
    pub content: String,
}

/// One prompt file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct PromptFile {
    system: String,
    user: String,
    #[serde(default)]
    examples: Vec<Example>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct Example {
    user: String,
    assistant: String,
}

/// The three prompts, compiled.
pub struct Prompts {
    env: Environment<'static>,
    files: [PromptFile; 3],
}

/// Which prompt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stage {
    Generate = 0,
    Judge = 1,
    Repair = 2,
}

const NAMES: [&str; 3] = ["generate", "judge", "repair"];
const BUILT_IN: [&str; 3] = [
    include_str!("../../../configs/prompts/generate.toml"),
    include_str!("../../../configs/prompts/judge.toml"),
    include_str!("../../../configs/prompts/repair.toml"),
];

impl Prompts {
    /// The built-in prompts.
    pub fn built_in() -> Result<Self> {
        Self::from_texts(BUILT_IN.map(|t| (t.to_string(), "configs/prompts".to_string())))
    }

    /// `generate.toml`, `judge.toml` and `repair.toml` from `dir`.
    pub fn load(dir: &Path) -> Result<Self> {
        let read = |name: &str| -> Result<(String, String)> {
            let path = dir.join(format!("{name}.toml"));
            let text = std::fs::read_to_string(&path).map_err(|e| PseudoError::io(&path, e))?;
            Ok((text, dir.display().to_string()))
        };
        Self::from_texts([read(NAMES[0])?, read(NAMES[1])?, read(NAMES[2])?])
    }

    fn from_texts(texts: [(String, String); 3]) -> Result<Self> {
        let mut env = Environment::new();
        env.set_undefined_behavior(minijinja::UndefinedBehavior::Strict);
        let mut files = Vec::with_capacity(3);
        for (i, (text, dir)) in texts.into_iter().enumerate() {
            let origin = format!("{dir}/{}.toml", NAMES[i]);
            let file: PromptFile = toml::from_str(&text).map_err(|e| PseudoError::Prompt {
                path: origin.clone(),
                message: e.to_string(),
            })?;
            env.add_template_owned(NAMES[i], file.user.clone())
                .map_err(|e| PseudoError::Prompt {
                    path: origin,
                    message: format!("the `user` template: {e}"),
                })?;
            files.push(file);
        }
        let files: [PromptFile; 3] = files.try_into().expect("three prompt files");
        Ok(Prompts { env, files })
    }

    /// The messages of `stage` for these values (`pseudo_code` and `reason` where the stage uses
    /// them).
    pub fn messages(
        &self,
        stage: Stage,
        instruction: &str,
        pseudo_code: &str,
        reason: &str,
    ) -> Result<Vec<ChatMessage>> {
        let file = &self.files[stage as usize];
        let user = self
            .env
            .get_template(NAMES[stage as usize])
            .and_then(|t| t.render(minijinja::context! { instruction, pseudo_code, reason }))
            .map_err(|e| PseudoError::Prompt {
                path: format!("{}.toml", NAMES[stage as usize]),
                message: e.to_string(),
            })?;
        let mut out = vec![ChatMessage {
            role: "system",
            content: file.system.clone(),
        }];
        for ex in &file.examples {
            out.push(ChatMessage {
                role: "user",
                content: ex.user.clone(),
            });
            out.push(ChatMessage {
                role: "assistant",
                content: ex.assistant.clone(),
            });
        }
        out.push(ChatMessage {
            role: "user",
            content: user,
        });
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn built_in_prompts_render_their_values_after_the_examples() {
        let p = Prompts::built_in().unwrap();
        let m = p.messages(Stage::Generate, "Say hi.", "", "").unwrap();
        assert_eq!(m[0].role, "system");
        assert!(m.len() >= 3, "few-shot examples come before the request");
        assert!(m.last().unwrap().content.contains("Say hi."));
        let m = p
            .messages(Stage::Repair, "Say hi.", "def f(): pass", "no docstring")
            .unwrap();
        let last = &m.last().unwrap().content;
        assert!(last.contains("def f(): pass") && last.contains("no docstring"));
        // Every example answer of the generate prompt passes the structure check itself.
        for ex in &p.files[0].examples {
            crate::check::check_structure(&ex.assistant).unwrap();
        }
    }

    #[test]
    fn a_user_folder_replaces_them_and_mistakes_are_named() {
        let dir = tempfile::tempdir().unwrap();
        for (name, text) in NAMES.iter().zip(BUILT_IN) {
            std::fs::write(dir.path().join(format!("{name}.toml")), text).unwrap();
        }
        Prompts::load(dir.path()).unwrap();
        std::fs::write(
            dir.path().join("judge.toml"),
            "system = \"x\"\nuser = \"{{ instruction\"\n",
        )
        .unwrap();
        let e = Prompts::load(dir.path()).err().unwrap().to_string();
        assert!(e.contains("judge.toml"), "{e}");
        std::fs::remove_file(dir.path().join("repair.toml")).unwrap();
        let e = Prompts::load(dir.path()).err().unwrap().to_string();
        assert!(e.contains("repair.toml"), "{e}");
    }
}
