//! Every J± of a full check, CPU (serial and all cores) against GPU (f64 and f32), on the
//! seed net, 64-32-16-1 (m=32), 784-64-32-1 (m=64) and, on a real GPU (or with
//! GRADCHECK_BENCH_LARGE=1), 784-512-256-1 (m=64, 535 k parameters).
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
    for (layers, m) in [(vec![64, 32, 16, 1], 32), (vec![784, 64, 32, 1], 64)] {
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
    let mut all = nets();
    let real_gpu = gpu
        .as_ref()
        .is_some_and(|g| !g.adapter_name().contains("llvmpipe"));
    if real_gpu || std::env::var("GRADCHECK_BENCH_LARGE").is_ok() {
        let (model, params, data) =
            random_problem(ModelSpec::notebook_default(vec![784, 512, 256, 1]), 64, 0).unwrap();
        all.push(("784-512-256-1 m=64".into(), model, params, data));
    }
    let mut g = c.benchmark_group("every J±");
    g.sample_size(10);
    for (name, model, params, data) in &all {
        let n = model.n_params();
        let large = n > 100_000;
        if !large {
            g.bench_function(format!("cpu serial / {name}"), |b| {
                b.iter(|| {
                    cpu::perturbed_costs(model, params, data, 1e-7, 0..n, Threads::Serial).unwrap()
                })
            });
            g.bench_function(format!("cpu parallel / {name}"), |b| {
                b.iter(|| {
                    cpu::perturbed_costs(model, params, data, 1e-7, 0..n, Threads::Parallel)
                        .unwrap()
                })
            });
        }
        if let Some(ctx) = &gpu {
            for p in [Precision::F64, Precision::F32, Precision::F32Plain] {
                if p == Precision::F64 && !ctx.has_f64() {
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
        }
    }
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
