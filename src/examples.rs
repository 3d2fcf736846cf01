//! The built-in examples: the seed notebook's own test case, compiled in so that
//! `gradcheck check --example seed-buggy` needs no files.
//!
//! May use: `io`, `problem`, `model`, `rng`.

use ndarray::Array2;

use crate::check::{Evidence, GradCheck, Report, check_fn};
use crate::error::Result;
use crate::io::Npz;
use crate::model::{Data, Loss, Model, ModelSpec, ParamLayout, Params};
use crate::problem::Problem;

/// The notebook's parameters (W1…b3, 4-5-3-1).
pub const SEED_PARAMS: &[u8] = include_bytes!("../fixtures/seed/seed_params.npz");
/// The notebook's data (X 4×3, Y 1×3).
pub const SEED_DATA: &[u8] = include_bytes!("../fixtures/seed/seed_data.npz");
/// The notebook's backprop with its two planted bugs (dW2 doubled, db1 × 4).
pub const SEED_GRADS_BUGGY: &[u8] = include_bytes!("../fixtures/seed/seed_grads_buggy.npz");
/// The notebook's backprop with the bugs fixed.
pub const SEED_GRADS_FIXED: &[u8] = include_bytes!("../fixtures/seed/seed_grads_fixed.npz");

/// The notebook's numbers for the examples.
pub mod expected {
    /// 1-D: J(θ) = θ·x with x = 2, θ = 4, ε = 1e-7.
    pub const ONE_D_DIFFERENCE: f64 = 2.919335883291695e-10;
    /// J(θ) of the N-D case.
    pub const COST: f64 = 2.407833389834357;
    /// Difference with the planted bugs.
    pub const BUGGY_DIFFERENCE: f64 = 0.2850931567761623;
    /// Difference with the bugs fixed.
    pub const FIXED_DIFFERENCE: f64 = 1.1890913024229996e-07;
}

/// The course-style conv example's parameters (fixtures/conv, written by the independent
/// numpy model `fixtures/conv/make.py`).
pub const CONV_PARAMS: &[u8] = include_bytes!("../fixtures/conv/conv_params.npz");
/// Its data: X (8, 16, 16, 3), Y (8, 6) one-hot.
pub const CONV_DATA: &[u8] = include_bytes!("../fixtures/conv/conv_data.npz");
/// numpy's gradients with two planted slips (max-pool 1 to every window entry, conv 2's db
/// from one position).
pub const CONV_GRADS_BUGGY: &[u8] = include_bytes!("../fixtures/conv/conv_grads_buggy.npz");
/// numpy's correct gradients.
pub const CONV_GRADS_FIXED: &[u8] = include_bytes!("../fixtures/conv/conv_grads_fixed.npz");
/// Its network (course layout).
pub const CONV_MODEL: &str = include_str!("../fixtures/conv/conv_model.json");

/// A built-in example.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "cli", derive(clap::ValueEnum))]
pub enum Example {
    /// The notebook's N-D case with its buggy backprop (dW2 × 2, db1 × 4).
    SeedBuggy,
    /// The notebook's N-D case with the bugs fixed.
    SeedFixed,
    /// The notebook's 1-D case J(θ) = θ·x.
    #[cfg_attr(feature = "cli", value(name = "seed-1d"))]
    Seed1d,
    /// A course-style conv net (conv, max-pool, conv, max-pool, dense softmax) whose
    /// numpy backprop has two classic slips (max-pool gradient to every window entry, db
    /// not summed over positions).
    ConvBuggy,
    /// The same conv net with numpy's correct gradients.
    ConvFixed,
}

impl Example {
    /// Every name, as the command line and manifests spell them.
    pub const NAMES: &'static str = "seed-buggy, seed-fixed, seed-1d, conv-buggy or conv-fixed";

    /// The example of a name (`None` for an unknown one).
    pub fn from_name(name: &str) -> Option<Example> {
        Some(match name {
            "seed-buggy" => Example::SeedBuggy,
            "seed-fixed" => Example::SeedFixed,
            "seed-1d" => Example::Seed1d,
            "conv-buggy" => Example::ConvBuggy,
            "conv-fixed" => Example::ConvFixed,
            _ => return None,
        })
    }

    /// The network problem of a network example (seed-1d is a function, not a network).
    pub fn problem(self) -> Result<Problem> {
        match self {
            Example::SeedBuggy => seed_problem(true),
            Example::SeedFixed => seed_problem(false),
            Example::ConvBuggy => conv_problem(true),
            Example::ConvFixed => conv_problem(false),
            Example::Seed1d => Err(crate::error::Error::Config(
                "seed-1d is the notebook's 1-D function J(θ) = θ·x, not a network".into(),
            )),
        }
    }
}

/// x of the 1-D example.
pub const ONE_D_X: f64 = 2.0;
/// θ of the 1-D example.
pub const ONE_D_THETA: f64 = 4.0;

/// The seed notebook's 1-D check J(θ) = θ·x (x = 2, θ = 4) on the CPU: it has no network
/// to batch. `gc` supplies ε, the threshold and the verdict rules.
pub fn one_d_report(gc: &GradCheck) -> Result<Report> {
    let (epsilon, threshold) = gc.defaults_for(crate::eval::Precision::F64);
    crate::check::validate_threshold(threshold)?;
    let eval = check_fn(|t| t[0] * ONE_D_X, &[ONE_D_THETA], epsilon)?;
    let wide = check_fn(|t| t[0] * ONE_D_X, &[ONE_D_THETA], 2.0 * epsilon)?;
    let layout = ParamLayout::single("theta", 1, 1);
    let mut r = gc.judge(&Evidence {
        layout: &layout,
        grad: &[ONE_D_X],
        eval: &eval,
        wide: Some(&wide),
        epsilon,
        threshold,
        m: 1,
        growth: crate::verdict::growth(&layout),
        terms: None,
    });
    r.notes.push(
        "built-in example: the seed notebook's 1-D case J(θ) = θ·x, x = 2, θ = 4 (always on the CPU)"
            .into(),
    );
    Ok(r)
}

/// The N-D seed problem with the buggy or the fixed gradients.
pub fn seed_problem(buggy: bool) -> Result<Problem> {
    let p = Npz::from_bytes("seed_params.npz (built in)", SEED_PARAMS)?;
    let d = Npz::from_bytes("seed_data.npz (built in)", SEED_DATA)?;
    let g = if buggy {
        Npz::from_bytes("seed_grads_buggy.npz (built in)", SEED_GRADS_BUGGY)?
    } else {
        Npz::from_bytes("seed_grads_fixed.npz (built in)", SEED_GRADS_FIXED)?
    };
    let mut prob = Problem::from_npz(&p, &d, Some(&g), None)?;
    prob.notebook = true;
    // The notebook's own model: known, not guessed.
    prob.model_guessed = false;
    prob.notes.clear();
    prob.notes.push(format!(
        "built-in example: the seed notebook's 4-5-3-1 network, {} gradients",
        if buggy {
            "buggy (dW2 × 2, db1 × 4 planted)"
        } else {
            "fixed"
        }
    ));
    Ok(prob)
}

/// The course-style conv example with the buggy or the fixed (numpy) gradients.
pub fn conv_problem(buggy: bool) -> Result<Problem> {
    let p = Npz::from_bytes("conv_params.npz (built in)", CONV_PARAMS)?;
    let d = Npz::from_bytes("conv_data.npz (built in)", CONV_DATA)?;
    let g = if buggy {
        Npz::from_bytes("conv_grads_buggy.npz (built in)", CONV_GRADS_BUGGY)?
    } else {
        Npz::from_bytes("conv_grads_fixed.npz (built in)", CONV_GRADS_FIXED)?
    };
    let spec = crate::model::Spec::from_json(CONV_MODEL)
        .map_err(|e| crate::error::Error::Internal(format!("built-in conv spec: {e}")))?;
    let mut prob = Problem::from_npz(&p, &d, Some(&g), Some(spec))?;
    prob.notes.push(format!(
        "built-in example: a course-style conv net (16×16×3 → conv 4×4×8 same + relu → max-pool 4 → conv 2×2×16 same + relu → max-pool 2 → dense softmax over 6), m = 8, numpy's {} gradients",
        if buggy {
            "buggy (max-pool 1's gradient to every window entry, conv 2's db from one position)"
        } else {
            "correct"
        }
    ));
    Ok(prob)
}

/// A synthetic problem for tests and benchmarks: weights uniform with He scale
/// √(2/fan-in), biases likewise, X uniform in [−1.5, 1.5), targets that fit the loss
/// (0/1 labels, one-hot columns, or uniform values). Deterministic in `seed`.
pub fn random_problem(spec: ModelSpec, m: usize, seed: u64) -> Result<(Model, Params, Data)> {
    let model = Model::new(spec)?;
    let mut rng = crate::rng::Rng(seed);
    let mut theta = vec![0.0; model.n_params()];
    for slot in model.layout().tensors() {
        let fan_in = model.sizes()[slot.layer];
        let scale = (2.0 / fan_in as f64).sqrt();
        for v in &mut theta[slot.range()] {
            *v = rng.sym() * scale;
        }
    }
    let params = Params::new(model.layout().clone(), theta)?;
    let n0 = model.sizes()[0];
    let nl = *model.sizes().last().expect("validated");
    let x = Array2::from_shape_fn((n0, m), |_| rng.sym() * 1.5);
    let y = match model.loss() {
        Loss::SoftmaxCrossEntropy => {
            let mut y = Array2::zeros((nl, m));
            for j in 0..m {
                y[[((rng.next_f64() * nl as f64) as usize).min(nl - 1), j]] = 1.0;
            }
            y
        }
        Loss::BinaryCrossEntropy => {
            Array2::from_shape_fn((nl, m), |_| f64::from(u8::from(rng.next_f64() < 0.5)))
        }
        Loss::MeanSquaredError => Array2::from_shape_fn((nl, m), |_| rng.sym()),
    };
    let data = Data::new(&model, x, y)?;
    Ok((model, params, data))
}
