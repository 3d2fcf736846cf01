//! The one-call check: resolve the defaults, evaluate every J± with the chosen backend
//! (through the [`Evaluator`] trait), judge them (`verdict`), diagnose the failing tensors
//! (`diagnose`). Also the fast mode (random directions).
//!
//! May use: `eval`, `verdict`, `diagnose`, `model`, `metric`, `rng`. Front ends sit above.

use std::time::Instant;

use crate::diagnose;
use crate::error::{Error, Result};
pub use crate::eval::{Backend, Evaluation, Precision, check_fn, validate_epsilon};
use crate::eval::{Evaluator, Threads};
use crate::metric::difference;
use crate::model::{Data, Grads, Model, ParamLayout, Params};
pub use crate::verdict::{
    DEFAULT_EPSILON, DEFAULT_THRESHOLD, Direction, Evidence, F32_EPSILON, F32_PLAIN_EPSILON,
    F32_PLAIN_THRESHOLD, F32_THRESHOLD, FastCheck, KinkPolicy, Report, Rules, TensorReport,
    Timings, Verdict, validate_threshold,
};

/// Configures and runs a gradient check: evaluates every J± at ε and at 2ε (the second
/// for the truncation estimate), judges them by the error model of [`crate::verdict`],
/// diagnoses failing tensors, and — when the verdict is inconclusive for a reason a
/// different ε cures (truncation, kinks, plain rounding) — checks once more at that ε.
#[derive(Debug, Clone)]
pub struct GradCheck {
    /// ε; `None` = the precision's default.
    pub epsilon: Option<f64>,
    /// The notebook's threshold (reported beside the verdict); `None` = the precision's default.
    pub threshold: Option<f64>,
    /// Evaluator.
    pub backend: Backend,
    /// Precision and arithmetic.
    pub precision: Precision,
    /// Kink policy.
    pub kinks: KinkPolicy,
    /// How many worst elements to list per tensor.
    pub top_k: usize,
    /// CPU threading.
    pub threads: Threads,
    /// Substring of the GPU adapter's name to pick.
    pub adapter: Option<String>,
    /// 2 (the notebook's central difference) or 4 (Richardson: (4·g(ε) − g(2ε))/3,
    /// error O(ε⁴), from the same two evaluations).
    pub stencil: u8,
    /// Evaluate only these parameters (a shard, see [`crate::shard`]); the others' J±
    /// are NaN.
    pub range: Option<std::ops::Range<usize>>,
    /// Unit roundoff of the analytic gradients (f64 unless they came as f32).
    pub gradient_roundoff: f64,
    /// Re-check once at a better ε when the verdict is inconclusive for a reason ε cures.
    pub auto_epsilon: bool,
    /// Measure every GPU kernel's device time (timestamp queries) into the report.
    pub kernel_timings: bool,
    /// Where the CPU evaluations count their perturbations (a progress display).
    pub progress: Option<crate::eval::Progress>,
}

impl Default for GradCheck {
    fn default() -> Self {
        GradCheck {
            epsilon: None,
            threshold: None,
            backend: Backend::Auto,
            precision: Precision::Auto,
            kinks: KinkPolicy::Exclude,
            top_k: 3,
            threads: Threads::Parallel,
            adapter: None,
            stencil: 2,
            range: None,
            gradient_roundoff: f64::EPSILON / 2.0,
            auto_epsilon: true,
            kernel_timings: false,
            progress: None,
        }
    }
}

impl GradCheck {
    /// Defaults: the notebook's ε and threshold, auto backend and precision, kinks excluded.
    pub fn new() -> Self {
        Self::default()
    }
    /// Sets ε.
    pub fn epsilon(mut self, e: f64) -> Self {
        self.epsilon = Some(e);
        self
    }
    /// Sets the threshold.
    pub fn threshold(mut self, t: f64) -> Self {
        self.threshold = Some(t);
        self
    }
    /// Sets the backend.
    pub fn backend(mut self, b: Backend) -> Self {
        self.backend = b;
        self
    }
    /// Sets the precision.
    pub fn precision(mut self, p: Precision) -> Self {
        self.precision = p;
        self
    }
    /// Sets the kink policy.
    pub fn kinks(mut self, k: KinkPolicy) -> Self {
        self.kinks = k;
        self
    }

    /// The evaluator the configured backend stands for.
    pub fn evaluator(&self) -> Result<Box<dyn Evaluator>> {
        let mut e = crate::eval::backend::evaluator(
            self.backend,
            self.precision,
            self.adapter.as_deref(),
            self.threads,
            self.progress.clone(),
        )?;
        e.set_kernel_timings(self.kernel_timings);
        Ok(e)
    }

    /// Computes every J± (those of `range` when set) with the configured backend.
    pub fn evaluate(
        &self,
        model: &Model,
        params: &Params,
        data: &Data,
        epsilon: f64,
    ) -> Result<Evaluation> {
        self.evaluator()?
            .evaluate(model, params, data, epsilon, self.range_of(model))
    }

    /// [`Self::evaluate`] at each of `epsilons`, sharing what the backend can share (the
    /// GPU: base pass, tables, uploads).
    pub fn evaluate_many(
        &self,
        model: &Model,
        params: &Params,
        data: &Data,
        epsilons: &[f64],
    ) -> Result<Vec<Evaluation>> {
        self.evaluator()?
            .evaluate_many(model, params, data, epsilons, self.range_of(model))
    }

    /// The J± at ε and at 2ε (the evidence and its truncation estimate), in one call.
    pub fn evaluate_pair(
        &self,
        evaluator: &dyn Evaluator,
        model: &Model,
        params: &Params,
        data: &Data,
        epsilon: f64,
    ) -> Result<(Evaluation, Evaluation)> {
        let mut both = evaluator.evaluate_many(
            model,
            params,
            data,
            &[epsilon, 2.0 * epsilon],
            self.range_of(model),
        )?;
        match (both.pop(), both.pop()) {
            (Some(wide), Some(at)) => Ok((at, wide)),
            _ => Err(Error::Internal(
                "an evaluator returned fewer evaluations than ε".into(),
            )),
        }
    }

    /// The parameters evaluated: `range`, or all.
    fn range_of(&self, model: &Model) -> std::ops::Range<usize> {
        self.range.clone().unwrap_or(0..model.n_params())
    }

    /// The precision the J± will be computed in ("f64", "f64-plain", "f32" or
    /// "f32-plain"), so that the matching default ε and threshold can be chosen before
    /// evaluating.
    pub fn resolved_precision(&self) -> Precision {
        self.evaluator().map_or(Precision::F64, |e| e.precision())
    }

    /// The ε and threshold this check uses for a (resolved) precision.
    pub fn defaults_for(&self, precision: Precision) -> (f64, f64) {
        let (e, t) = match precision {
            Precision::F32 => (F32_EPSILON, F32_THRESHOLD),
            Precision::F32Plain => (F32_PLAIN_EPSILON, F32_PLAIN_THRESHOLD),
            _ => (DEFAULT_EPSILON, DEFAULT_THRESHOLD),
        };
        (self.epsilon.unwrap_or(e), self.threshold.unwrap_or(t))
    }

    /// How evaluations are judged.
    pub fn rules(&self) -> Rules {
        Rules {
            kinks: self.kinks,
            top_k: self.top_k,
            gradient_roundoff: self.gradient_roundoff,
            stencil: self.stencil,
        }
    }

    /// Judges evaluations at ε (and 2ε) and diagnoses the failing tensors. Gradients that
    /// came as float64 but are all exactly float32 numbers are judged with float32's
    /// rounding ([`float32_in_disguise`]), and the report says so.
    pub fn judge(&self, ev: &Evidence<'_>) -> Report {
        let mut rules = self.rules();
        let disguised = rules.gradient_roundoff < F32_ROUNDOFF && float32_in_disguise(ev.grad);
        if disguised {
            rules.gradient_roundoff = F32_ROUNDOFF;
        }
        let mut r = rules.judge(ev);
        if disguised {
            r.notes.push(
                "every gradient value is exactly a float32 number, so they were computed or rounded in float32: judged with float32's rounding (u = 6e-8); save them as float32 to say so, or compute them in float64 for a sharper check".into(),
            );
        }
        diagnose::diagnose_report(&mut r, ev.layout, ev.grad, ev.m);
        r
    }

    /// Runs the check of `grads` against central differences of the model's cost.
    pub fn run(
        &self,
        model: &Model,
        params: &Params,
        data: &Data,
        grads: &Grads,
    ) -> Result<Report> {
        let t0 = Instant::now();
        if grads.layout() != model.layout() {
            return Err(Error::Shape(
                "gradients are not laid out like the parameters".into(),
            ));
        }
        if !matches!(self.stencil, 2 | 4) {
            return Err(Error::Config(format!(
                "stencil {}: only 2 and 4 are supported",
                self.stencil
            )));
        }
        let evaluator = self.evaluator()?;
        let (epsilon, threshold) = self.defaults_for(evaluator.precision());
        validate_threshold(threshold)?;
        let mut spent = 0.0;
        let mut kernels = Vec::new();
        let mut report = self.run_at(
            &*evaluator,
            model,
            params,
            data,
            grads,
            epsilon,
            threshold,
            &mut spent,
            &mut kernels,
        )?;
        if report.verdict == Verdict::Inconclusive && self.auto_epsilon {
            // Re-check at the ε each inconclusive report suggests, until decided or the
            // budget is spent (a suggestion can itself be only half a cure: ε = 1e-12 in
            // plain f64 → 1e-9 → 1e-6).
            let why = match report.reasons.as_slice() {
                [] => String::new(),
                [one] => one.clone(),
                [one, rest @ ..] => format!("{one}; and {} more", rest.len()),
            };
            let mut tried = vec![epsilon];
            let mut last = report.clone();
            let mut decided = None;
            for _ in 0..MAX_RECHECKS {
                let Some(e2) = untried_suggestion(&last, &tried) else {
                    break;
                };
                let retry = self.run_at(
                    &*evaluator,
                    model,
                    params,
                    data,
                    grads,
                    e2,
                    threshold,
                    &mut spent,
                    &mut kernels,
                )?;
                tried.push(e2);
                if retry.verdict != Verdict::Inconclusive {
                    decided = Some(retry);
                    break;
                }
                report.notes.push(format!(
                    "re-checked at ε = {e2:e}: still inconclusive ({})",
                    retry.reasons.first().cloned().unwrap_or_default()
                ));
                last = retry;
            }
            let steps: Vec<String> = tried.iter().map(|e| format!("{e:e}")).collect();
            match decided {
                Some(mut r) => {
                    r.notes.push(format!(
                        "at ε = {epsilon:e} the check was inconclusive ({why}); re-checked at ε = {}",
                        steps[1..].join(", then ")
                    ));
                    report = r;
                }
                None if tried.len() > 1 => {
                    report.suggested_epsilon = untried_suggestion(&last, &tried);
                    if report.suggested_epsilon.is_none() && last.unresolved > 0 {
                        report.notes.push(format!(
                            "{} element(s) stayed unresolved at ε = {}: a smaller ε does not separate an exact kink (a unit at z = 0); there the one-sided derivatives bound the valid subgradients, and --kinks include judges the central difference anyway",
                            last.unresolved,
                            steps.join(" and ")
                        ));
                    }
                }
                None => {}
            }
        }
        let total_s = t0.elapsed().as_secs_f64();
        report.timings = Timings {
            load_s: 0.0,
            evaluate_s: spent,
            judge_s: total_s - spent,
            total_s,
            kernels,
        };
        Ok(report)
    }

    /// Evaluates at ε and 2ε, judges, diagnoses (dropout slips included).
    #[allow(clippy::too_many_arguments)]
    fn run_at(
        &self,
        evaluator: &dyn Evaluator,
        model: &Model,
        params: &Params,
        data: &Data,
        grads: &Grads,
        epsilon: f64,
        threshold: f64,
        spent: &mut f64,
        kernels: &mut Vec<crate::eval::KernelTime>,
    ) -> Result<Report> {
        let t0 = Instant::now();
        let (eval, wide) = self.evaluate_pair(evaluator, model, params, data, epsilon)?;
        *spent += t0.elapsed().as_secs_f64();
        crate::eval::add_kernel_times(kernels, &eval.kernel_times);
        crate::eval::add_kernel_times(kernels, &wide.kernel_times);
        let grad = grads.as_slice();
        let mut report = self.judge(&Evidence {
            layout: model.layout(),
            grad,
            eval: &eval,
            wide: Some(&wide),
            epsilon,
            threshold,
            m: data.m(),
            growth: crate::verdict::growth(model.layout()),
            terms: crate::eval::term_sizes(model, params, data).as_ref(),
        });
        diagnose::dropout_slips(model, params, data, grad, &mut report.tensors);
        diagnose::layer_slips(model, params, data, grad, &mut report.tensors);
        diagnose::l2_slips(model, params, data, grad, &mut report);
        diagnose::cost_slips(model, params, data, grad, &mut report);
        Ok(report)
    }
}

/// The ε `last` (the report at the last ε of `tried`) suggests, unless it was tried
/// already, or is a still smaller one for kinks that a 1000× smaller ε did not separate
/// (θ sits on those exactly: no ε separates them).
fn untried_suggestion(last: &Report, tried: &[f64]) -> Option<f64> {
    let (first, prev) = (tried[0], *tried.last().expect("ε tried"));
    let kinks_stayed = prev < first && last.unresolved > 0;
    let seen = |e: f64| tried.iter().any(|t| (t - e).abs() <= 1e-9 * t);
    last.suggested_epsilon
        .filter(|&e| !(seen(e) || (kinks_stayed && e < prev)))
}

/// How many times an inconclusive check is re-checked at the ε it suggests.
const MAX_RECHECKS: usize = 3;

/// float32's unit roundoff, 2⁻²⁴.
const F32_ROUNDOFF: f64 = f32::EPSILON as f64 / 2.0;

/// Whether float64 gradients are float32 values in disguise: every finite value is exactly
/// a float32 number, and at least one uses more than float32's top 11 mantissa bits (a
/// float64 gradient computed in float64 is exactly a float32 with probability 2⁻²⁹ per
/// value; integers, zeros and short binary fractions prove nothing and are not counted).
pub fn float32_in_disguise(grad: &[f64]) -> bool {
    let mut informative = 0;
    for &v in grad.iter().filter(|v| v.is_finite()) {
        let f = v as f32;
        if f64::from(f) != v {
            return false;
        }
        informative += usize::from(f.to_bits() & 0xFFF != 0);
    }
    informative > 0
}

/// Fast mode: compares g·u with the central difference of J along K random directions u
/// with ±1 entries (so each coordinate moves by ε, as in the full check): 4K forward
/// passes on the CPU in f64 (at ε and 2ε) instead of 4N. The K directional derivatives are
/// judged like one tensor by the error model. It catches a wrong gradient cheaply but
/// cannot say where, and a few wrong entries among many right ones can be diluted: only
/// its PASS is used; anything else is followed by the full check.
impl GradCheck {
    /// The fast check's report (mode "fast"; `fast` holds the directions).
    #[allow(clippy::too_many_arguments)]
    pub fn fast(
        &self,
        model: &Model,
        params: &Params,
        data: &Data,
        grads: &Grads,
        k: usize,
        seed: u64,
    ) -> Result<Report> {
        let (epsilon, threshold) = self.defaults_for(Precision::F64);
        validate_epsilon(epsilon)?;
        validate_threshold(threshold)?;
        if k == 0 {
            return Err(Error::Config("--fast needs at least one direction".into()));
        }
        let t0 = Instant::now();
        let mut rng = crate::rng::Rng(seed);
        let n = model.n_params();
        let (cost, scale) = crate::eval::cost_and_scale(model, params, data);
        let mut shifted = params.clone();
        let (mut analytic, mut at, mut wide) = (Vec::new(), Vec::new(), Vec::new());
        for _ in 0..k {
            let u: Vec<f64> = (0..n)
                .map(|_| if rng.next_f64() < 0.5 { -1.0 } else { 1.0 })
                .collect();
            analytic.push(grads.as_slice().iter().zip(&u).map(|(g, u)| g * u).sum());
            let mut cost_at = |step: f64| {
                for ((s, t), u) in shifted
                    .as_mut_slice()
                    .iter_mut()
                    .zip(params.as_slice())
                    .zip(&u)
                {
                    *s = t + step * u;
                }
                crate::eval::cost_and_scale(model, &shifted, data).0
            };
            at.push((cost_at(epsilon), cost_at(-epsilon)));
            wide.push((cost_at(2.0 * epsilon), cost_at(-2.0 * epsilon)));
        }
        // Every direction moves every coordinate: the worst coordinate's gap between the
        // step taken and the nominal one, the same for all K.
        let worst_gap = crate::eval::nominal_step_errors(params.as_slice(), epsilon)
            .into_iter()
            .fold(0.0, f64::max);
        let pseudo = |pm: &[(f64, f64)]| Evaluation {
            cost,
            plus: pm.iter().map(|p| p.0).collect(),
            minus: pm.iter().map(|p| p.1).collect(),
            deltas: false,
            cost_scale: scale,
            kinks: vec![0; k],
            magnitudes: None,
            step_errors: Some(vec![worst_gap; k]),
            backend: "cpu (fast mode)".into(),
            precision: crate::eval::Precision::F64Plain,
            unit_roundoff: f64::EPSILON / 2.0,
            steps: None,
            tie_widths: None,
            notes: Vec::new(),
            kernel_times: Vec::new(),
        };
        let (e_at, e_wide) = (pseudo(&at), pseudo(&wide));
        let layout = ParamLayout::single("directions", 1, k);
        let mut r = self.rules().judge(&Evidence {
            layout: &layout,
            grad: &analytic,
            eval: &e_at,
            wide: Some(&e_wide),
            epsilon,
            threshold,
            m: data.m(),
            growth: crate::verdict::growth(model.layout()),
            terms: None,
        });
        // Kinks are not tracked along random directions: only a clean pass counts.
        let directions: Vec<Direction> = analytic
            .iter()
            .zip(&r.gradapprox)
            .map(|(&a, &n)| Direction {
                analytic: a,
                numeric: n,
            })
            .collect();
        r.fast = Some(FastCheck {
            difference: difference(&analytic, &r.gradapprox),
            passed: r.passed,
            directions,
            seed,
        });
        r.n_params = n;
        r.mode = "fast".into();
        r.notes.push(format!(
            "fast mode: {k} random ±1 directions (seed {seed}) agree; the full per-element check was not run"
        ));
        let total_s = t0.elapsed().as_secs_f64();
        r.timings = Timings {
            evaluate_s: total_s,
            total_s,
            ..Timings::default()
        };
        Ok(r)
    }
}
