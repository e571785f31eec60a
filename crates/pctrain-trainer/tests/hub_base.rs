//! A base model from a hub id, against the loopback hub: downloaded into the shared cache, equal
//! to the same model loaded from its folder, and loadable offline afterwards. One test in this
//! binary, since it sets process-wide environment variables.

use std::collections::HashMap;
use std::path::PathBuf;

use pctrain_model::Batch;
use pctrain_testkit::hub::LoopbackHub;
use pctrain_trainer::{load_base, DType, Device};

#[test]
fn a_base_model_from_a_hub_id_equals_the_local_folder() {
    let dir =
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../pctrain-model/tests/fixtures/llama");
    let files: HashMap<String, Vec<u8>> = [
        "config.json",
        "generation_config.json",
        "model.safetensors",
        "tokenizer.json",
        "tokenizer_config.json",
    ]
    .iter()
    .map(|f| (f.to_string(), std::fs::read(dir.join(f)).unwrap()))
    .collect();
    let hub = LoopbackHub::start(
        HashMap::from([("pctrain-test/llama".to_string(), files)]),
        &["pctrain-test/gated"],
        200,
    )
    .unwrap();
    let home = tempfile::tempdir().unwrap();
    // SAFETY: the only test of this binary; no other thread reads the environment.
    unsafe {
        std::env::set_var("HF_ENDPOINT", &hub.endpoint);
        std::env::set_var("HF_HOME", home.path());
        std::env::remove_var("HF_TOKEN");
        std::env::remove_var("HF_HUB_CACHE");
        std::env::remove_var("HF_HUB_OFFLINE");
    }
    let n = 12;
    let batch = Batch {
        rows: 1,
        seq_len: n,
        input_ids: (0..n as u32).map(|i| i * 91 % 2048).collect(),
        position_ids: (0..n as u32).collect(),
        segment_ids: vec![1; n],
        labels: vec![-100; n],
    };
    let local = load_base(dir.to_str().unwrap(), DType::F32, &Device::Cpu).unwrap();
    let remote = load_base("pctrain-test/llama", DType::F32, &Device::Cpu).unwrap();
    assert!(remote.dir.starts_with(
        home.path()
            .join("hub/models--pctrain-test--llama/snapshots")
    ));
    let diff = |a: &candle_core::Tensor, b: &candle_core::Tensor| -> f32 {
        (a - b)
            .unwrap()
            .abs()
            .unwrap()
            .max_all()
            .unwrap()
            .to_scalar()
            .unwrap()
    };
    let want = local.model.logits(&batch).unwrap();
    assert_eq!(diff(&remote.model.logits(&batch).unwrap(), &want), 0.0);
    assert_eq!(
        remote.tokenizer.encode("hello").unwrap(),
        local.tokenizer.encode("hello").unwrap()
    );

    unsafe { std::env::set_var("HF_HUB_OFFLINE", "1") };
    let before = hub.requests().len();
    let offline = load_base("pctrain-test/llama", DType::F32, &Device::Cpu).unwrap();
    assert_eq!(diff(&offline.model.logits(&batch).unwrap(), &want), 0.0);
    assert_eq!(hub.requests().len(), before, "offline made no request");
    unsafe { std::env::remove_var("HF_HUB_OFFLINE") };

    let err = load_base("pctrain-test/gated", DType::F32, &Device::Cpu)
        .err()
        .unwrap()
        .to_string();
    assert!(
        err.contains("gated") && err.contains("hf auth login"),
        "{err}"
    );
}
