//! The Hugging Face hub on the loopback server, for tests. Downloads: `HEAD`/`GET
//! /{owner}/{name}/resolve/main/{file}` as the hub answers them (ETag, X-Repo-Commit,
//! Content-Length), 404 for missing files, 401 for gated repositories; dataset repositories
//! (keyed `datasets/{owner}/{name}`) with their revision and file tree as well. Uploads, as hf-hub
//! sends them: repository creation, preupload (safetensors marked for LFS), the LFS batch
//! (answered without xet, so files come inline) and the NDJSON commit, whose files are kept for
//! the test to read. Every request is recorded. Point `HF_ENDPOINT` at [`LoopbackHub::endpoint`].

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};

use crate::http::{self, Response};

/// The commit every repository of the loopback hub is at.
pub const COMMIT: &str = "0123456789abcdef0123456789abcdef01234567";

/// One request the server answered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    pub method: String,
    pub path: String,
    pub authorization: Option<String>,
}

/// Repository id -> file name -> contents.
pub type Repos = HashMap<String, HashMap<String, Vec<u8>>>;

/// What was uploaded: repository id -> (private, file name -> contents).
pub type Uploads = HashMap<String, (bool, HashMap<String, Vec<u8>>)>;

/// A loopback hub serving `repos`.
pub struct LoopbackHub {
    pub endpoint: String,
    log: Arc<Mutex<Vec<Request>>>,
    uploads: Arc<Mutex<Uploads>>,
}

/// What a request's handler shares.
struct Shared {
    endpoint: String,
    repos: Repos,
    gated: HashSet<String>,
    log: Arc<Mutex<Vec<Request>>>,
    uploads: Arc<Mutex<Uploads>>,
}

impl LoopbackHub {
    /// Starts serving, for at most `max_requests` requests.
    pub fn start(repos: Repos, gated: &[&str], max_requests: usize) -> std::io::Result<Self> {
        let server = http::Server::bind()?;
        let endpoint = server.url.clone();
        let shared = Shared {
            endpoint: endpoint.clone(),
            repos,
            gated: gated.iter().map(|s| s.to_string()).collect(),
            log: Arc::default(),
            uploads: Arc::default(),
        };
        let (log, uploads) = (shared.log.clone(), shared.uploads.clone());
        server.serve(max_requests, move |r| answer(r, &shared));
        Ok(LoopbackHub {
            endpoint,
            log,
            uploads,
        })
    }

    /// Every request answered so far.
    pub fn requests(&self) -> Vec<Request> {
        self.log.lock().map(|l| l.clone()).unwrap_or_default()
    }

    /// Every repository created and the files committed to it.
    pub fn uploads(&self) -> Uploads {
        self.uploads.lock().map(|u| u.clone()).unwrap_or_default()
    }
}

fn answer(r: http::Request, shared: &Shared) -> Response {
    let authorization = r.header("authorization").map(String::from);
    if let Ok(mut l) = shared.log.lock() {
        l.push(Request {
            method: r.method.clone(),
            path: r.path.clone(),
            authorization: authorization.clone(),
        });
    }
    if r.method == "POST" {
        let (status, json) = match authorization {
            Some(_) => upload_endpoint(&r.path, &r.body, shared),
            None => (401, r#"{"error":"Invalid credentials"}"#.into()),
        };
        return Response::new(status, json).header("Content-Type", "application/json");
    }
    let (repos, gated) = (&shared.repos, &shared.gated);
    let path = r.path.split('?').next().unwrap_or_default();
    let segments: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    let (repo, route) = match segments.as_slice() {
        ["api", "datasets", owner, name, "revision", ..] => {
            (format!("datasets/{owner}/{name}"), Route::Info)
        }
        ["api", "datasets", owner, name, "tree", ..] => {
            (format!("datasets/{owner}/{name}"), Route::Tree)
        }
        ["datasets", owner, name, "resolve", _, file @ ..] => (
            format!("datasets/{owner}/{name}"),
            Route::File(file.join("/")),
        ),
        [owner, name, "resolve", _, file @ ..] => {
            (format!("{owner}/{name}"), Route::File(file.join("/")))
        }
        _ => (String::new(), Route::File(String::new())),
    };
    if gated.contains(&repo) {
        return Response::new(401, "")
            .header("X-Error-Code", "GatedRepo")
            .header(
                "X-Error-Message",
                format!("Access to {repo} is restricted."),
            );
    }
    let files = repos.get(&repo);
    let json = |body: serde_json::Value| Response::json(200, &body).header("X-Repo-Commit", COMMIT);
    match (route, files) {
        (Route::Info | Route::Tree, None) => Response::new(404, "")
            .header("X-Error-Code", "RepoNotFound")
            .header("X-Error-Message", "Repository not found"),
        (Route::Info, Some(_)) => {
            json(serde_json::json!({"id": repo.trim_start_matches("datasets/"), "sha": COMMIT}))
        }
        (Route::Tree, Some(files)) => {
            let mut names: Vec<&String> = files.keys().collect();
            names.sort();
            let entries: Vec<serde_json::Value> = names
                .into_iter()
                .map(|n| {
                    serde_json::json!({"type": "file", "oid": etag(&files[n]),
                                       "size": files[n].len(), "path": n})
                })
                .collect();
            json(serde_json::Value::from(entries))
        }
        (Route::File(file), files) => match files.and_then(|f| f.get(&file)) {
            Some(body) => Response::new(200, body.clone())
                .header("ETag", format!("\"{}\"", etag(body)))
                .header("X-Repo-Commit", COMMIT),
            None => Response::new(404, "")
                .header("X-Repo-Commit", COMMIT)
                .header("X-Error-Code", "EntryNotFound"),
        },
    }
}

/// What a download request asks for.
enum Route {
    /// A dataset's revision (`/api/datasets/{id}/revision/{rev}`).
    Info,
    /// A dataset's file list (`/api/datasets/{id}/tree/{rev}`).
    Tree,
    /// A file's contents (`[datasets/]{id}/resolve/{rev}/{path}`).
    File(String),
}

/// The ETag of a file's contents.
fn etag(body: &[u8]) -> String {
    format!("{:016x}", pctrain_core::hash::stable_hash(0, body))
}

/// Answers the upload endpoints: status and JSON body.
fn upload_endpoint(path: &str, body: &[u8], shared: &Shared) -> (u16, String) {
    let json: Option<serde_json::Value> = serde_json::from_slice(body).ok();
    let segments: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    match segments.as_slice() {
        ["api", "repos", "create"] => {
            let Some(req) = json else {
                return (400, "{}".into());
            };
            let name = req["name"].as_str().unwrap_or_default();
            let id = match req["organization"].as_str() {
                Some(org) => format!("{org}/{name}"),
                None => name.to_string(),
            };
            let private = req["private"].as_bool().unwrap_or(false);
            if let Ok(mut u) = shared.uploads.lock() {
                u.entry(id.clone()).or_insert((private, HashMap::new()));
            }
            (
                200,
                serde_json::json!({"url": format!("{}/{id}", shared.endpoint)}).to_string(),
            )
        }
        ["api", "models", _, _, "preupload", _] => {
            let files: Vec<serde_json::Value> = json
                .as_ref()
                .and_then(|j| j["files"].as_array())
                .map(|files| {
                    files
                        .iter()
                        .map(|f| {
                            let path = f["path"].as_str().unwrap_or_default();
                            let mode = if path.ends_with(".safetensors") {
                                "lfs"
                            } else {
                                "regular"
                            };
                            serde_json::json!({"path": path, "uploadMode": mode})
                        })
                        .collect()
                })
                .unwrap_or_default();
            (200, serde_json::json!({ "files": files }).to_string())
        }
        [_, repo_git, "info", "lfs", "objects", "batch"] if repo_git.ends_with(".git") => {
            (200, r#"{"transfer":"basic","objects":[]}"#.into())
        }
        ["api", "models", owner, name, "commit", _] => {
            let id = format!("{owner}/{name}");
            let mut files = HashMap::new();
            for line in body.split(|&b| b == b'\n').filter(|l| !l.is_empty()) {
                let Ok(op) = serde_json::from_slice::<serde_json::Value>(line) else {
                    return (400, r#"{"error":"a line is not JSON"}"#.into());
                };
                if op["key"] == "file" {
                    let value = &op["value"];
                    let content = value["content"].as_str().unwrap_or_default();
                    let Some(bytes) = decode_base64(content) else {
                        return (400, r#"{"error":"bad base64"}"#.into());
                    };
                    files.insert(
                        value["path"].as_str().unwrap_or_default().to_string(),
                        bytes,
                    );
                }
            }
            let Ok(mut u) = shared.uploads.lock() else {
                return (500, "{}".into());
            };
            match u.get_mut(&id) {
                Some((_, stored)) => {
                    stored.extend(files);
                    (
                        200,
                        serde_json::json!({"commitOid": COMMIT, "commitUrl": format!("{}/{id}/commit/{COMMIT}", shared.endpoint)})
                            .to_string(),
                    )
                }
                None => (404, r#"{"error":"Repository not found"}"#.into()),
            }
        }
        _ => (404, "{}".into()),
    }
}

/// Decodes standard base64 (with padding); `None` for anything else.
fn decode_base64(text: &str) -> Option<Vec<u8>> {
    let value = |c: u8| -> Option<u32> {
        Some(match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' => 62,
            b'/' => 63,
            _ => return None,
        } as u32)
    };
    let bytes = text.as_bytes();
    if !bytes.len().is_multiple_of(4) {
        return None;
    }
    let mut out = Vec::with_capacity(bytes.len() / 4 * 3);
    for chunk in bytes.chunks(4) {
        let pad = chunk.iter().rev().take_while(|&&c| c == b'=').count();
        if pad > 2 {
            return None;
        }
        let mut n = 0u32;
        for &c in &chunk[..4 - pad] {
            n = (n << 6) | value(c)?;
        }
        n <<= 6 * pad as u32;
        let decoded = [(n >> 16) as u8, (n >> 8) as u8, n as u8];
        out.extend_from_slice(&decoded[..3 - pad]);
    }
    Some(out)
}
