//! Presets: one config file per model in `configs/`, built into the binary. `--base NAME` puts a
//! preset's settings underneath the run's own.

/// A preset: its name and its config file's text.
#[derive(Debug, Clone, Copy)]
pub struct Preset {
    pub name: &'static str,
    pub text: &'static str,
}

macro_rules! preset {
    ($name:literal) => {
        Preset {
            name: $name,
            text: include_str!(concat!("../../../configs/", $name, ".toml")),
        }
    };
}

/// Every preset, smallest first.
pub const PRESETS: &[Preset] = &[
    preset!("tiny"),
    preset!("llama3.2-1b"),
    preset!("granite-3.1-2b"),
    preset!("llama3.2-3b"),
    preset!("mistral-7b"),
    preset!("llama3-8b"),
    preset!("llama3.1-8b"),
    preset!("granite-3.1-8b"),
];

/// The preset called `name`.
pub fn find(name: &str) -> Option<Preset> {
    PRESETS.iter().copied().find(|p| p.name == name)
}

impl Preset {
    /// The first comment line of its config: what it is.
    pub fn about(&self) -> &'static str {
        self.text
            .lines()
            .next()
            .and_then(|l| l.strip_prefix('#'))
            .map_or("", str::trim)
    }
}

/// `pctrain presets`: one line a preset (name, model, what it is), or its whole config.
pub fn run(name: Option<&str>) -> anyhow::Result<()> {
    match name {
        Some(name) => {
            let preset = find(name).ok_or_else(|| {
                anyhow::anyhow!(
                    "unknown preset {name:?} (known: {})",
                    PRESETS
                        .iter()
                        .map(|p| p.name)
                        .collect::<Vec<_>>()
                        .join(", ")
                )
            })?;
            print!("{}", preset.text);
        }
        None => {
            for p in PRESETS {
                let settings: crate::settings::Settings =
                    toml::from_str(p.text).expect("a built-in preset parses");
                println!("{:<16} {:<34} {}", p.name, settings.base, p.about());
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;
    use crate::settings::Settings;

    #[test]
    fn every_preset_resolves_and_says_what_it_is() {
        for p in PRESETS {
            assert!(!p.about().is_empty(), "{}", p.name);
            let flags: toml::Table = toml::from_str(&format!("base = \"{}\"", p.name)).unwrap();
            let s = Settings::resolve(None, flags).unwrap();
            assert_eq!(s.preset.as_deref(), Some(p.name));
            assert!(
                s.tiny() || pctrain_hub::HubRepo::parse(&s.base).is_some(),
                "{}: base {:?} is neither tiny nor a hub id",
                p.name,
                s.base
            );
        }
    }

    #[test]
    fn the_configs_folder_has_exactly_the_presets() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../configs");
        let mut files: Vec<String> = std::fs::read_dir(dir)
            .unwrap()
            .filter_map(|e| {
                e.ok()?
                    .file_name()
                    .to_str()?
                    .strip_suffix(".toml")
                    .map(String::from)
            })
            .collect();
        files.sort();
        let mut names: Vec<String> = PRESETS.iter().map(|p| p.name.to_string()).collect();
        names.sort();
        assert_eq!(files, names);
    }
}
