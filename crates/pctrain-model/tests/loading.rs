//! Configs and weights: every supported field read, and clear errors for what cannot load.

use std::path::{Path, PathBuf};

use candle_core::{DType, Device};
use pctrain_model::{Architecture, ModelConfig, ModelWeights};

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}

fn config_error(json: &str) -> String {
    ModelConfig::from_json(json, Path::new("config.json"))
        .unwrap_err()
        .to_string()
}

#[test]
fn fixture_configs_read_each_family() {
    let llama = ModelConfig::load(&fixture("llama")).unwrap();
    assert_eq!(llama.architecture, Architecture::Llama);
    assert_eq!(
        (llama.num_heads, llama.num_kv_heads, llama.head_dim),
        (4, 2, 4)
    );
    let s = llama
        .rope
        .llama3
        .expect("llama3 scaling from rope_parameters");
    assert_eq!((s.factor, s.original_max_position_embeddings), (8.0, 16));

    let mistral = ModelConfig::load(&fixture("mistral")).unwrap();
    assert_eq!(mistral.sliding_window, Some(6));
    assert_eq!(mistral.head_dim, 12, "head_dim differs from hidden / heads");

    let granite = ModelConfig::load(&fixture("granite")).unwrap();
    assert!(granite.tie_word_embeddings);
    assert_eq!(granite.embedding_multiplier, 12.0);
    assert_eq!(granite.attention_scale, 0.2);
    assert_eq!(granite.residual_multiplier, 0.3);
    assert_eq!(granite.logits_scaling, 4.0);
}

#[test]
fn transformers_4_style_rope_fields_are_read() {
    let json = r#"{"architectures": ["LlamaForCausalLM"], "vocab_size": 10, "hidden_size": 8,
        "intermediate_size": 16, "num_hidden_layers": 1, "num_attention_heads": 2,
        "rms_norm_eps": 1e-5, "rope_theta": 500000.0, "eos_token_id": [128001, 128009],
        "rope_scaling": {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
        "high_freq_factor": 4.0, "original_max_position_embeddings": 8192}}"#;
    let c = ModelConfig::from_json(json, Path::new("config.json")).unwrap();
    assert_eq!(c.rope.theta, 500000.0);
    // transformers writes the older `type` beside `rope_type`.
    let both = json.replace(
        "\"rope_type\": \"llama3\"",
        "\"rope_type\": \"llama3\", \"type\": \"llama3\"",
    );
    assert!(both.contains("\"type\""));
    let c2 = ModelConfig::from_json(&both, Path::new("config.json")).unwrap();
    assert_eq!(c2.rope, c.rope);
    assert_eq!(
        c.rope.llama3.unwrap().original_max_position_embeddings,
        8192
    );
    assert_eq!(c.eos_token_ids, vec![128001, 128009]);
    assert_eq!(c.num_kv_heads, 2, "defaults to num_attention_heads");
}

#[test]
fn config_errors_name_what_is_wrong() {
    let e = config_error(r#"{"architectures": ["GPT2LMHeadModel"]}"#);
    assert!(
        e.starts_with("config.json: unsupported architecture \"GPT2LMHeadModel\""),
        "{e}"
    );
    let e = config_error(r#"{"architectures": ["LlamaForCausalLM"], "hidden_size": 8}"#);
    assert!(e.contains("missing field `num_attention_heads`"), "{e}");
    let e = config_error(
        r#"{"architectures": ["LlamaForCausalLM"], "vocab_size": 10, "hidden_size": 8,
        "intermediate_size": 16, "num_hidden_layers": 1, "num_attention_heads": 2,
        "rms_norm_eps": 1e-5, "rope_scaling": {"rope_type": "yarn", "factor": 4.0}}"#,
    );
    assert!(e.contains("unsupported rope scaling \"yarn\""), "{e}");
    let e = config_error(
        r#"{"architectures": ["GraniteForCausalLM"], "vocab_size": 10, "hidden_size": 8,
        "intermediate_size": 16, "num_hidden_layers": 1, "num_attention_heads": 2,
        "rms_norm_eps": 1e-5}"#,
    );
    assert!(e.contains("missing field `embedding_multiplier`"), "{e}");
    assert!(config_error("{").contains("malformed JSON"));
    let e = config_error(
        "{\"architectures\": [\"LlamaForCausalLM\"], \"vocab_size\": 10,\n\"hidden_size\": \"8\"}",
    );
    assert!(
        e.contains("invalid type: string \"8\", expected usize at line 2"),
        "{e}"
    );
    let e = config_error(
        r#"{"architectures": ["LlamaForCausalLM"], "vocab_size": 10, "hidden_size": 8,
        "intermediate_size": 16, "num_hidden_layers": 1, "num_attention_heads": 2,
        "rms_norm_eps": 1e-5, "rope_scaling": {"rope_type": "llama3", "factor": 8.0}}"#,
    );
    assert!(
        e.contains("rope scaling: missing field `low_freq_factor`"),
        "{e}"
    );
}

/// A copy of the llama fixture folder, so tests can break it.
fn llama_copy() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    for f in ["config.json", "model.safetensors"] {
        std::fs::copy(fixture("llama").join(f), dir.path().join(f)).unwrap();
    }
    dir
}

#[test]
fn pickled_checkpoints_are_refused() {
    let dir = llama_copy();
    std::fs::remove_file(dir.path().join("model.safetensors")).unwrap();
    std::fs::write(dir.path().join("pytorch_model.bin"), b"not loaded").unwrap();
    let config = ModelConfig::load(dir.path()).unwrap();
    let e = ModelWeights::load(dir.path(), &config, DType::F32, &Device::Cpu)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("pytorch_model.bin is a pickled PyTorch checkpoint"),
        "{e}"
    );
    assert!(e.contains("only safetensors load"), "{e}");
}

#[test]
fn missing_and_misshapen_tensors_are_named() {
    let dir = llama_copy();
    let config = ModelConfig::load(dir.path()).unwrap();
    let mut wrong = config.clone();
    wrong.intermediate_size = 41;
    let e = ModelWeights::load(dir.path(), &wrong, DType::F32, &Device::Cpu)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains(
            "tensor `model.layers.0.mlp.gate_proj.weight` has shape [40, 16], expected [41, 16]"
        ),
        "{e}"
    );
    let mut deeper = config.clone();
    deeper.num_layers = 3;
    let e = ModelWeights::load(dir.path(), &deeper, DType::F32, &Device::Cpu)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("missing tensor `model.layers.2.input_layernorm.weight`"),
        "{e}"
    );
}

#[test]
fn sharded_weights_load_through_their_index() {
    let dir = llama_copy();
    let config = ModelConfig::load(dir.path()).unwrap();
    let whole = ModelWeights::load(dir.path(), &config, DType::F32, &Device::Cpu).unwrap();
    // Split the tensors over two shards with an index, as the hub lays them out.
    let tensors =
        candle_core::safetensors::load(dir.path().join("model.safetensors"), &Device::Cpu).unwrap();
    std::fs::remove_file(dir.path().join("model.safetensors")).unwrap();
    let mut names: Vec<&String> = tensors.keys().collect();
    names.sort();
    let (first, second) = names.split_at(names.len() / 2);
    let mut map = serde_json::Map::new();
    for (shard, part) in [
        ("model-00001-of-00002.safetensors", first),
        ("model-00002-of-00002.safetensors", second),
    ] {
        let subset: std::collections::HashMap<String, candle_core::Tensor> = part
            .iter()
            .map(|n| ((*n).clone(), tensors[*n].clone()))
            .collect();
        candle_core::safetensors::save(&subset, dir.path().join(shard)).unwrap();
        for n in part {
            map.insert((*n).clone(), shard.into());
        }
    }
    let index = serde_json::json!({"metadata": {"total_size": 0}, "weight_map": map});
    std::fs::write(
        dir.path().join("model.safetensors.index.json"),
        index.to_string(),
    )
    .unwrap();
    let sharded = ModelWeights::load(dir.path(), &config, DType::F32, &Device::Cpu).unwrap();
    let a: Vec<f32> = whole.layers[1]
        .down_proj
        .flatten_all()
        .unwrap()
        .to_vec1()
        .unwrap();
    let b: Vec<f32> = sharded.layers[1]
        .down_proj
        .flatten_all()
        .unwrap()
        .to_vec1()
        .unwrap();
    assert_eq!(a, b);
    std::fs::remove_file(dir.path().join("model-00002-of-00002.safetensors")).unwrap();
    let e = ModelWeights::load(dir.path(), &config, DType::F32, &Device::Cpu)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains(
            "model-00002-of-00002.safetensors named by model.safetensors.index.json is missing"
        ),
        "{e}"
    );
}

#[test]
fn degenerate_numbers_are_refused() {
    let base = r#""vocab_size": 10, "hidden_size": 8, "intermediate_size": 16,
        "num_hidden_layers": 1, "num_attention_heads": 2, "rms_norm_eps": 1e-5"#;
    let e = config_error(&format!(
        r#"{{"architectures": ["MistralForCausalLM"], {base}, "sliding_window": 0}}"#
    ));
    assert!(e.contains("`sliding_window` must be at least 1"), "{e}");
    let e = config_error(&format!(
        r#"{{"architectures": ["LlamaForCausalLM"], {base}, "rope_scaling": {{"rope_type": "llama3",
        "factor": 0.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
        "original_max_position_embeddings": 8192}}}}"#
    ));
    assert!(e.contains("llama3 rope scaling needs factor > 0"), "{e}");
}
