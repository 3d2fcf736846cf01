//! Every J± of a full check: the CPU's f64 Δ path (the default) and its plain path (the
//! notebook's arithmetic), serial and on all cores, against the GPU (f64, f64-plain, f32,
//! f32-plain), on the seed net, 64-32-16-1 (m=32), 784-64-32-1 (m=64), the deeper
//! 128-128-128-128-1 (m=32) and 784-512-256-1 (m=64, 535 k parameters; the plain CPU path
//! and the GPU only on a real GPU or with GRADCHECK_BENCH_LARGE=1).
//!
//!     cargo bench --bench evaluators

use criterion::{Criterion, criterion_group, criterion_main};
use gradcheck::check::Precision;
use gradcheck::eval::cpu::{self, Threads};
use gradcheck::eval::gpu::GpuContext;
use gradcheck::examples::{random_problem, seed_problem};
use gradcheck::{Data, Model, ModelSpec, Params};

fn nets() -> Vec<(String, Model, Params, Data)> {
    let seed = seed_problem(false).unwrap();
    let mut out = vec![(
        "seed 4-5-3-1 m=3".to_string(),
        seed.model,
        seed.params,
        seed.data,
    )];
    for (layers, m) in [
        (vec![64, 32, 16, 1], 32),
        (vec![784, 64, 32, 1], 64),
        (vec![128, 128, 128, 128, 1], 32),
        (vec![784, 512, 256, 1], 64),
    ] {
        let name = format!(
            "{} m={m}",
            layers
                .iter()
                .map(|n| n.to_string())
                .collect::<Vec<_>>()
                .join("-")
        );
        let (model, params, data) =
            random_problem(ModelSpec::notebook_default(layers), m, 0).unwrap();
        out.push((name, model, params, data));
    }
    out
}

fn bench(c: &mut Criterion) {
    let gpu = GpuContext::shared(None).ok();
    let all = nets();
    let real_gpu = gpu.as_ref().is_some_and(|g| !g.is_software());
    let large_ok = real_gpu || std::env::var("GRADCHECK_BENCH_LARGE").is_ok();
    let mut g = c.benchmark_group("every J±");
    g.sample_size(10);
    for (name, model, params, data) in &all {
        let n = model.n_params();
        let large = n > 100_000;
        g.bench_function(format!("cpu f64 Δ parallel / {name}"), |b| {
            b.iter(|| {
                cpu::perturbed_deltas(model, params, data, 1e-7, 0..n, Threads::Parallel).unwrap()
            })
        });
        if !large {
            g.bench_function(format!("cpu f64 Δ serial / {name}"), |b| {
                b.iter(|| {
                    cpu::perturbed_deltas(model, params, data, 1e-7, 0..n, Threads::Serial).unwrap()
                })
            });
        }
        // The layer-by-layer plain path takes ~20 s per run on the deep net: shallow only.
        if !large && model.depth() < 4 {
            g.bench_function(format!("cpu f64-plain parallel / {name}"), |b| {
                b.iter(|| {
                    cpu::perturbed_costs(model, params, data, 1e-7, 0..n, Threads::Parallel)
                        .unwrap()
                })
            });
        }
        if large && !large_ok {
            continue;
        }
        if let Some(ctx) = &gpu {
            for p in [
                Precision::F64,
                Precision::F64Plain,
                Precision::F32,
                Precision::F32Plain,
            ] {
                if matches!(p, Precision::F64 | Precision::F64Plain) && !ctx.has_f64() {
                    continue;
                }
                g.bench_function(
                    format!("gpu {} ({}) / {name}", p.label(), ctx.adapter_name()),
                    |b| {
                        b.iter(|| {
                            ctx.evaluate(model, params, data, 1e-7, p, Default::default())
                                .unwrap()
                        })
                    },
                );
            }
            // The Δ path on the staged kernels (what the fused ones replace).
            if ctx.has_f64() {
                let staged = gradcheck::eval::gpu::EvalOptions {
                    staged_only: true,
                    ..Default::default()
                };
                g.bench_function(
                    format!("gpu f64 staged ({}) / {name}", ctx.adapter_name()),
                    |b| {
                        b.iter(|| {
                            ctx.evaluate(model, params, data, 1e-7, Precision::F64, staged.clone())
                                .unwrap()
                        })
                    },
                );
            }
        }
    }
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
