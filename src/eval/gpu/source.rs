//! Kernel sources, one file per family in `shaders/`; the host prepends
//! `alias real = f32|f64;` and the precision's math functions.

/// f64 exp/log/tanh.
pub const MATH_F64: &str = include_str!("../../../shaders/math_f64.wgsl");
/// f32 exp/log/tanh (builtins).
pub const MATH_F32: &str = include_str!("../../../shaders/math_f32.wgsl");
/// Bindings, the Job struct, activations.
pub const COMMON: &str = include_str!("../../../shaders/common.wgsl");
/// The base forward pass.
pub const FORWARD: &str = include_str!("../../../shaders/forward.wgsl");
/// The perturbed passes: perturb_row, rank1, dense.
pub const PERTURB: &str = include_str!("../../../shaders/perturb.wgsl");
/// The Δ path's per-sample loss change (shared by `cost` and `fused`).
pub const LOSS: &str = include_str!("../../../shaders/loss.wgsl");
/// Per-sample losses and the per-perturbation reduction.
pub const COST: &str = include_str!("../../../shaders/cost.wgsl");
/// The fused Δ path: a perturbation's ΔJ in one thread, nothing written per sample.
pub const FUSED: &str = include_str!("../../../shaders/fused.wgsl");
/// The fused Δ path's layer-by-layer samples (own family: its per-thread vectors).
pub const FUSED_EXACT: &str = include_str!("../../../shaders/fused_exact.wgsl");
/// Networks given as layer types (conv nets): per (perturbation, sample) Δ and plain
/// passes and the per-perturbation sums.
pub const LAYERED: &str = include_str!("../../../shaders/layered.wgsl");
/// One elementary function over a buffer (accuracy measurements).
pub const PROBE: &str = include_str!("../../../shaders/probe.wgsl");

/// The full source of one kernel family (its files in order, after the common part) at a
/// precision (`f64` or not).
pub fn module(parts: &[&str], f64: bool) -> String {
    let (alias, math) = if f64 {
        ("alias real = f64;\n", MATH_F64)
    } else {
        ("alias real = f32;\n", MATH_F32)
    };
    format!("{alias}{math}\n{COMMON}\n{}", parts.join("\n"))
}

/// [`module`] as the pipelines build it. `GRADCHECK_FAULT=shader` in the environment
/// breaks the source (a fault injected by the tests: a shader that does not compile must
/// be reported as the bug it is, never hidden by a CPU fallback).
pub fn module_for_build(parts: &[&str], f64: bool) -> String {
    let mut src = module(parts, f64);
    if std::env::var("GRADCHECK_FAULT").is_ok_and(|v| v == "shader") {
        src.push_str("\nthis is not WGSL\n");
    }
    src
}

/// A kernel family: its name, its files (after the common part), its entry points.
pub type Family = (
    &'static str,
    &'static [&'static str],
    &'static [&'static str],
);

/// Every kernel family the evaluator uses.
pub fn families() -> [Family; 7] {
    [
        ("forward", &[FORWARD], &["base_layer"]),
        (
            "perturb",
            &[PERTURB],
            &["perturb_row", "rank1", "dense", "dense_narrow"],
        ),
        ("cost", &[LOSS, COST], &["sample_loss", "reduce"]),
        ("fused", &[LOSS, FUSED], &["fused_delta"]),
        ("fused_exact", &[LOSS, FUSED_EXACT], &["fused_exact"]),
        (
            "layered",
            &[LOSS, LAYERED],
            &["layered_delta", "layered_plain", "layered_reduce"],
        ),
        ("probe", &[PROBE], &["math_probe"]),
    ]
}
