//! A problem: the model, θ, the data and the gradients to check, assembled from files and
//! cross-validated; the built-in backprop supplies the gradients when none are given.
//!
//! May use: `io` (reading), `eval::cpu` (built-in backprop, J(θ)), `model`.

use std::path::Path;

use crate::error::{Error, Result};
use crate::eval::cpu;
use crate::io::{Npz, data_from, grads_from, params_from, spec_from_file};
use crate::model::{Data, Grads, Model, Params, Spec};

/// Everything a check needs, loaded and cross-validated.
#[derive(Debug, Clone)]
pub struct Problem {
    /// The model.
    pub model: Model,
    /// θ.
    pub params: Params,
    /// X, Y.
    pub data: Data,
    /// The gradients to check (the built-in backprop's when none were given).
    pub grads: Grads,
    /// How the inputs were interpreted (model inferred, gradients built in, …).
    pub notes: Vec<String>,
    /// Whether `grads` are the built-in backprop's (none were given).
    pub builtin_grads: bool,
    /// Unit roundoff of the gradients as given: 2⁻²⁴ when any came as float32.
    pub grad_roundoff: f64,
    /// A built-in example of the notebook's: checked in its arithmetic (f64-plain) by default.
    pub notebook: bool,
    /// Seconds spent reading and validating the files (0 for built-in examples).
    pub load_s: f64,
    /// The model was guessed from the weight shapes (no spec was given): the notebook's
    /// relu hidden layers, sigmoid output and binary cross-entropy.
    pub model_guessed: bool,
}

impl Problem {
    /// Assembles a problem from loaded files; `grads` = None uses the built-in backprop.
    pub fn from_npz(
        params: &Npz,
        data: &Npz,
        grads: Option<&Npz>,
        spec: Option<Spec>,
    ) -> Result<Problem> {
        let (mut model, params, inferred) = params_from(params, spec)?;
        let data = data_from(data, &model)?;
        let mut notes = Vec::new();
        let total = model
            .net()
            .and_then(|n| n.spec.as_ref())
            .is_some_and(|s| s.l2_scale == crate::model::L2Scale::Total);
        if total && model.l2() != 0.0 {
            let per_sample = model.l2() * data.m() as f64;
            notes.push(format!(
                "l2_scale total: (λ/2)·Σ‖W‖² with λ = {}, i.e. λ/(2m) with λ = {per_sample} per sample (m = {})",
                model.l2(),
                data.m()
            ));
            model = model.with_l2(per_sample);
        }
        Self::assemble(model, params, data, grads, notes, inferred)
    }

    fn assemble(
        model: Model,
        params: Params,
        data: Data,
        grads: Option<&Npz>,
        mut notes: Vec<String>,
        inferred: bool,
    ) -> Result<Problem> {
        if inferred {
            notes.push(format!(
                "no model spec: layers {:?} inferred from the weight shapes, relu hidden layers, sigmoid output, binary cross-entropy",
                model.sizes()
            ));
        }
        let builtin_grads = grads.is_none();
        let grads_npz = grads;
        let grads = match grads_npz {
            Some(g) => grads_from(g, &model)?,
            None => {
                notes.push(
                    "no gradients given: checking gradapprox against the built-in backprop".into(),
                );
                builtin_backprop(&model, &params, &data)
            }
        };
        // Through softplus / log-sum-exp: finite even where σ(z) = 1.0 in f64.
        let j = match model.net() {
            Some(net) => crate::net::forward(&model, net, &params, &data).cost,
            None => cpu::stable_cost(&model, &cpu::forward(&model, &params, &data), &data),
        };
        if !j.is_finite() {
            return Err(Error::Config(format!(
                "the cost at θ is {j}: central differences cannot be taken there"
            )));
        }
        let grad_roundoff = match grads_npz {
            Some(g) if !g.f32_keys.is_empty() => f64::from(f32::EPSILON) / 2.0,
            _ => f64::EPSILON / 2.0,
        };
        Ok(Problem {
            model,
            params,
            data,
            grads,
            notes,
            builtin_grads,
            grad_roundoff,
            notebook: false,
            load_s: 0.0,
            model_guessed: inferred,
        })
    }

    /// Loads a problem from files on disk.
    pub fn load(
        params: &Path,
        data: &Path,
        grads: Option<&Path>,
        model: Option<&Path>,
    ) -> Result<Problem> {
        let t0 = std::time::Instant::now();
        let spec = model.map(spec_from_file).transpose()?;
        let p = Npz::open(params)?;
        let d = Npz::open(data)?;
        let g = grads.map(Npz::open).transpose()?;
        let mut problem = Problem::from_npz(&p, &d, g.as_ref(), spec)?;
        problem.load_s = t0.elapsed().as_secs_f64();
        Ok(problem)
    }
}

/// The built-in backprop's gradient of any model (the "known good" one).
pub fn builtin_backprop(model: &Model, params: &Params, data: &Data) -> Grads {
    match model.net() {
        Some(net) => crate::net::backprop_with(model, net, params, data, None),
        None => cpu::backprop(model, params, data),
    }
}
