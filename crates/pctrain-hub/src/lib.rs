//! Downloads from the Hugging Face hub into the shared cache (`$HF_HOME/hub`), and uploads of
//! export folders, through `hf-hub`. `HF_ENDPOINT`, `HF_TOKEN`, `HF_HOME` and `HF_HUB_CACHE` are
//! read as the Python libraries read them; `HF_HUB_OFFLINE=1` resolves from the cache only. The
//! token is never printed.

use std::path::{Path, PathBuf};

use hf_hub::progress::{DownloadEvent, ProgressEvent, ProgressHandler};
use hf_hub::{HFClientSync, HFError, RepoTypeModel};
use indicatif::{ProgressBar, ProgressStyle};

/// What can go wrong talking to the hub, or finding what a name points to.
#[derive(Debug, thiserror::Error)]
pub enum HubError {
    /// A repository that cannot be reached, read or written.
    #[error("hub repo {repo}: {message}")]
    Repo { repo: String, message: String },
    /// A file of the cache that cannot be read.
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// A data argument that is neither a file nor a hub dataset.
    #[error("{0}: no such file, and not a hub dataset (owner/name[@revision][:files])")]
    NotData(String),
}

/// Result alias for the hub crate.
pub type Result<T> = std::result::Result<T, HubError>;

/// A hub repository id, `owner/name`, with an optional revision (`owner/name@rev`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HubRepo {
    pub id: String,
    pub revision: Option<String>,
}

impl HubRepo {
    /// Parses `owner/name` or `owner/name@revision`; `None` for anything else (a path, say).
    pub fn parse(spec: &str) -> Option<HubRepo> {
        let (id, revision) = match spec.split_once('@') {
            Some((id, rev)) if !rev.is_empty() => (id, Some(rev.to_string())),
            Some(_) => return None,
            None => (spec, None),
        };
        let (owner, name) = id.split_once('/')?;
        let valid = |s: &str| {
            !s.is_empty()
                && !s.starts_with('.')
                && s.chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        };
        (valid(owner) && valid(name)).then(|| HubRepo {
            id: id.to_string(),
            revision,
        })
    }
}

impl std::fmt::Display for HubRepo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.revision {
            Some(r) => write!(f, "{}@{r}", self.id),
            None => f.write_str(&self.id),
        }
    }
}

/// Whether `HF_HUB_OFFLINE` asks for cache-only resolution.
pub fn offline() -> bool {
    std::env::var("HF_HUB_OFFLINE")
        .map(|v| {
            matches!(
                v.trim().to_ascii_lowercase().as_str(),
                "1" | "true" | "yes" | "on"
            )
        })
        .unwrap_or(false)
}

/// Fetches `filename` from `repo` (or finds it in the cache). `Ok(None)` when the repository has no
/// such file and `required` is false.
pub fn fetch(repo: &HubRepo, filename: &str, required: bool) -> Result<Option<PathBuf>> {
    let client = HFClientSync::new().map_err(|e| hub_error(repo, e))?;
    let (owner, name) = repo.id.split_once('/').expect("a parsed id has an owner");
    let handle = client.model(owner, name);
    let request = handle
        .download_file()
        .filename(filename)
        .maybe_revision(repo.revision.clone())
        .local_files_only(offline())
        .progress(DownloadBar::new(filename));
    match request.send() {
        Ok(path) => Ok(Some(path)),
        Err(HFError::EntryNotFound { .. }) if !required => Ok(None),
        Err(HFError::LocalEntryNotFound { .. }) if !required => Ok(None),
        Err(e) => Err(hub_error(repo, e)),
    }
}

/// A dataset repository of the hub and the files wanted from it:
/// `owner/name[@revision][:path-or-glob]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HubDataset {
    pub repo: HubRepo,
    /// A file's path in the repository or a glob (`data/*.parquet`); `None`: every JSONL and
    /// Parquet file.
    pub files: Option<String>,
}

impl HubDataset {
    /// Parses `owner/name[@revision][:path-or-glob]`; `None` for anything else.
    pub fn parse(spec: &str) -> Option<HubDataset> {
        let (repo, files) = match spec.split_once(':') {
            Some((repo, files)) if !files.is_empty() => (repo, Some(files.to_string())),
            Some(_) => return None,
            None => (spec, None),
        };
        Some(HubDataset {
            repo: HubRepo::parse(repo)?,
            files,
        })
    }

    /// The globs its files match.
    fn patterns(&self) -> Vec<String> {
        match &self.files {
            Some(f) => vec![f.clone()],
            None => ["*.jsonl", "*.parquet", "**/*.jsonl", "**/*.parquet"]
                .map(String::from)
                .to_vec(),
        }
    }
}

impl std::fmt::Display for HubDataset {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.files {
            Some(files) => write!(f, "{}:{files}", self.repo),
            None => write!(f, "{}", self.repo),
        }
    }
}

/// The data files of `dataset` (JSONL or Parquet, sorted by path), downloaded into the cache
/// (or, offline, found there as `huggingface-cli download --repo-type dataset` leaves them).
pub fn dataset_files(dataset: &HubDataset) -> Result<Vec<PathBuf>> {
    let repo = &dataset.repo;
    let client = HFClientSync::new().map_err(|e| hub_error(repo, e))?;
    let (owner, name) = repo.id.split_once('/').expect("a parsed id has an owner");
    let patterns = dataset.patterns();
    let snapshot = client
        .dataset(owner, name)
        .snapshot_download()
        .maybe_revision(repo.revision.clone())
        .allow_patterns(patterns.clone())
        .local_files_only(offline())
        .progress(DownloadBar::new(&repo.id))
        .send()
        .map_err(|e| hub_error(repo, e))?;
    let matchers: Vec<globset::GlobMatcher> = patterns
        .iter()
        .map(|p| globset::Glob::new(p).map(|g| g.compile_matcher()))
        .collect::<std::result::Result<_, _>>()
        .map_err(|e| HubError::Repo {
            repo: dataset.to_string(),
            message: format!("not a valid glob: {e}"),
        })?;
    let mut files = Vec::new();
    let mut dirs = vec![snapshot.clone()];
    while let Some(dir) = dirs.pop() {
        let entries = std::fs::read_dir(&dir).map_err(|e| HubError::Io {
            path: dir.clone(),
            source: e,
        })?;
        for entry in entries {
            let path = entry
                .map_err(|e| HubError::Io {
                    path: dir.clone(),
                    source: e,
                })?
                .path();
            if path.is_dir() {
                dirs.push(path);
                continue;
            }
            let rel = path.strip_prefix(&snapshot).unwrap_or(&path);
            let rel = rel.to_string_lossy().replace('\\', "/");
            let data = [".jsonl", ".json", ".parquet"]
                .iter()
                .any(|e| rel.ends_with(e));
            if data && matchers.iter().any(|m| m.is_match(&rel)) {
                files.push(path);
            }
        }
    }
    files.sort();
    if files.is_empty() {
        return Err(HubError::Repo {
            repo: dataset.to_string(),
            message: "the dataset has no JSONL or Parquet file matching this (give the files \
                      after a colon: owner/name:data/*.parquet)"
                .into(),
        });
    }
    Ok(files)
}

/// The files data arguments name: a file as it is; a hub dataset
/// (`owner/name[@revision][:path-or-glob]`) as its downloaded files.
pub fn data_files(specs: &[PathBuf]) -> Result<Vec<PathBuf>> {
    let mut files = Vec::new();
    for spec in specs {
        if spec.exists() {
            files.push(spec.clone());
            continue;
        }
        let text = spec.to_string_lossy();
        match HubDataset::parse(&text) {
            Some(dataset) => files.extend(dataset_files(&dataset)?),
            None => return Err(HubError::NotData(text.into_owned())),
        }
    }
    Ok(files)
}

/// A download's progress bar on stderr (drawn only on a terminal).
struct DownloadBar(ProgressBar);

impl DownloadBar {
    fn new(filename: &str) -> Self {
        let bar = ProgressBar::new(0).with_style(
            ProgressStyle::with_template(
                "{msg:>28} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} {eta}",
            )
            .expect("valid template"),
        );
        bar.set_message(filename.to_string());
        DownloadBar(bar)
    }
}

impl ProgressHandler for DownloadBar {
    fn on_progress(&self, event: &ProgressEvent) {
        let ProgressEvent::Download(event) = event else {
            return;
        };
        match event {
            DownloadEvent::Start { total_bytes, .. } => self.0.set_length(*total_bytes),
            DownloadEvent::Progress { files } => {
                for f in files {
                    if f.total_bytes > 0 {
                        self.0.set_length(f.total_bytes);
                    }
                    self.0.set_position(f.bytes_completed);
                }
            }
            DownloadEvent::AggregateProgress {
                bytes_completed,
                total_bytes,
                ..
            } => {
                self.0.set_length(*total_bytes);
                self.0.set_position(*bytes_completed);
            }
            DownloadEvent::Complete => self.0.finish_and_clear(),
        }
    }
}

/// Creates the model repository `repo_id` (`owner/name`) if it does not exist, then uploads every
/// file of `folder` to it in one commit. Returns the repository's URL.
pub fn upload_folder(repo_id: &str, folder: &Path, private: bool, message: &str) -> Result<String> {
    let repo = HubRepo::parse(repo_id)
        .filter(|r| r.revision.is_none())
        .ok_or_else(|| HubError::Repo {
            repo: repo_id.to_string(),
            message: "not a repository id (owner/name)".into(),
        })?;
    if offline() {
        return Err(HubError::Repo {
            repo: repo.id.clone(),
            message: "HF_HUB_OFFLINE is set: uploads need the network".into(),
        });
    }
    let client = HFClientSync::new().map_err(|e| hub_error(&repo, e))?;
    let created = client
        .create_repository()
        .repo_id(&repo.id)
        .repo_type(RepoTypeModel)
        .private(private)
        .exist_ok(true)
        .send()
        .map_err(|e| hub_error(&repo, e))?;
    let (owner, name) = repo.id.split_once('/').expect("a parsed id has an owner");
    client
        .model(owner, name)
        .upload_folder()
        .folder_path(folder)
        .commit_message(message.to_string())
        .send()
        .map_err(|e| hub_error(&repo, e))?;
    Ok(created.url)
}

fn hub_error(repo: &HubRepo, e: HFError) -> HubError {
    let message = match &e {
        HFError::AuthRequired { .. } | HFError::Forbidden { .. } => format!(
            "{e}. The repository is gated or private, or the token may not write to it: accept \
             its licence at https://huggingface.co/{} and log in (`hf auth login`, or set \
             HF_TOKEN to a token with the access needed)",
            repo.id
        ),
        HFError::LocalEntryNotFound { .. } => {
            format!("{e}. HF_HUB_OFFLINE is set and the file is not in the local cache")
        }
        HFError::RepoNotFound { .. } | HFError::RevisionNotFound { .. } => format!(
            "{e}. No such repository or revision on the hub (or it is private: log in to see it)"
        ),
        _ => e.to_string(),
    };
    HubError::Repo {
        repo: repo.to_string(),
        message,
    }
}

#[cfg(test)]
mod tests {
    use super::HubRepo;

    #[test]
    fn parses_ids_and_rejects_paths() {
        assert_eq!(
            HubRepo::parse("meta-llama/Meta-Llama-3-8B"),
            Some(HubRepo {
                id: "meta-llama/Meta-Llama-3-8B".into(),
                revision: None
            })
        );
        assert_eq!(
            HubRepo::parse("org/model@v1.0")
                .unwrap()
                .revision
                .as_deref(),
            Some("v1.0")
        );
        for not_an_id in [
            "model",
            "./a/b",
            "/abs/path",
            "a/b/c",
            "a/",
            "org/model@",
            "../x",
        ] {
            assert_eq!(HubRepo::parse(not_an_id), None, "{not_an_id}");
        }
    }
}
