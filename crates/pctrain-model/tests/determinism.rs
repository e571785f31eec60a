//! A CPU pass gives the same bits whatever the thread count: rows are split among threads in
//! tasks fixed by the shape, and matrix products split their output, never a sum. pctrain's own
//! kernels also give the same bits whatever vector instructions run them (sums in a fixed order
//! over 16 lanes, every product-sum a fused multiply-add); the matrix products use the widest the
//! CPU has, so another machine may differ in the last bits.

use std::sync::Mutex;

use candle_core::{DType, Device, Tensor};
use pctrain_model::cpu::simd::Isa;
use pctrain_model::rng::Rng64;
use pctrain_model::{
    Batch, Grads, LoraAdapter, LoraConfig, Model, ModelConfig, ModelWeights, StepOptions, Target,
    TrainMode,
};

/// A Llama big enough that every kernel splits its rows into several tasks: hidden 160 over 5
/// heads of 32 (GQA 5/1), 3 rows of 150 tokens, two samples and padding in a row.
fn setup(mode: TrainMode) -> (Model, Batch) {
    let config = ModelConfig::from_json(
        r#"{"architectures": ["LlamaForCausalLM"], "vocab_size": 333, "hidden_size": 160,
        "intermediate_size": 200, "num_hidden_layers": 2, "num_attention_heads": 5,
        "num_key_value_heads": 1, "rms_norm_eps": 1e-5, "rope_theta": 10000.0,
        "max_position_embeddings": 512, "tie_word_embeddings": true}"#,
        std::path::Path::new("test"),
    )
    .unwrap();
    let mut rng = Rng64::new(3);
    let mut normal = |shape: &[usize]| {
        let n: usize = shape.iter().product();
        let v: Vec<f32> = (0..n).map(|_| (rng.unit() as f32 - 0.5) * 0.2).collect();
        Tensor::from_vec(v, shape, &Device::Cpu).unwrap()
    };
    let weights = ModelWeights {
        embed_tokens: normal(&[333, 160]),
        layers: (0..2)
            .map(|_| pctrain_model::weights::LayerWeights {
                input_norm: (normal(&[160]) + 1.0).unwrap(),
                q_proj: normal(&[160, 160]),
                k_proj: normal(&[32, 160]),
                v_proj: normal(&[32, 160]),
                o_proj: normal(&[160, 160]),
                post_attention_norm: (normal(&[160]) + 1.0).unwrap(),
                gate_proj: normal(&[200, 160]),
                up_proj: normal(&[200, 160]),
                down_proj: normal(&[160, 200]),
            })
            .collect(),
        norm: (normal(&[160]) + 1.0).unwrap(),
        lm_head: None,
    };
    let lora = (mode == TrainMode::Lora).then(|| {
        let c = LoraConfig {
            r: 4,
            alpha: 8.0,
            dropout: 0.1,
            rslora: false,
            targets: Target::ALL.to_vec(),
        };
        let mut a = LoraAdapter::init(&config, c, 5, DType::F32, &Device::Cpu).unwrap();
        // Non-zero B, so that every adapter changes the output.
        for layer in &mut a.layers {
            for l in layer.iter_mut().flatten() {
                l.b = (l.b.ones_like().unwrap() * 0.01).unwrap();
            }
        }
        a
    });
    let (rows, t) = (3, 150);
    let mut rng = Rng64::new(9);
    let mut batch = Batch {
        rows,
        seq_len: t,
        input_ids: (0..rows * t)
            .map(|_| (rng.next_u64() % 333) as u32)
            .collect(),
        position_ids: Vec::new(),
        segment_ids: Vec::new(),
        labels: (0..rows * t)
            .map(|_| (rng.next_u64() % 333) as i64)
            .collect(),
    };
    for _ in 0..rows {
        for (seg, len) in [(1, 90), (2, 50), (0, 10)] {
            batch.position_ids.extend(0..len as u32);
            batch.segment_ids.extend(std::iter::repeat_n(seg, len));
        }
    }
    (Model::new(config, weights, lora), batch)
}

/// Held by each test: one of them changes a process-wide setting.
static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

/// The loss and every gradient of one pass, as bits.
fn pass_bits(m: &Model, b: &Batch, mode: TrainMode) -> (u64, Vec<Vec<u32>>) {
    let opts = StepOptions {
        mode,
        recompute: false,
        loss_chunk: 64,
        dropout_seed: 11,
    };
    let (loss, grads): (_, Grads) = m.forward_backward(b, 1000.0, opts).unwrap();
    let bits = |t: &Tensor| -> Vec<u32> {
        let v: Vec<f32> = t.flatten_all().unwrap().to_vec1().unwrap();
        v.into_iter().map(f32::to_bits).collect()
    };
    let mut all: Vec<Vec<u32>> = grads
        .clone()
        .into_trainable(&m.trainable_params(mode))
        .iter()
        .map(bits)
        .collect();
    all.push(bits(&grads.inputs_embeds));
    (loss.sum().unwrap().to_bits(), all)
}

#[test]
fn a_pass_gives_the_same_bits_on_one_thread_and_on_three() {
    let _one = ONE_AT_A_TIME.lock().unwrap();
    for mode in [TrainMode::Lora, TrainMode::Full] {
        let (m, b) = setup(mode);
        let on = |threads: usize| {
            let pool = rayon::ThreadPoolBuilder::new()
                .num_threads(threads)
                .build()
                .unwrap();
            pool.install(|| pass_bits(&m, &b, mode))
        };
        let one = on(1);
        assert!(one.1.iter().flatten().any(|&b| b != 0));
        assert_eq!(one, on(3), "{mode:?}");
        assert_eq!(one, on(3), "{mode:?}, again");
    }
}

#[test]
fn the_kernels_give_the_same_bits_on_every_instruction_set() {
    let _one = ONE_AT_A_TIME.lock().unwrap();
    let widest = Isa::widest();
    for mode in [TrainMode::Lora, TrainMode::Full] {
        let (m, b) = setup(mode);
        Isa::force(Some(Isa::Baseline));
        let baseline = pass_bits(&m, &b, mode);
        Isa::force(None);
        assert_eq!(Isa::active(), widest);
        assert_eq!(baseline, pass_bits(&m, &b, mode), "{mode:?} on {widest:?}");
    }
}
