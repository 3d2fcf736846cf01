//! The evaluator layer: what every backend computes (an [`Evaluation`]: J(θ) and every
//! J(θ ± ε·e_i), or their changes ΔJ±, with kinks and the noise scale) and the
//! [`Evaluator`] trait both backends implement. Layers above see backends only through it.
//!
//! May use: `model`, `metric`, `rng`, `error`. Never `check` or anything above.

pub mod backend;
pub mod cpu;
#[cfg(feature = "gpu")]
pub mod gpu;
pub mod layered;

use std::ops::Range;

use serde::Serialize;

use crate::error::{Error, Result};
use crate::model::{Data, Model, Params};

pub use cpu::{KINK_MINUS, KINK_PLUS, Threads};

/// How many perturbations a check has evaluated so far (±ε and ±2ε of each parameter
/// count one each): a counter its caller shares with whoever shows progress (the CLI's
/// bar, Python's `progress()`), never a process global — two checks in one process each
/// count their own. The CPU evaluators add to it every 512 perturbations per thread.
#[derive(Debug, Clone, Default)]
pub struct Progress(std::sync::Arc<std::sync::atomic::AtomicUsize>);

impl Progress {
    /// A counter at 0.
    pub fn new() -> Progress {
        Progress::default()
    }
    /// Perturbations counted so far.
    pub fn done(&self) -> usize {
        self.0.load(std::sync::atomic::Ordering::Relaxed)
    }
    pub(crate) fn add(&self, n: usize) {
        self.0.fetch_add(n, std::sync::atomic::Ordering::Relaxed);
    }
}

/// Equal whatever they counted: a plan compares by its settings.
impl PartialEq for Progress {
    fn eq(&self, _: &Self) -> bool {
        true
    }
}

/// Which evaluator computes the J±.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, serde::Deserialize)]
#[cfg_attr(feature = "cli", derive(clap::ValueEnum))]
#[serde(rename_all = "lowercase")]
pub enum Backend {
    /// A hardware GPU when one is there, otherwise the CPU: a software adapter (llvmpipe)
    /// is slower than the CPU evaluator and is used only when named (the report says which
    /// ran and why).
    Auto,
    /// The CPU f64 reference.
    Cpu,
    /// The GPU (wgpu); an error when no adapter is usable.
    Gpu,
}

/// Floating-point precision and arithmetic of the evaluation. The "plain" ones compute
/// J± themselves and subtract them (the notebook's arithmetic); the others carry every
/// stage's change from the base pass in closed forms (the Δ path), so ΔJ± keep a relative
/// accuracy of a few units of the precision whatever ε is, and saturated outputs cost
/// nothing. The CPU evaluates f64 and f64-plain.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, serde::Deserialize)]
#[cfg_attr(feature = "cli", derive(clap::ValueEnum))]
pub enum Precision {
    /// f64 on the CPU and on adapters with SHADER_F64, f32 on other GPUs (Δ path both).
    #[serde(rename = "auto")]
    Auto,
    /// The Δ path in f64 (GPU: own exp/log, needs SHADER_F64).
    #[serde(rename = "f64")]
    F64,
    /// The notebook's arithmetic in f64: J± literally (−log(1 − σ(z)), FMA dot products in
    /// index order), subtracted; what reproduces the notebook's digits.
    #[cfg_attr(feature = "cli", value(name = "f64-plain"))]
    #[serde(rename = "f64-plain")]
    F64Plain,
    /// f32 shaders that evaluate ΔJ± = J(θ ± ε·e_i) − J(θ) directly, every stage carrying
    /// its change from the base pass in a closed form without cancellation: verdicts as
    /// sharp as f64's on hardware without f64.
    #[serde(rename = "f32")]
    F32,
    /// f32 shaders computing J± themselves and subtracting them, as a naive port would:
    /// needs a large ε and a loose threshold; kept to show what the Δ path gains.
    #[cfg_attr(feature = "cli", value(name = "f32-plain"))]
    #[serde(rename = "f32-plain")]
    F32Plain,
}

impl Precision {
    /// The label reports use: "f64", "f64-plain", "f32", "f32-plain" ("auto" until
    /// resolved).
    pub fn label(self) -> &'static str {
        match self {
            Precision::Auto => "auto",
            Precision::F64 => "f64",
            Precision::F64Plain => "f64-plain",
            Precision::F32 => "f32",
            Precision::F32Plain => "f32-plain",
        }
    }
}

impl std::fmt::Display for Precision {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.label())
    }
}

/// J± of every perturbation, however they were computed.
#[derive(Debug, Clone, PartialEq)]
pub struct Evaluation {
    /// J(θ).
    pub cost: f64,
    /// J(θ + ε·e_i), or J(θ + ε·e_i) − J(θ) when `deltas`.
    pub plus: Vec<f64>,
    /// J(θ − ε·e_i), or J(θ − ε·e_i) − J(θ) when `deltas`.
    pub minus: Vec<f64>,
    /// Whether `plus`/`minus` hold the changes ΔJ± from J(θ) (the Δ paths: adding them
    /// back to J(θ) would round away the digits they gained) rather than J± themselves.
    pub deltas: bool,
    /// The size of the numbers whose rounding makes the noise in plain J±: per-sample loss
    /// magnitude with the cost's conditioning, Σ/m, + L2 term (the Δ paths' errors are
    /// per element, in `magnitudes`; the GPU's then holds their RMS).
    pub cost_scale: f64,
    /// Whether the +ε step ([`KINK_PLUS`]) or the −ε step ([`KINK_MINUS`]) of parameter i
    /// moved some ReLU/leaky-ReLU pre-activation across 0 (bit flags).
    pub kinks: Vec<u8>,
    /// Δ paths: per parameter, Σ_j|Δloss_j|/m + |ΔL2| of the +ε and −ε steps — the size of
    /// what was summed into ΔJ±, whose rounding error is a few units of the precision of
    /// it. `None` on plain paths, whose J± carry the rounding of the whole cost
    /// (`cost_scale`).
    pub magnitudes: Option<Vec<[f64; 2]>>,
    /// Plain f64: |h_i − 2ε|/(2ε), where h_i = fl(θ_i + ε) − fl(θ_i − ε) is the step really
    /// taken and 2ε the one divided by (as the notebook does); 1 when the step moved nothing.
    pub step_errors: Option<Vec<f64>>,
    /// "cpu" or "gpu (adapter name)".
    pub backend: String,
    /// The precision and arithmetic the J± were computed in (resolved: never Auto).
    pub precision: Precision,
    /// Unit roundoff of the precision the J± were computed in.
    pub unit_roundoff: f64,
    /// The real steps (θ_i + ε) − (θ_i − ε) when they differ from 2ε (f32: fl32(θ ± ε)
    /// is off by up to u32·|θ|, so dividing by the nominal 2ε would bias every element);
    /// `None` = the nominal 2ε, as the notebook divides. A zero step (ε below the
    /// precision's resolution at θ_i) moves nothing: its gradapprox is reported as 0.
    pub steps: Option<Vec<f64>>,
    /// Layered networks with max pooling: per parameter, the width of the interval of
    /// valid derivatives an exact tie at θ leaves open (any tied entry may take the
    /// gradient); the central difference is its midpoint. `None`: no ties possible.
    pub tie_widths: Option<Vec<f64>>,
    /// Anything the user should know about how this was computed (fallbacks, …).
    pub notes: Vec<String>,
    /// Device time per GPU kernel, when asked for and the adapter has timestamp queries
    /// (empty otherwise).
    pub kernel_times: Vec<KernelTime>,
}

/// The device time one GPU kernel took over an evaluation (timestamp queries around each
/// of its dispatches).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct KernelTime {
    /// Entry point, e.g. "fused_delta".
    pub kernel: String,
    /// Dispatches summed.
    pub dispatches: usize,
    /// Seconds on the device.
    pub seconds: f64,
}

/// Adds `more` into `into`, kernel by kernel (first-seen order).
pub fn add_kernel_times(into: &mut Vec<KernelTime>, more: &[KernelTime]) {
    for k in more {
        match into.iter_mut().find(|t| t.kernel == k.kernel) {
            Some(t) => {
                t.dispatches += k.dispatches;
                t.seconds += k.seconds;
            }
            None => into.push(k.clone()),
        }
    }
}

impl Evaluation {
    /// ΔJ± = (J(θ + ε·e_i) − J(θ), J(θ − ε·e_i) − J(θ)) of parameter i, whichever way
    /// they are stored.
    pub fn delta(&self, i: usize) -> (f64, f64) {
        if self.deltas {
            (self.plus[i], self.minus[i])
        } else {
            (self.plus[i] - self.cost, self.minus[i] - self.cost)
        }
    }

    /// (J⁺_i − J⁻_i)/(2ε) for every i, in f64 (over the real steps where recorded).
    pub fn gradapprox(&self, epsilon: f64) -> Vec<f64> {
        match &self.steps {
            None => self
                .plus
                .iter()
                .zip(&self.minus)
                .map(|(p, m)| (p - m) / (2.0 * epsilon))
                .collect(),
            Some(h) => self
                .plus
                .iter()
                .zip(&self.minus)
                .zip(h)
                .map(|((p, m), h)| if *h == 0.0 { 0.0 } else { (p - m) / h })
                .collect(),
        }
    }
}

/// A backend: computes J(θ) and the J± of the parameters in `range` (the others come
/// back NaN, so that shards keep full-length vectors).
pub trait Evaluator {
    /// Every J(θ ± ε·e_i), i ∈ `range`, at each of `epsilons` (a check's ε and 2ε); the GPU
    /// shares its base pass, tables and uploads between them.
    fn evaluate_many(
        &self,
        model: &Model,
        params: &Params,
        data: &Data,
        epsilons: &[f64],
        range: Range<usize>,
    ) -> Result<Vec<Evaluation>>;

    /// [`Self::evaluate_many`] at one ε.
    fn evaluate(
        &self,
        model: &Model,
        params: &Params,
        data: &Data,
        epsilon: f64,
        range: Range<usize>,
    ) -> Result<Evaluation> {
        let mut one = self.evaluate_many(model, params, data, &[epsilon], range)?;
        one.pop()
            .ok_or_else(|| Error::Internal("no evaluation came back".into()))
    }

    /// The precision its J± will be in ("f64", "f64-plain", "f32" or "f32-plain"), known
    /// before evaluating so that the matching defaults can be chosen.
    fn precision(&self) -> Precision;

    /// Asks for per-kernel device times in the evaluations (GPU with timestamp queries;
    /// nothing elsewhere).
    fn set_kernel_timings(&mut self, _on: bool) {}
}

/// The CPU f64 reference as an [`Evaluator`]: the Δ path (`f64`, the default) or the
/// notebook's arithmetic (`f64-plain`).
#[derive(Debug, Clone)]
pub struct CpuEvaluator {
    /// Serial or on all cores (same bits either way).
    pub threads: Threads,
    /// F64Plain for the notebook's arithmetic; anything else evaluates the f64 Δ path.
    pub precision: Precision,
    /// Where the perturbations done are counted (`None`: nowhere).
    pub progress: Option<Progress>,
}

impl CpuEvaluator {
    fn evaluate_one(
        &self,
        model: &Model,
        params: &Params,
        data: &Data,
        epsilon: f64,
        range: Range<usize>,
    ) -> Result<Evaluation> {
        validate_epsilon(epsilon)?;
        let p = if self.precision == Precision::F64Plain {
            cpu::perturbed_costs(model, params, data, epsilon, range.clone(), self.threads)?
        } else {
            cpu::perturbed_deltas(model, params, data, epsilon, range.clone(), self.threads)?
        };
        Ok(self.finish(model, params, data, epsilon, range, p))
    }

    /// A layered network's evaluations: every ε of a check in one pass (lanes).
    fn evaluate_layered(
        &self,
        model: &Model,
        net: &crate::model::Net,
        params: &Params,
        data: &Data,
        epsilons: &[f64],
        range: Range<usize>,
    ) -> Result<Vec<Evaluation>> {
        for &e in epsilons {
            validate_epsilon(e)?;
        }
        if self.precision == Precision::F64Plain {
            return epsilons
                .iter()
                .map(|&e| {
                    let p = layered::perturbed_costs(
                        model,
                        net,
                        params,
                        data,
                        e,
                        range.clone(),
                        self.threads,
                    )?;
                    Ok(self.finish(model, params, data, e, range.clone(), p))
                })
                .collect();
        }
        let all = layered::perturbed_deltas_many(
            model,
            net,
            params,
            data,
            epsilons,
            range.clone(),
            self.threads,
        )?;
        Ok(all
            .into_iter()
            .zip(epsilons)
            .map(|(p, &e)| self.finish(model, params, data, e, range.clone(), p))
            .collect())
    }

    /// The [`Evaluation`] of evaluated perturbations: full-length vectors and notes.
    fn finish(
        &self,
        model: &Model,
        params: &Params,
        data: &Data,
        epsilon: f64,
        range: Range<usize>,
        p: cpu::Perturbed,
    ) -> Evaluation {
        let n = model.n_params();
        let plain = self.precision == Precision::F64Plain;
        // Full-length vectors: NaN (and no kink) outside the range.
        let mut plus = vec![f64::NAN; n];
        let mut minus = vec![f64::NAN; n];
        let mut kinks = vec![0; n];
        plus[range.clone()].copy_from_slice(&p.plus);
        minus[range.clone()].copy_from_slice(&p.minus);
        kinks[range.clone()].copy_from_slice(&p.kinks);
        let magnitudes = p.magnitudes.map(|m| {
            let mut all = vec![[f64::NAN; 2]; n];
            all[range.clone()].copy_from_slice(&m);
            all
        });
        let tie_widths = p.tie_widths.map(|t| {
            let mut all = vec![0.0; n];
            all[range.clone()].copy_from_slice(&t);
            all
        });
        let mut notes = Vec::new();
        if !plain && model.net().is_none() {
            let over: Vec<String> = (0..model.depth().saturating_sub(1))
                .filter(|&l| !cpu::shortcut_fits(model, data, l))
                .map(|l| {
                    format!(
                        "{} ({} MiB)",
                        l + 1,
                        cpu::shortcut_table_bytes(model, data, l) >> 20
                    )
                })
                .collect();
            if !over.is_empty() {
                notes.push(format!(
                    "the shortcut tables of layer(s) {} exceed {} MiB (GRADCHECK_MAX_TABLE_BYTES): those layers' perturbations went layer by layer (same numbers, slower)",
                    over.join(", "),
                    cpu::shortcut_table_budget() >> 20
                ));
            }
        }
        if matches!(self.precision, Precision::F32 | Precision::F32Plain) {
            notes.push(format!(
                "--precision {} applies to the GPU; the CPU evaluated the f64 Δ path",
                self.precision.label()
            ));
        }
        Evaluation {
            cost: p.cost,
            plus,
            minus,
            deltas: !plain,
            cost_scale: p.cost_scale,
            kinks,
            magnitudes,
            step_errors: plain.then(|| nominal_step_errors(params.as_slice(), epsilon)),
            tie_widths,
            backend: "cpu".into(),
            precision: if plain {
                Precision::F64Plain
            } else {
                Precision::F64
            },
            unit_roundoff: f64::EPSILON / 2.0,
            steps: None,
            notes,
            kernel_times: Vec::new(),
        }
    }
}

impl Evaluator for CpuEvaluator {
    fn evaluate_many(
        &self,
        model: &Model,
        params: &Params,
        data: &Data,
        epsilons: &[f64],
        range: Range<usize>,
    ) -> Result<Vec<Evaluation>> {
        cpu::counting_into(self.progress.as_ref(), || {
            if let Some(net) = model.net() {
                return self.evaluate_layered(model, net, params, data, epsilons, range);
            }
            epsilons
                .iter()
                .map(|&e| self.evaluate_one(model, params, data, e, range.clone()))
                .collect()
        })
    }

    fn precision(&self) -> Precision {
        if self.precision == Precision::F64Plain {
            Precision::F64Plain
        } else {
            Precision::F64
        }
    }
}

/// |h_i − 2ε|/(2ε) for h_i = fl(θ_i + ε) − fl(θ_i − ε): how far the step really taken in
/// f64 is from the 2ε the notebook divides by (1 when ε is below θ_i's resolution).
pub fn nominal_step_errors(theta: &[f64], epsilon: f64) -> Vec<f64> {
    theta
        .iter()
        .map(|&t| (((t + epsilon) - (t - epsilon)) - 2.0 * epsilon).abs() / (2.0 * epsilon))
        .collect()
}

/// The magnitude whose rounding is the noise in J± ([`cpu::noise_scale`]).
pub fn cost_scale(model: &Model, params: &Params, data: &Data) -> f64 {
    cost_and_scale(model, params, data).1
}

/// J(θ) in the stable forms and the noise scale of a plain J, for any model.
pub fn cost_and_scale(model: &Model, params: &Params, data: &Data) -> (f64, f64) {
    match model.net() {
        Some(net) => {
            let fwd = crate::net::forward(model, net, params, data);
            (fwd.cost, crate::net::noise_scale(model, net, params, &fwd))
        }
        None => {
            let fwd = cpu::forward(model, params, data);
            (
                cpu::stable_cost(model, &fwd, data),
                cpu::noise_scale(model, &fwd, data),
            )
        }
    }
}

/// Per-element term sizes of both sides ([`cpu::term_sizes`]) where the evaluator has
/// them (the MLP shorthand); `None` lets the verdict use each tensor's RMS term size.
pub fn term_sizes(model: &Model, params: &Params, data: &Data) -> Option<cpu::TermSizes> {
    model
        .net()
        .is_none()
        .then(|| cpu::term_sizes(model, params, data))
}

/// ε must be a finite number > 0.
pub fn validate_epsilon(e: f64) -> Result<()> {
    if e.is_finite() && e > 0.0 {
        Ok(())
    } else {
        Err(Error::Config(format!(
            "epsilon = {e} must be a finite number > 0"
        )))
    }
}

/// Central differences of any function on the CPU: `f` is J and `theta` the point. One
/// copy of θ is perturbed in place and restored after each element (fl(θ_i ± ε), as the
/// notebook).
pub fn check_fn<F: FnMut(&[f64]) -> f64>(
    mut f: F,
    theta: &[f64],
    epsilon: f64,
) -> Result<Evaluation> {
    validate_epsilon(epsilon)?;
    let mut t = theta.to_vec();
    let cost = f(&t);
    let (mut plus, mut minus) = (Vec::with_capacity(t.len()), Vec::with_capacity(t.len()));
    for i in 0..t.len() {
        let orig = t[i];
        t[i] = orig + epsilon;
        plus.push(f(&t));
        t[i] = orig - epsilon;
        minus.push(f(&t));
        t[i] = orig;
    }
    Ok(Evaluation {
        cost,
        cost_scale: cost.abs(),
        kinks: vec![0; t.len()],
        magnitudes: None,
        step_errors: Some(nominal_step_errors(theta, epsilon)),
        plus,
        minus,
        deltas: false,
        backend: "cpu".into(),
        precision: crate::eval::Precision::F64Plain,
        unit_roundoff: f64::EPSILON / 2.0,
        steps: None,
        tie_widths: None,
        notes: Vec::new(),
        kernel_times: Vec::new(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn notebook_one_dimensional_check() {
        // J(θ) = θ·x at x = 2, θ = 4: dJ/dθ = x.
        let x = 2.0;
        let eval = check_fn(|t| t[0] * x, &[4.0], 1e-7).unwrap();
        let approx = eval.gradapprox(1e-7);
        assert!((approx[0] - 2.0).abs() < 1e-8);
        let d = crate::metric::difference(&[x], &approx);
        // The notebook's own number, to 1e-12 relative.
        let want = 2.919335883291695e-10;
        assert!((d - want).abs() <= 1e-12 * want, "{d}");
    }

    #[test]
    fn bad_epsilon_is_an_error() {
        for e in [0.0, -1e-7, f64::NAN, f64::INFINITY] {
            assert!(check_fn(|t| t[0], &[1.0], e).is_err());
        }
    }
}
