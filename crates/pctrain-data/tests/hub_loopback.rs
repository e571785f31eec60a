//! Tokenizers from a hub id, against a loopback server that answers as the hub does. One test in
//! this binary, since it sets process-wide environment variables (HF_ENDPOINT, HF_HOME, ...).

use std::collections::HashMap;

use pctrain_data::TextTokenizer;
use pctrain_testkit::hub::{LoopbackHub, COMMIT};

const TOKEN: &str = "hf_loopback_secret_token";

#[test]
fn tokenizer_from_a_hub_id_downloads_into_the_cache_and_works_offline() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../assets/tiny");
    let mut files = HashMap::new();
    for f in ["tokenizer.json", "tokenizer_config.json"] {
        files.insert(f.to_string(), std::fs::read(root.join(f)).unwrap());
    }
    let template = "{% for m in messages %}[{{ m.role }}] {{ m.content }}\n{% endfor %}";
    files.insert("chat_template.jinja".into(), template.as_bytes().to_vec());
    let hub = LoopbackHub::start(
        HashMap::from([("pctrain-test/tiny".to_string(), files)]),
        &["pctrain-test/gated"],
        200,
    )
    .unwrap();
    let endpoint = hub.endpoint.clone();
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
    let requests = hub.requests();
    assert!(!requests.is_empty());
    assert!(requests
        .iter()
        .all(|r| r.authorization.as_deref() == Some(&format!("Bearer {TOKEN}"))));

    // Offline: no request, the cache answers.
    let before = hub.requests().len();
    unsafe { std::env::set_var("HF_HUB_OFFLINE", "1") };
    let cached = TextTokenizer::load("pctrain-test/tiny").expect("offline from cache");
    assert_eq!(cached.encode("abc").unwrap(), tok.encode("abc").unwrap());
    assert_eq!(hub.requests().len(), before, "offline made no request");
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
