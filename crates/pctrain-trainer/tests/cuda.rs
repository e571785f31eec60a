//! The fused AdamW kernel against its CPU twin, on a GPU (`--features cuda`). Without a GPU the
//! test says it was skipped and passes.
#![cfg(feature = "cuda")]

use candle_core::{DType, Device, Tensor};
use pctrain_model::rng::Rng64;
use pctrain_model::Gradients;
use pctrain_trainer::{AdamW, AdamWConfig};

fn values(n: usize, seed: u64) -> Vec<f32> {
    let mut rng = Rng64::new(seed);
    (0..n).map(|_| rng.unit() as f32 - 0.5).collect()
}

#[test]
fn fused_adamw_matches_the_cpu_update() {
    let gpu = match Device::new_cuda(0) {
        Ok(d) => d,
        Err(e) => {
            eprintln!("adamw: skipped, no CUDA device ({e})");
            return;
        }
    };
    let config = AdamWConfig {
        weight_decay: 0.1,
        ..AdamWConfig::default()
    };
    for dtype in [DType::F32, DType::BF16] {
        // Values as `dtype` holds them; the CPU updates them in f32, as the GPU updates a bf16
        // parameter's f32 master copy.
        let rounded = |seed: u64, dtype: DType| {
            Tensor::from_vec(values(1000, seed), (10, 100), &Device::Cpu)
                .unwrap()
                .to_dtype(dtype)
                .unwrap()
        };
        let run = |device: &Device, stored: DType| -> Tensor {
            let p = rounded(1, dtype).to_dtype(stored).unwrap();
            let p = p.to_device(device).unwrap();
            let mut opt = AdamW::new(config, &[&p]).unwrap();
            for step in 0..3 {
                let g = rounded(10 + step, dtype).to_dtype(stored).unwrap();
                let g = g.to_device(device).unwrap();
                let g = Gradients::from_tensors(vec![g]).unwrap();
                opt.update(&[&p], &g, 1e-2).unwrap();
            }
            match &opt.master[0] {
                Some(master) => master.to_device(&Device::Cpu).unwrap(),
                None => p.to_device(&Device::Cpu).unwrap(),
            }
        };
        let (a, b) = (run(&Device::Cpu, DType::F32), run(&gpu, dtype));
        let diff = (a - b)
            .unwrap()
            .abs()
            .unwrap()
            .max_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        assert!(diff < 1e-6, "{dtype:?}: {diff}");
    }
}
