//! Tokenizers from a hub id, against a loopback server that answers as the hub does. One test in
//! this binary, since it sets process-wide environment variables (HF_ENDPOINT, HF_HOME, ...).

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};
use std::net::TcpListener;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use pctrain_data::TextTokenizer;

const COMMIT: &str = "0123456789abcdef0123456789abcdef01234567";
const TOKEN: &str = "hf_loopback_secret_token";

/// Requests seen by the server: method, path, Authorization header.
type RequestLog = Arc<Mutex<Vec<(String, String, Option<String>)>>>;

/// Serves `files` under `/{repo}/resolve/{revision}/{name}`; `pctrain-test/gated` answers 401.
/// Records each request's method, path and Authorization header. Stops after `max` requests.
fn serve(files: HashMap<String, Vec<u8>>, max: usize) -> (String, RequestLog) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = format!("http://{}", listener.local_addr().unwrap());
    let log: RequestLog = Arc::new(Mutex::new(Vec::new()));
    let seen = log.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming().take(max) {
            let Ok(mut stream) = stream else { continue };
            stream.set_read_timeout(Some(Duration::from_secs(5))).ok();
            let mut reader = BufReader::new(stream.try_clone().unwrap());
            let mut request = String::new();
            if reader.read_line(&mut request).is_err() {
                continue;
            }
            let mut auth = None;
            loop {
                let mut h = String::new();
                if reader.read_line(&mut h).is_err() || h.trim().is_empty() {
                    break;
                }
                if let Some((k, v)) = h.split_once(':') {
                    if k.eq_ignore_ascii_case("authorization") {
                        auth = Some(v.trim().to_string());
                    }
                }
            }
            let mut parts = request.split_whitespace();
            let method = parts.next().unwrap_or("").to_string();
            let path = parts.next().unwrap_or("").to_string();
            seen.lock()
                .unwrap()
                .push((method.clone(), path.clone(), auth));
            let response = if path.starts_with("/pctrain-test/gated/") {
                "HTTP/1.1 401 Unauthorized\r\nX-Error-Code: GatedRepo\r\nX-Error-Message: Access to model pctrain-test/gated is restricted.\r\nContent-Length: 0\r\nConnection: close\r\n\r\n".as_bytes().to_vec()
            } else {
                let name = path.rsplit('/').next().unwrap_or("");
                match files.get(name).filter(|_| path.starts_with("/pctrain-test/tiny/resolve/main/")) {
                    Some(body) => {
                        let etag = format!("{:x}", body.len() * 7919 + name.len());
                        let mut r = format!(
                            "HTTP/1.1 200 OK\r\nETag: \"{etag}\"\r\nX-Repo-Commit: {COMMIT}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
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
                }
            };
            stream.write_all(&response).ok();
        }
    });
    (addr, log)
}

#[test]
fn tokenizer_from_a_hub_id_downloads_into_the_cache_and_works_offline() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../assets/tiny");
    let mut files = HashMap::new();
    for f in ["tokenizer.json", "tokenizer_config.json"] {
        files.insert(f.to_string(), std::fs::read(root.join(f)).unwrap());
    }
    let template = "{% for m in messages %}[{{ m.role }}] {{ m.content }}\n{% endfor %}";
    files.insert("chat_template.jinja".into(), template.as_bytes().to_vec());
    let (endpoint, log) = serve(files, 200);
    let home = tempfile::tempdir().unwrap();
    // SAFETY: this binary has a single test, so no other thread reads the environment.
    unsafe {
        std::env::set_var("HF_ENDPOINT", &endpoint);
        std::env::set_var("HF_HOME", home.path());
        std::env::set_var("HF_TOKEN", TOKEN);
        std::env::remove_var("HF_HUB_CACHE");
        std::env::remove_var("HF_HUB_OFFLINE");
    }

    let tok = TextTokenizer::load("pctrain-test/tiny").expect("download");
    let local = TextTokenizer::tiny().unwrap();
    assert_eq!(
        tok.encode("Hello, pseudo-code!").unwrap(),
        local.encode("Hello, pseudo-code!").unwrap()
    );
    assert_eq!(tok.special.eos.as_deref(), Some("<|end_of_text|>"));
    assert_eq!(
        tok.chat_template.as_deref(),
        Some(template),
        "chat_template.jinja is read"
    );
    // The files sit in the shared cache's layout.
    let snapshot = home
        .path()
        .join("hub/models--pctrain-test--tiny/snapshots")
        .join(COMMIT);
    assert!(snapshot.join("tokenizer.json").is_file());
    assert!(snapshot.join("chat_template.jinja").is_file());
    // The token went to the server, as a bearer token.
    let requests = log.lock().unwrap().clone();
    assert!(requests
        .iter()
        .all(|(_, _, auth)| auth.as_deref() == Some(&format!("Bearer {TOKEN}"))));

    // Offline: no request, the cache answers.
    let before = log.lock().unwrap().len();
    unsafe { std::env::set_var("HF_HUB_OFFLINE", "1") };
    let cached = TextTokenizer::load("pctrain-test/tiny").expect("offline from cache");
    assert_eq!(cached.encode("abc").unwrap(), tok.encode("abc").unwrap());
    assert_eq!(log.lock().unwrap().len(), before, "offline made no request");
    let err = TextTokenizer::load("pctrain-test/absent")
        .err()
        .unwrap()
        .to_string();
    assert!(err.contains("HF_HUB_OFFLINE"), "{err}");
    unsafe { std::env::remove_var("HF_HUB_OFFLINE") };

    // A gated repository says how to get access, and never shows the token.
    let err = TextTokenizer::load("pctrain-test/gated")
        .err()
        .unwrap()
        .to_string();
    assert!(
        err.contains("hf auth login") && err.contains("HF_TOKEN"),
        "{err}"
    );
    assert!(!err.contains(TOKEN), "the token leaked into: {err}");

    // A repository without tokenizer.json.
    let err = TextTokenizer::load("pctrain-test/empty")
        .err()
        .unwrap()
        .to_string();
    assert!(err.contains("tokenizer.json"), "{err}");
}
