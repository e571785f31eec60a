//! A loopback stand-in for the Hugging Face hub's file endpoint, for tests: it answers
//! `HEAD`/`GET /{owner}/{name}/resolve/main/{file}` as the hub does (ETag, X-Repo-Commit,
//! Content-Length), 404 for missing files, 401 for gated repositories, and records each request.
//! Point `HF_ENDPOINT` at [`LoopbackHub::endpoint`].

use std::collections::{HashMap, HashSet};
use std::io::{BufRead, BufReader, Write};
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
}

impl LoopbackHub {
    /// Starts serving; the thread ends after `max_requests` connections.
    pub fn start(repos: Repos, gated: &[&str], max_requests: usize) -> std::io::Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0")?;
        let endpoint = format!("http://{}", listener.local_addr()?);
        let log = Arc::new(Mutex::new(Vec::new()));
        let seen = log.clone();
        let gated: HashSet<String> = gated.iter().map(|s| s.to_string()).collect();
        std::thread::spawn(move || {
            for stream in listener.incoming().take(max_requests).flatten() {
                // A failed exchange concerns that client only; keep serving.
                let _ = answer(stream, &repos, &gated, &seen);
            }
        });
        Ok(LoopbackHub { endpoint, log })
    }

    /// Every request answered so far.
    pub fn requests(&self) -> Vec<Request> {
        self.log.lock().map(|l| l.clone()).unwrap_or_default()
    }
}

fn answer(
    mut stream: TcpStream,
    repos: &Repos,
    gated: &HashSet<String>,
    log: &Mutex<Vec<Request>>,
) -> std::io::Result<()> {
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    let mut reader = BufReader::new(stream.try_clone()?);
    let mut line = String::new();
    reader.read_line(&mut line)?;
    let mut authorization = None;
    loop {
        let mut h = String::new();
        if reader.read_line(&mut h)? == 0 || h.trim().is_empty() {
            break;
        }
        if let Some((k, v)) = h.split_once(':') {
            if k.eq_ignore_ascii_case("authorization") {
                authorization = Some(v.trim().to_string());
            }
        }
    }
    let mut parts = line.split_whitespace();
    let method = parts.next().unwrap_or_default().to_string();
    let path = parts.next().unwrap_or_default().to_string();
    if let Ok(mut l) = log.lock() {
        l.push(Request {
            method: method.clone(),
            path: path.clone(),
            authorization,
        });
    }
    // /{owner}/{name}/resolve/{revision}/{file}
    let segments: Vec<&str> = path.trim_start_matches('/').splitn(5, '/').collect();
    let (repo, file) = match segments.as_slice() {
        [owner, name, "resolve", _, file] => (format!("{owner}/{name}"), *file),
        _ => (String::new(), ""),
    };
    let mut response = if gated.contains(&repo) {
        format!(
            "HTTP/1.1 401 Unauthorized\r\nX-Error-Code: GatedRepo\r\nX-Error-Message: Access to model {repo} is restricted.\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
        )
        .into_bytes()
    } else {
        match repos.get(&repo).and_then(|files| files.get(file)) {
            Some(body) => {
                let etag = format!("{:016x}", crate::hash::stable_hash(0, body));
                format!(
                    "HTTP/1.1 200 OK\r\nETag: \"{etag}\"\r\nX-Repo-Commit: {COMMIT}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                    body.len()
                )
                .into_bytes()
            }
            None => format!(
                "HTTP/1.1 404 Not Found\r\nX-Repo-Commit: {COMMIT}\r\nX-Error-Code: EntryNotFound\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
            )
            .into_bytes(),
        }
    };
    if method == "GET" {
        if let Some(body) = repos.get(&repo).and_then(|files| files.get(file)) {
            if !gated.contains(&repo) {
                response.extend_from_slice(body);
            }
        }
    }
    stream.write_all(&response)
}
