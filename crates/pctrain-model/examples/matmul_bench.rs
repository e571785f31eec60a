//! GFLOP/s of the CPU matrix products on the decoder's shapes, as one JSON line per shape.
//!
//! ```text
//! cargo run --release -p pctrain-model --example matmul_bench -- [M,N,K,LAYOUT ...]
//! ```
//! LAYOUT says how the operands are stored, as the decoder stores them: `nt` is `x W^T`
//! (`A [M, K]`, `B [N, K]`: a forward projection), `nn` is `dy W` (`B [K, N]`: an input gradient),
//! `tn` is `dy^T x` (`A [K, M]`: a weight gradient), `dots` is `nt` on the kernel decoding uses
//! (`pctrain_model::cpu::dots`, each element one dot product). Without arguments, the shapes of SmolLM2-135M
//! and of `pctrain bench --shape llama-10m` at their benchmark batches. `scripts/bench_cpu.py
//! --matmul` runs torch's matmul on the same list.

use std::time::Instant;

use pctrain_model::cpu::dots::{dots, Product};
use pctrain_model::cpu::gemm::{matmul, Mat, MatMut};

const DEFAULT: &[&str] = &[
    "1024,576,576,nt",
    "1024,192,576,nt",
    "1024,1536,576,nt",
    "1024,576,1536,nt",
    "1024,576,1536,nn",
    "1024,49152,576,nt",
    "1024,576,49152,nn",
    "1024,16,576,nt",
    "1024,1536,16,nt",
    "1536,576,1024,tn",
    "16,576,1024,tn",
    "1536,16,1024,tn",
    "2048,384,384,nt",
    "2048,1024,384,nt",
    "2048,384,1024,nt",
];

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let shapes: Vec<&str> = if args.is_empty() {
        DEFAULT.to_vec()
    } else {
        args.iter().map(String::as_str).collect()
    };
    for spec in shapes {
        let parts: Vec<&str> = spec.split(',').collect();
        let [m, n, k, layout] = parts[..] else {
            eprintln!("{spec}: expected M,N,K,LAYOUT");
            std::process::exit(2);
        };
        let parse = |s: &str| -> usize {
            s.parse().unwrap_or_else(|_| {
                eprintln!("{spec}: {s} is not a size");
                std::process::exit(2)
            })
        };
        let (m, n, k) = (parse(m), parse(n), parse(k));
        let a: Vec<f32> = (0..m * k)
            .map(|i| ((i % 97) as f32 - 48.0) / 97.0)
            .collect();
        let b: Vec<f32> = (0..k * n)
            .map(|i| ((i % 89) as f32 - 44.0) / 89.0)
            .collect();
        let mut c = vec![0f32; m * n];
        let run = |c: &mut [f32]| {
            if layout == "dots" {
                let p = Product {
                    w: &b,
                    y: c,
                    alpha: 1.0,
                    accumulate: false,
                };
                return dots(&a, m, k, &mut [p]);
            }
            let (am, bm) = match layout {
                "nt" => (Mat::new(&a, m, k), Mat::new(&b, n, k).t()),
                "nn" => (Mat::new(&a, m, k), Mat::new(&b, k, n)),
                "tn" => (Mat::new(&a, k, m).t(), Mat::new(&b, k, n)),
                other => {
                    eprintln!("{spec}: layout {other} is not nt, nn, tn or dots");
                    std::process::exit(2)
                }
            };
            matmul(MatMut::new(c, m, n), am, bm, 1.0, false);
        };
        for _ in 0..3 {
            run(&mut c);
        }
        let flops = 2.0 * (m * n * k) as f64;
        let reps = ((2e10 / flops) as usize).max(3);
        let start = Instant::now();
        for _ in 0..reps {
            run(&mut c);
        }
        let seconds = start.elapsed().as_secs_f64() / reps as f64;
        println!(
            "{{\"tool\": \"pctrain\", \"shape\": \"{spec}\", \"ms\": {:.4}, \"gflops\": {:.2}}}",
            seconds * 1e3,
            flops / seconds / 1e9
        );
    }
}
