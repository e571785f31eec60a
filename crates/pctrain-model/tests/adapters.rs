//! LoRA adapters: PEFT's file layout on save, a lossless round trip, PEFT's initialisation, and
//! merging into the base weights.

use std::collections::BTreeSet;
use std::path::PathBuf;

use candle_core::{DType, Device, Tensor};
use pctrain_model::{Batch, LoraAdapter, LoraConfig, Model, ModelConfig, ModelWeights, Target};

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}

fn parts(name: &str) -> (ModelConfig, ModelWeights) {
    let dir = fixture(name);
    let config = ModelConfig::load(&dir).unwrap();
    let weights = ModelWeights::load(&dir, &config, DType::F32, &Device::Cpu).unwrap();
    (config, weights)
}

fn batch() -> Batch {
    let n = 10;
    Batch {
        rows: 1,
        seq_len: n,
        input_ids: (0..n as u32).map(|i| (i * 37 + 5) % 256).collect(),
        position_ids: (0..n as u32).collect(),
        segment_ids: vec![1; n],
        labels: vec![-100; n],
    }
}

fn max_diff(a: &Tensor, b: &Tensor) -> f32 {
    (a - b)
        .unwrap()
        .abs()
        .unwrap()
        .max_all()
        .unwrap()
        .to_scalar()
        .unwrap()
}

#[test]
fn saved_adapters_have_peft_layout_and_load_back_exactly() {
    let (config, _) = parts("granite");
    let adapter = LoraAdapter::load(
        &fixture("granite/adapter"),
        &config,
        DType::F32,
        &Device::Cpu,
    )
    .unwrap();
    let out = tempfile::tempdir().unwrap();
    adapter
        .save(out.path(), Some("ibm-granite/granite-3.1-8b-instruct"))
        .unwrap();

    let keys = |dir: &std::path::Path| -> BTreeSet<String> {
        candle_core::safetensors::load(dir.join("adapter_model.safetensors"), &Device::Cpu)
            .unwrap()
            .into_keys()
            .collect()
    };
    assert_eq!(
        keys(out.path()),
        keys(&fixture("granite/adapter")),
        "PEFT's key names"
    );
    let bytes = std::fs::read(out.path().join("adapter_model.safetensors")).unwrap();
    let (_, meta) = safetensors::SafeTensors::read_metadata(&bytes).unwrap();
    assert_eq!(meta.metadata().as_ref().unwrap()["format"], "pt");
    let cfg: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(out.path().join("adapter_config.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(cfg["peft_type"], "LORA");
    assert_eq!(cfg["r"], 4);
    assert_eq!(cfg["lora_alpha"], 8.0);
    assert_eq!(cfg["target_modules"].as_array().unwrap().len(), 7);

    let back = LoraAdapter::load(out.path(), &config, DType::F32, &Device::Cpu).unwrap();
    assert_eq!(back.config, adapter.config);
    for (x, y) in adapter.layers.iter().zip(&back.layers) {
        for t in Target::ALL {
            let (x, y) = (
                x[t as usize].as_ref().unwrap(),
                y[t as usize].as_ref().unwrap(),
            );
            assert_eq!(max_diff(&x.a, &y.a), 0.0);
            assert_eq!(max_diff(&x.b, &y.b), 0.0);
        }
    }
}

#[test]
fn fresh_adapters_start_at_the_base_model() {
    let (config, weights) = parts("llama");
    let lora = LoraConfig {
        r: 8,
        alpha: 16.0,
        dropout: 0.0,
        rslora: true,
        targets: vec![Target::Q, Target::V, Target::Down],
    };
    assert_eq!(lora.scale(), 16.0 / 8f64.sqrt());
    let a = LoraAdapter::init(&config, lora.clone(), 3, DType::F32, &Device::Cpu).unwrap();
    let again = LoraAdapter::init(&config, lora.clone(), 3, DType::F32, &Device::Cpu).unwrap();
    let other = LoraAdapter::init(&config, lora, 4, DType::F32, &Device::Cpu).unwrap();
    let q = |x: &LoraAdapter| x.layers[1][Target::Q as usize].clone().unwrap();
    assert_eq!(max_diff(&q(&a).a, &q(&again).a), 0.0, "seeded");
    assert!(max_diff(&q(&a).a, &q(&other).a) > 0.0);
    let bound = 1.0 / (config.hidden_size as f32).sqrt();
    let amax: f32 = q(&a)
        .a
        .abs()
        .unwrap()
        .max_all()
        .unwrap()
        .to_scalar()
        .unwrap();
    assert!(
        amax <= bound && amax > 0.5 * bound,
        "A within ±1/sqrt(in): {amax}"
    );
    assert!(
        a.layers[0][Target::K as usize].is_none(),
        "untargeted layers have no adapter"
    );

    let base = Model::new(config.clone(), weights.clone(), None)
        .logits(&batch())
        .unwrap();
    let adapted = Model::new(config, weights, Some(a))
        .logits(&batch())
        .unwrap();
    assert_eq!(
        max_diff(&base, &adapted),
        0.0,
        "B = 0: the adapter changes nothing yet"
    );
}

#[test]
fn merging_folds_the_adapter_into_the_weights() {
    let (config, weights) = parts("mistral");
    let adapter = LoraAdapter::load(
        &fixture("mistral/adapter"),
        &config,
        DType::F32,
        &Device::Cpu,
    )
    .unwrap();
    let mut m = Model::new(config, weights, Some(adapter));
    let with_adapter = m.logits(&batch()).unwrap();
    m.merge_lora().unwrap();
    assert!(m.lora.is_none());
    let merged = m.logits(&batch()).unwrap();
    let scale: f32 = with_adapter
        .abs()
        .unwrap()
        .max_all()
        .unwrap()
        .to_scalar()
        .unwrap();
    assert!(max_diff(&with_adapter, &merged) < 1e-5 * scale);
}

#[test]
fn adapter_config_errors_name_the_file_and_what_is_wrong() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("adapter_config.json");
    let read = |text: &str| {
        std::fs::write(&path, text).unwrap();
        pctrain_model::lora::read_adapter_config(&path)
    };
    let good = r#"{"peft_type": "LORA", "r": 4, "lora_alpha": 8, "target_modules": ["v_proj", "q_proj"],
        "init_lora_weights": "gaussian", "lora_dropout": null, "bias": null, "some_newer_field": 1}"#;
    let c = read(good).unwrap();
    assert_eq!((c.r, c.alpha, c.dropout, c.rslora), (4, 8.0, 0.0, false));
    assert_eq!(c.targets, vec![Target::Q, Target::V]);
    for (text, what) in [
        (
            r#"{"peft_type": "IA3", "r": 4, "lora_alpha": 8, "target_modules": []}"#,
            "peft_type \"IA3\" is not LORA",
        ),
        (
            r#"{"peft_type": "LORA", "lora_alpha": 8, "target_modules": []}"#,
            "missing field `r`",
        ),
        (
            r#"{"peft_type": "LORA", "r": "4", "lora_alpha": 8, "target_modules": []}"#,
            "invalid type: string \"4\"",
        ),
        (
            r#"{"peft_type": "LORA", "r": 0, "lora_alpha": 8, "target_modules": []}"#,
            "field `r`: expected a positive integer",
        ),
        (
            r#"{"peft_type": "LORA", "r": 4, "lora_alpha": 8, "target_modules": ["fc1"]}"#,
            "target module \"fc1\"",
        ),
        (
            r#"{"peft_type": "LORA", "r": 4, "lora_alpha": 8, "target_modules": "all-linear"}"#,
            "expected a sequence",
        ),
        (
            r#"{"peft_type": "LORA", "r": 4, "lora_alpha": 8, "target_modules": [], "use_dora": true}"#,
            "DoRA",
        ),
    ] {
        let e = read(text).unwrap_err().to_string();
        assert!(
            e.contains("adapter_config.json") && e.contains(what),
            "{text}: {e}"
        );
    }
}
