//! A loopback stand-in for the Hugging Face hub, for tests. Downloads: `HEAD`/`GET
//! /{owner}/{name}/resolve/main/{file}` as the hub answers them (ETag, X-Repo-Commit,
//! Content-Length), 404 for missing files, 401 for gated repositories; dataset repositories
//! (keyed `datasets/{owner}/{name}`) with their revision and file tree as well. Uploads, as hf-hub sends
//! them: repository creation, preupload (safetensors marked for LFS), the LFS batch (answered
//! without xet, so files come inline) and the NDJSON commit, whose files are kept for the test to
//! read. Every request is recorded. Point `HF_ENDPOINT` at [`LoopbackHub::endpoint`].

use std::collections::{HashMap, HashSet};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::{Arc, Mutex};
use std::time::Duration;

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

/// A server on 127.0.0.1 that serves `repos` from a background thread.
pub struct LoopbackHub {
    pub endpoint: String,
    log: Arc<Mutex<Vec<Request>>>,
    uploads: Arc<Mutex<Uploads>>,
}

/// What was uploaded: repository id -> (private, file name -> contents).
pub type Uploads = HashMap<String, (bool, HashMap<String, Vec<u8>>)>;

/// What a connection's handler shares.
struct Shared {
    endpoint: String,
    repos: Repos,
    gated: HashSet<String>,
    log: Arc<Mutex<Vec<Request>>>,
    uploads: Arc<Mutex<Uploads>>,
}

impl LoopbackHub {
    /// Starts serving; the thread ends after `max_requests` connections.
    pub fn start(repos: Repos, gated: &[&str], max_requests: usize) -> std::io::Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0")?;
        let endpoint = format!("http://{}", listener.local_addr()?);
        let shared = Shared {
            endpoint: endpoint.clone(),
            repos,
            gated: gated.iter().map(|s| s.to_string()).collect(),
            log: Arc::new(Mutex::new(Vec::new())),
            uploads: Arc::new(Mutex::new(HashMap::new())),
        };
        let (log, uploads) = (shared.log.clone(), shared.uploads.clone());
        std::thread::spawn(move || {
            for stream in listener.incoming().take(max_requests).flatten() {
                // A failed exchange concerns that client only; keep serving.
                let _ = answer(stream, &shared);
            }
        });
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

fn answer(mut stream: TcpStream, shared: &Shared) -> std::io::Result<()> {
    stream.set_read_timeout(Some(Duration::from_secs(30)))?;
    let mut reader = BufReader::new(stream.try_clone()?);
    let mut line = String::new();
    reader.read_line(&mut line)?;
    let mut authorization = None;
    let mut length = 0usize;
    loop {
        let mut h = String::new();
        if reader.read_line(&mut h)? == 0 || h.trim().is_empty() {
            break;
        }
        if let Some((k, v)) = h.split_once(':') {
            if k.eq_ignore_ascii_case("authorization") {
                authorization = Some(v.trim().to_string());
            } else if k.eq_ignore_ascii_case("content-length") {
                length = v.trim().parse().unwrap_or(0);
            }
        }
    }
    // A test server: bodies up to 1 GiB.
    let mut body = vec![0u8; length.min(1 << 30)];
    reader.read_exact(&mut body)?;
    let mut parts = line.split_whitespace();
    let method = parts.next().unwrap_or_default().to_string();
    let path = parts.next().unwrap_or_default().to_string();
    if let Ok(mut l) = shared.log.lock() {
        l.push(Request {
            method: method.clone(),
            path: path.clone(),
            authorization: authorization.clone(),
        });
    }
    if method == "POST" {
        let (status, json) = match authorization {
            Some(_) => upload_endpoint(&path, &body, shared),
            None => (
                "401 Unauthorized",
                r#"{"error":"Invalid credentials"}"#.into(),
            ),
        };
        let response = format!(
            "HTTP/1.1 {status}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{json}",
            json.len()
        );
        return stream.write_all(response.as_bytes());
    }
    let (repos, gated) = (&shared.repos, &shared.gated);
    let path = path.split('?').next().unwrap_or_default();
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
    let files = repos.get(&repo);
    let json = |status: &str, body: String| {
        format!(
            "HTTP/1.1 {status}\r\nContent-Type: application/json\r\nX-Repo-Commit: {COMMIT}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        )
        .into_bytes()
    };
    let response = if gated.contains(&repo) {
        format!(
            "HTTP/1.1 401 Unauthorized\r\nX-Error-Code: GatedRepo\r\nX-Error-Message: Access to {repo} is restricted.\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
        )
        .into_bytes()
    } else {
        match (route, files) {
            (Route::Info | Route::Tree, None) =>
                "HTTP/1.1 404 Not Found\r\nX-Error-Code: RepoNotFound\r\nX-Error-Message: Repository not found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
                .as_bytes()
                .to_vec(),
            (Route::Info, Some(_)) => json(
                "200 OK",
                serde_json::json!({"id": repo.trim_start_matches("datasets/"), "sha": COMMIT})
                    .to_string(),
            ),
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
                json("200 OK", serde_json::Value::from(entries).to_string())
            }
            (Route::File(file), files) => match files.and_then(|f| f.get(&file)) {
                Some(body) => {
                    let mut r = format!(
                        "HTTP/1.1 200 OK\r\nETag: \"{}\"\r\nX-Repo-Commit: {COMMIT}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                        etag(body),
                        body.len()
                    )
                    .into_bytes();
                    if method == "GET" {
                        r.extend_from_slice(body);
                    }
                    r
                }
                None => format!(
                    "HTTP/1.1 404 Not Found\r\nX-Repo-Commit: {COMMIT}\r\nX-Error-Code: EntryNotFound\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
                )
                .into_bytes(),
            },
        }
    };
    stream.write_all(&response)
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
    format!("{:016x}", crate::hash::stable_hash(0, body))
}

/// Answers the upload endpoints: status line and JSON body.
fn upload_endpoint(path: &str, body: &[u8], shared: &Shared) -> (&'static str, String) {
    let json: Option<serde_json::Value> = serde_json::from_slice(body).ok();
    let segments: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    match segments.as_slice() {
        ["api", "repos", "create"] => {
            let Some(req) = json else {
                return ("400 Bad Request", "{}".into());
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
                "200 OK",
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
            ("200 OK", serde_json::json!({ "files": files }).to_string())
        }
        [_, repo_git, "info", "lfs", "objects", "batch"] if repo_git.ends_with(".git") => {
            ("200 OK", r#"{"transfer":"basic","objects":[]}"#.into())
        }
        ["api", "models", owner, name, "commit", _] => {
            let id = format!("{owner}/{name}");
            let mut files = HashMap::new();
            for line in body.split(|&b| b == b'\n').filter(|l| !l.is_empty()) {
                let Ok(op) = serde_json::from_slice::<serde_json::Value>(line) else {
                    return (
                        "400 Bad Request",
                        r#"{"error":"a line is not JSON"}"#.into(),
                    );
                };
                if op["key"] == "file" {
                    let value = &op["value"];
                    let content = value["content"].as_str().unwrap_or_default();
                    let Some(bytes) = decode_base64(content) else {
                        return ("400 Bad Request", r#"{"error":"bad base64"}"#.into());
                    };
                    files.insert(
                        value["path"].as_str().unwrap_or_default().to_string(),
                        bytes,
                    );
                }
            }
            let Ok(mut u) = shared.uploads.lock() else {
                return ("500 Internal Server Error", "{}".into());
            };
            match u.get_mut(&id) {
                Some((_, stored)) => {
                    stored.extend(files);
                    (
                        "200 OK",
                        serde_json::json!({"commitOid": COMMIT, "commitUrl": format!("{}/{id}/commit/{COMMIT}", shared.endpoint)})
                            .to_string(),
                    )
                }
                None => (
                    "404 Not Found",
                    r#"{"error":"Repository not found"}"#.into(),
                ),
            }
        }
        _ => ("404 Not Found", "{}".into()),
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
