//! The one-call check: resolve the defaults, evaluate every J± with the chosen backend
//! (through the [`Evaluator`] trait), judge them (`verdict`), diagnose the failing tensors
//! (`diagnose`). Also the fast mode (random directions).
//!
//! May use: `eval`, `verdict`, `diagnose`, `model`, `metric`, `rng`. Front ends sit above.

use std::time::Instant;

use crate::diagnose;
use crate::error::{Error, Result};
pub use crate::eval::{Backend, Evaluation, Precision, check_fn, validate_epsilon};
use crate::eval::{Evaluator, Threads, cpu};
use crate::metric::difference;
use crate::model::{Data, Grads, Model, ParamLayout, Params};
pub use crate::verdict::{
    DEFAULT_EPSILON, DEFAULT_THRESHOLD, Direction, F32_EPSILON, F32_PLAIN_EPSILON,
    F32_PLAIN_THRESHOLD, F32_THRESHOLD, FastCheck, KinkPolicy, Report, Rules, TensorReport,
    Timings, validate_threshold,
};

/// Configures and runs a gradient check.
///
/// Verdict: the check passes when the global difference (over the counted elements) is at
/// most the threshold (or its RMS error is under the noise floor) **and** every tensor passes. A tensor passes when its own difference
/// is at most the threshold, or when its RMS error is below the rounding-noise floor
/// ([`crate::verdict::noise_floor`]): a tiny tensor such as b3 has a noisy relative difference even with
/// correct gradients (the notebook's b1 shows 3.3e-7), while an error that large in
/// absolute terms cannot be told from rounding by any finite difference at this ε.
#[derive(Debug, Clone)]
pub struct GradCheck {
    /// ε; `None` = the precision's default.
    pub epsilon: Option<f64>,
    /// Threshold; `None` = the precision's default.
    pub threshold: Option<f64>,
    /// Evaluator.
    pub backend: Backend,
    /// GPU precision.
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
    /// i.e. (8(J₁⁺ − J₁⁻) − (J₂⁺ − J₂⁻))/12ε, error O(ε⁴); costs a second evaluation at 2ε).
    pub stencil: u8,
    /// Evaluate only these parameters (a shard, see [`crate::shard`]); the others' J±
    /// are NaN.
    pub range: Option<std::ops::Range<usize>>,
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
        crate::eval::evaluator(
            self.backend,
            self.precision,
            self.adapter.as_deref(),
            self.threads,
        )
    }

    /// Computes every J± (those of `range` when set) with the configured backend.
    pub fn evaluate(
        &self,
        model: &Model,
        params: &Params,
        data: &Data,
        epsilon: f64,
    ) -> Result<Evaluation> {
        validate_epsilon(epsilon)?;
        let range = self.range.clone().unwrap_or(0..model.n_params());
        self.evaluator()?
            .evaluate(model, params, data, epsilon, range)
    }

    /// The precision the J± will be computed in ("f64", "f32" or "f32-plain"), so that
    /// the matching default ε and threshold can be chosen before evaluating: f64 on the
    /// CPU and on adapters with SHADER_F64, f32 when asked for or when the GPU has no f64.
    pub fn resolved_precision(&self) -> &'static str {
        self.evaluator().map_or("f64", |e| e.precision())
    }

    /// The ε and threshold this check uses for a precision label.
    pub fn defaults_for(&self, precision: &str) -> (f64, f64) {
        let (e, t) = match precision {
            "f32" => (F32_EPSILON, F32_THRESHOLD),
            "f32-plain" => (F32_PLAIN_EPSILON, F32_PLAIN_THRESHOLD),
            _ => (DEFAULT_EPSILON, DEFAULT_THRESHOLD),
        };
        (self.epsilon.unwrap_or(e), self.threshold.unwrap_or(t))
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
        let precision_hint = self.resolved_precision();
        let (epsilon, threshold) = self.defaults_for(precision_hint);
        validate_threshold(threshold)?;
        if !matches!(self.stencil, 2 | 4) {
            return Err(Error::Config(format!(
                "stencil {}: only 2 and 4 are supported",
                self.stencil
            )));
        }
        let eval = self.evaluate(model, params, data, epsilon)?;
        let (layout, grad, m) = (model.layout(), grads.as_slice(), data.m());
        let mut report = match self.stencil {
            2 => self.build_report(layout, grad, &eval, epsilon, threshold, m),
            4 => {
                let wide = self.evaluate(model, params, data, 2.0 * epsilon)?;
                let (g1, g2) = (eval.gradapprox(epsilon), wide.gradapprox(2.0 * epsilon));
                let g4: Vec<f64> = g1
                    .iter()
                    .zip(&g2)
                    .map(|(a, b)| (4.0 * a - b) / 3.0)
                    .collect();
                let err: Vec<f64> = g1.iter().zip(&g4).map(|(a, b)| (a - b).abs()).collect();
                let mut both = eval.clone();
                for (k, w) in both.kinks.iter_mut().zip(&wide.kinks) {
                    *k |= *w;
                }
                self.build_report_with(layout, grad, &both, g4, Some(&err), epsilon, threshold, m)
            }
            _ => unreachable!("validated above"),
        };
        diagnose::dropout_slips(model, params, data, grad, &mut report.tensors);
        let evaluate_s = t0.elapsed().as_secs_f64();
        report.timings = Timings {
            evaluate_s,
            total_s: t0.elapsed().as_secs_f64(),
        };
        Ok(report)
    }

    /// How evaluations are judged.
    pub fn rules(&self) -> Rules {
        Rules {
            kinks: self.kinks,
            top_k: self.top_k,
        }
    }

    /// Judges an evaluation and diagnoses the failing tensors (see [`Rules::build_report`]).
    pub fn build_report(
        &self,
        layout: &ParamLayout,
        grad: &[f64],
        eval: &Evaluation,
        epsilon: f64,
        threshold: f64,
        m: usize,
    ) -> Report {
        let mut r = self
            .rules()
            .build_report(layout, grad, eval, epsilon, threshold, m);
        diagnose::diagnose_report(&mut r, layout, grad, m);
        r
    }

    /// [`GradCheck::build_report`] with the central differences given (see
    /// [`Rules::build_report_with`]).
    #[allow(clippy::too_many_arguments)]
    pub fn build_report_with(
        &self,
        layout: &ParamLayout,
        grad: &[f64],
        eval: &Evaluation,
        approx: Vec<f64>,
        error_estimate: Option<&[f64]>,
        epsilon: f64,
        threshold: f64,
        m: usize,
    ) -> Report {
        let mut r = self.rules().build_report_with(
            layout,
            grad,
            eval,
            approx,
            error_estimate,
            epsilon,
            threshold,
            m,
        );
        diagnose::diagnose_report(&mut r, layout, grad, m);
        r
    }
}

/// Fast mode: compares g·u with the central difference of J along K random directions u
/// with ±1 entries (so each coordinate moves by ε, as in the full check): 2K forward
/// passes on the CPU in f64 instead of 2N. It catches a wrong gradient cheaply but cannot
/// say where, and a few wrong entries among many right ones can be diluted below the
/// threshold: a failure should be followed by the full check.
#[allow(clippy::too_many_arguments)]
pub fn fast_check(
    model: &Model,
    params: &Params,
    data: &Data,
    grads: &Grads,
    k: usize,
    seed: u64,
    epsilon: f64,
    threshold: f64,
) -> Result<FastCheck> {
    validate_epsilon(epsilon)?;
    if k == 0 {
        return Err(Error::Config("--fast needs at least one direction".into()));
    }
    let mut rng = crate::rng::Rng(seed);
    let n = model.n_params();
    let mut directions = Vec::with_capacity(k);
    let mut shifted = params.clone();
    for _ in 0..k {
        let u: Vec<f64> = (0..n)
            .map(|_| if rng.next_f64() < 0.5 { -1.0 } else { 1.0 })
            .collect();
        let analytic = grads.as_slice().iter().zip(&u).map(|(g, u)| g * u).sum();
        let mut cost_at = |sign: f64| {
            for ((s, t), u) in shifted
                .as_mut_slice()
                .iter_mut()
                .zip(params.as_slice())
                .zip(&u)
            {
                *s = t + sign * epsilon * u;
            }
            cpu::cost(model, &shifted, data)
        };
        let numeric = (cost_at(1.0) - cost_at(-1.0)) / (2.0 * epsilon);
        directions.push(Direction { analytic, numeric });
    }
    let (a, b): (Vec<f64>, Vec<f64>) = directions.iter().map(|d| (d.analytic, d.numeric)).unzip();
    let difference = difference(&a, &b);
    Ok(FastCheck {
        directions,
        seed,
        difference,
        passed: difference <= threshold,
    })
}
