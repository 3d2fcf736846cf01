//! The one call: a [`Problem`] and a [`Plan`] → a [`Report`]. Every front end (the CLI's
//! `check` and `merge`, batch jobs, shards, Python) parses its inputs into these two and
//! renders what comes back; the rules of a check live here, once — ε in (0, 1] or auto,
//! the stencil, the fast mode's directions, shards and their stencil, the notebook's own
//! examples in its arithmetic, and every note a report carries. Nothing writes into a
//! report after this module returns it.
//!
//! May use: `check` (the engine), `sweep` (auto-ε), `shard`, `problem`, `diagnose`,
//! `eval`. Front ends sit above.

use crate::check::{Backend, GradCheck, KinkPolicy, Precision, Report, Timings};
use crate::error::{Error, Result};
use crate::eval::Threads;
use crate::problem::Problem;
use crate::shard::Partial;

/// ε of a plan.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Epsilon {
    /// The precision's default (1e-7 in f64, 1e-4 in f32, 1e-3 in f32-plain).
    Default,
    /// This ε, in (0, 1].
    Value(f64),
    /// A short sweep at the check's precision picks it ([`crate::sweep::auto_epsilon`]).
    Auto,
}

/// The fast mode: K random ±1 directions first; the full check only when they do not pass.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Fast {
    /// K, 1 … [`MAX_FAST_DIRECTIONS`].
    pub directions: u64,
    /// Seed of the directions (reported, so that a run can be repeated).
    pub seed: u64,
}

/// The most directions the fast mode takes (beyond, the full check is cheaper).
pub const MAX_FAST_DIRECTIONS: u64 = 10_000;

/// `--backend auto` runs a problem of fewer perturbation-samples (4·N·m: ε and 2ε, ± each
/// parameter, every sample) on the CPU without asking for a GPU at all: below it the CPU's
/// Δ path finishes in well under the ~0.1–0.5 s a GPU context costs to open (measured on
/// this project's 2-core machine: 64-32-16-1 at m = 32, 3.4e5, in 9 ms; 784-64-32-1 at
/// m = 64, 1.3e7, in 0.14 s; whole processes, benches/compare_peers.sh).
pub const AUTO_CPU_WORK: f64 = 2e7;

/// How to check a problem: every setting a front end can give. [`Plan::validate`] is the
/// one place they are checked.
#[derive(Debug, Clone, PartialEq)]
pub struct Plan {
    /// ε.
    pub epsilon: Epsilon,
    /// The notebook's threshold (reported beside the verdict); `None` = the precision's.
    pub threshold: Option<f64>,
    /// Evaluator.
    pub backend: Backend,
    /// Precision and arithmetic (`Auto`: f64; the notebook's examples: f64-plain).
    pub precision: Precision,
    /// Kink policy.
    pub kinks: KinkPolicy,
    /// Worst elements listed per tensor.
    pub top_k: usize,
    /// 2 (central difference) or 4 (Richardson); any other number is refused.
    pub stencil: u64,
    /// Substring of the GPU adapter's name.
    pub adapter: Option<String>,
    /// Per-kernel GPU times in the report.
    pub kernel_timings: bool,
    /// The fast mode, when asked for.
    pub fast: Option<Fast>,
    /// Re-check once at the ε that cures an inconclusive verdict.
    pub auto_epsilon: bool,
    /// CPU threading.
    pub threads: Threads,
    /// Where the CPU evaluations count their perturbations (a progress display).
    pub progress: Option<crate::eval::Progress>,
}

impl Default for Plan {
    fn default() -> Self {
        Plan {
            epsilon: Epsilon::Default,
            threshold: None,
            backend: Backend::Auto,
            precision: Precision::Auto,
            kinks: KinkPolicy::Exclude,
            top_k: 3,
            stencil: 2,
            adapter: None,
            kernel_timings: false,
            fast: None,
            auto_epsilon: true,
            threads: Threads::Parallel,
            progress: None,
        }
    }
}

impl Plan {
    /// Checks every setting; the messages are the same from every front end.
    pub fn validate(&self) -> Result<()> {
        if let Epsilon::Value(e) = self.epsilon {
            // A step larger than 1 moves the parameters by more than a typical weight and
            // overflows costs: it is never a gradient check.
            if !(e.is_finite() && e > 0.0 && e <= 1.0) {
                return Err(Error::Config(format!(
                    "epsilon = {e}: must be a number in (0, 1] (or auto)"
                )));
            }
        }
        if let Some(t) = self.threshold {
            crate::check::validate_threshold(t)?;
        }
        if !matches!(self.stencil, 2 | 4) {
            return Err(Error::Config(format!(
                "stencil = {}: must be 2 or 4 (2: central differences, 4: Richardson)",
                self.stencil
            )));
        }
        if let Some(f) = self.fast {
            if !(1..=MAX_FAST_DIRECTIONS).contains(&f.directions) {
                return Err(Error::Config(format!(
                    "fast = {}: must be 1 … {MAX_FAST_DIRECTIONS} directions",
                    f.directions
                )));
            }
        }
        Ok(())
    }

    /// The engine configured with the plan's settings alone (no problem: the 1-D example).
    fn settings(&self) -> GradCheck {
        let mut gc = GradCheck::new()
            .backend(self.backend)
            .precision(self.precision)
            .kinks(self.kinks);
        gc.epsilon = match self.epsilon {
            Epsilon::Value(e) => Some(e),
            _ => None,
        };
        gc.threshold = self.threshold;
        gc.top_k = self.top_k;
        gc.stencil = self.stencil as u8;
        gc.adapter = self.adapter.clone();
        gc.kernel_timings = self.kernel_timings;
        gc.auto_epsilon = self.auto_epsilon;
        gc.threads = self.threads;
        gc.progress = self.progress.clone();
        gc
    }

    /// The engine for `problem`: the settings, the gradients' precision, and the
    /// notebook's arithmetic for the notebook's own examples (what reproduces its digits).
    pub fn engine(&self, problem: &Problem) -> GradCheck {
        let mut gc = self.settings();
        if problem.notebook && self.precision == Precision::Auto {
            gc.precision = Precision::F64Plain;
        }
        if self.cpu_certainly_wins(problem) {
            gc.backend = Backend::Cpu;
        }
        gc.gradient_roundoff = problem.grad_roundoff;
        gc
    }

    /// Whether `auto` takes the CPU without probing for a GPU: a small problem, no adapter
    /// named, a precision the CPU has.
    fn cpu_certainly_wins(&self, problem: &Problem) -> bool {
        let work = 4.0 * problem.model.n_params() as f64 * problem.data.m() as f64;
        self.backend == Backend::Auto
            && self.adapter.is_none()
            && matches!(
                self.precision,
                Precision::Auto | Precision::F64 | Precision::F64Plain
            )
            && work < AUTO_CPU_WORK
    }

    /// Checks `problem`: the whole report, notes included.
    pub fn check(&self, problem: &Problem) -> Result<Report> {
        self.validate()?;
        let mut gc = self.engine(problem);
        let mut notes = problem.notes.clone();
        let mut late_notes = Vec::new();
        if self.cpu_certainly_wins(problem) {
            late_notes.push(format!(
                "backend auto: the CPU, without looking for a GPU (4·N·m = {:.1e} perturbation-samples, below {AUTO_CPU_WORK:.0e}: opening a GPU would cost more than the check)",
                4.0 * problem.model.n_params() as f64 * problem.data.m() as f64
            ));
        }
        if self.epsilon == Epsilon::Auto {
            let (best, note) = crate::sweep::auto_epsilon(&gc, problem)?;
            gc.epsilon = Some(best);
            late_notes.push(note);
        }
        let (model, params, data, grads) = (
            &problem.model,
            &problem.params,
            &problem.data,
            &problem.grads,
        );
        let fast = match self.fast {
            Some(f) => Some(gc.fast(model, params, data, grads, f.directions as usize, f.seed)?),
            None => None,
        };
        let mut r = match fast {
            Some(f) if f.passed => f,
            _ => {
                let mut r = gc.run(model, params, data, grads)?;
                if let Some(f) = fast.and_then(|f| f.fast) {
                    r.notes.push(format!(
                        "the fast check ({} directions, seed {}) did not pass (difference {:e}); the full check localises it",
                        f.directions.len(),
                        f.seed,
                        f.difference
                    ));
                    r.mode = "full (after the fast check did not pass)".into();
                    r.fast = Some(f);
                }
                r
            }
        };
        if self.kernel_timings && r.timings.kernels.is_empty() {
            late_notes.push(
                "--timings: no kernel times (evaluated on the CPU, or the adapter has no timestamp queries)".into(),
            );
        }
        notes.append(&mut r.notes);
        notes.append(&mut late_notes);
        r.notes = notes;
        r.builtin_gradients = problem.builtin_grads;
        r.timings.load_s = problem.load_s;
        if problem.model_guessed {
            judge_the_guess(problem, &mut r);
        }
        Ok(r)
    }

    /// The notebook's 1-D example J(θ) = θ·x (not a network: no problem to load).
    pub fn check_one_d(&self) -> Result<Report> {
        self.validate()?;
        crate::examples::one_d_report(&self.settings())
    }

    /// The I-th of N shards of `problem` (1-based I), for [`Plan::merge`].
    pub fn shard(&self, problem: &Problem, i: usize, n: usize) -> Result<Partial> {
        self.validate()?;
        if self.epsilon == Epsilon::Auto {
            return Err(Error::Config(
                "--shard with --epsilon auto: every shard must use the same ε; give it as a number"
                    .into(),
            ));
        }
        if self.stencil != 2 {
            return Err(Error::Config(
                "--shard with --stencil 4: the merge judges both from the same two evaluations; shard with the default stencil and merge with --stencil 4".into(),
            ));
        }
        crate::shard::evaluate_shard(&self.engine(problem), problem, i, n)
    }

    /// The report one run would give, from the partials of every shard (the plan's
    /// threshold, stencil and kink policy judge them).
    pub fn merge(
        &self,
        problem: &Problem,
        parts: &[Partial],
        mix_backends: bool,
    ) -> Result<Report> {
        self.validate()?;
        let (eval, wide, epsilon) = crate::shard::merge(parts, problem, mix_backends)?;
        let gc = self.engine(problem);
        let (_, threshold) = gc.defaults_for(eval.precision);
        crate::check::validate_threshold(threshold)?;
        let mut r = gc.judge(&crate::check::Evidence {
            layout: problem.model.layout(),
            grad: problem.grads.as_slice(),
            eval: &eval,
            wide: Some(&wide),
            epsilon,
            threshold,
            m: problem.data.m(),
            growth: crate::verdict::growth(problem.model.layout()),
            terms: crate::eval::term_sizes(&problem.model, &problem.params, &problem.data).as_ref(),
        });
        crate::diagnose::dropout_slips(
            &problem.model,
            &problem.params,
            &problem.data,
            problem.grads.as_slice(),
            &mut r.tensors,
        );
        crate::diagnose::layer_slips(
            &problem.model,
            &problem.params,
            &problem.data,
            problem.grads.as_slice(),
            &mut r.tensors,
        );
        crate::diagnose::l2_slips(
            &problem.model,
            &problem.params,
            &problem.data,
            problem.grads.as_slice(),
            &mut r,
        );
        crate::diagnose::cost_slips(
            &problem.model,
            &problem.params,
            &problem.data,
            problem.grads.as_slice(),
            &mut r,
        );
        r.builtin_gradients = problem.builtin_grads;
        r.notes.splice(0..0, problem.notes.iter().cloned());
        r.timings = Timings {
            load_s: problem.load_s,
            ..Timings::default()
        };
        if problem.model_guessed {
            judge_the_guess(problem, &mut r);
        }
        Ok(r)
    }
}

/// A guessed model never yields a confident FAIL: when every tensor fails against it, the
/// model — not the backprop — is the likelier mismatch. The verdict is then INCONCLUSIVE,
/// and the model families the shapes allow are tried: one whose built-in backprop gives
/// the user's gradients (to 1e-6) is named.
fn judge_the_guess(problem: &Problem, r: &mut Report) {
    let model = &problem.model;
    let describe = |spec: &crate::model::ModelSpec| {
        let hidden = spec.activations[..spec.activations.len() - 1]
            .first()
            .map_or(String::new(), |a| format!("{a} hidden layers, "));
        let out = spec
            .activations
            .last()
            .map_or(String::new(), |a| a.to_string());
        format!("{hidden}{out} output, {}", loss_name(spec.loss))
    };
    r.model_guessed = Some(describe(model.spec()));
    let all_fail = !r.tensors.is_empty()
        && r.tensors
            .iter()
            .all(|t| t.verdict == crate::check::Verdict::Fail);
    if problem.builtin_grads || !all_fail {
        return;
    }
    let fit = fitting_model(problem);
    let why = match &fit {
        Some((spec, d)) => format!(
            "the model was guessed ({}) and every tensor fails against it, but your gradients are those of {} (difference {d:.1e}): give that model with --model (activations {:?}, loss {:?})",
            describe(model.spec()),
            describe(spec),
            spec.activations
                .iter()
                .map(|a| a.to_string())
                .collect::<Vec<_>>(),
            serde_json::to_value(spec.loss)
                .ok()
                .and_then(|v| v.as_str().map(str::to_owned))
                .unwrap_or_default(),
        ),
        None => format!(
            "the model was guessed ({}) and every tensor fails against it: the model, not necessarily your backprop, is the likely mismatch; give yours with --model (no other activation/cost of these shapes fits your gradients either)",
            describe(model.spec())
        ),
    };
    r.reasons.insert(0, why);
    r.verdict = crate::check::Verdict::Inconclusive;
    r.passed = false;
}

fn loss_name(l: crate::model::Loss) -> &'static str {
    match l {
        crate::model::Loss::BinaryCrossEntropy => "binary cross-entropy",
        crate::model::Loss::SoftmaxCrossEntropy => "softmax cross-entropy",
        crate::model::Loss::MeanSquaredError => "mean squared error",
    }
}

/// The model of the problem's shapes (one hidden activation for every hidden layer, an
/// output and cost) whose built-in backprop is nearest the user's gradients, when within
/// 1e-6 (the notebook's difference).
fn fitting_model(problem: &Problem) -> Option<(crate::model::ModelSpec, f64)> {
    use crate::model::{Activation, Data, Loss, Model, ModelSpec, Params};
    let sizes = problem.model.sizes().to_vec();
    let depth = sizes.len() - 1;
    let hidden = [
        Activation::Relu,
        Activation::Tanh,
        Activation::Sigmoid,
        Activation::LeakyRelu(0.01),
        Activation::Identity,
    ];
    let outputs = [
        (Activation::Sigmoid, Loss::BinaryCrossEntropy),
        (Activation::Softmax, Loss::SoftmaxCrossEntropy),
        (Activation::Identity, Loss::MeanSquaredError),
        (Activation::Sigmoid, Loss::MeanSquaredError),
    ];
    let mut best: Option<(ModelSpec, f64)> = None;
    for h in hidden.iter().take(if depth > 1 { hidden.len() } else { 1 }) {
        for &(out, loss) in &outputs {
            let mut activations = vec![*h; depth - 1];
            activations.push(out);
            let spec = ModelSpec {
                layers: sizes.clone(),
                activations,
                loss,
                l2: 0.0,
                dropout: None,
            };
            let Ok(model) = Model::new(spec.clone()) else {
                continue;
            };
            let Ok(params) =
                Params::new(model.layout().clone(), problem.params.as_slice().to_vec())
            else {
                continue;
            };
            let Ok(data) = Data::new(&model, problem.data.x.clone(), problem.data.y.clone()) else {
                continue;
            };
            let g = crate::eval::cpu::backprop(&model, &params, &data);
            let d = crate::metric::difference(g.as_slice(), problem.grads.as_slice());
            if d <= 1e-6 && best.as_ref().is_none_or(|(_, b)| d < *b) {
                best = Some((spec, d));
            }
        }
    }
    best
}

/// [`Plan::check`]: the one call.
pub fn check(problem: &Problem, plan: &Plan) -> Result<Report> {
    plan.check(problem)
}
