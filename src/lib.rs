//! gradcheck: proof that a neural network's backpropagation is right.
//!
//! Central differences gradapprox_i = (J(θ+ε·e_i) − J(θ−ε·e_i)) / 2ε over every parameter,
//! the J± evaluated in one batch (on the GPU through wgpu, or on the CPU in f64), compared
//! with the analytic gradient by the notebook's difference
//! ‖grad − gradapprox‖₂ / (‖grad‖₂ + ‖gradapprox‖₂), tensor by tensor, with a diagnosis of
//! what kind of mistake a failing gradient looks like.
//!
//! The modules in layers, each using only those listed before it:
//!
//! | layer | module | holds |
//! |---|---|---|
//! | base | [`error`], [`metric`], [`rng`] | the error type, the difference formula, the RNG |
//! | model | [`model`] | networks (the MLP shorthand, or layer types: the [`model::Layer`] trait), activations, losses, parameter layout, data and masks |
//! | net | [`net`] | the reference math: built-in layer types (conv2d, pooling, flatten, dense), forward, built-in backprop, closed-form Δ, the MLP's shortcut tables |
//! | eval | [`eval`], [`eval::cpu`], [`eval::layered`], `eval::gpu`, [`eval::backend`] | the [`eval::Evaluator`] trait and [`eval::Progress`]; the CPU f64 evaluators (MLP, layer types); the GPU (feature `gpu`: MLP kernels, and `shaders/layered.wgsl` for layer types); the choice of backend |
//! | verdict | [`verdict`] | central differences against the gradient: differences, pass/fail |
//! | diagnose | [`diagnose`] | what kind of mistake a failing tensor is |
//! | check | [`check`], [`plan`] | the engine [`GradCheck`] (evaluate → verdict → diagnose; the fast mode) and the one call: [`plan::Plan`] + [`problem::Problem`] → [`Report`] |
//! | report | [`report`] | text and JSON of a report |
//! | files | [`io`], [`problem`], [`examples`] | reading .npz/JSON, assembling a problem, the built-in seed |
//! | front ends | [`shard`], [`sweep`], [`batch`], `compare` | split/merge, ε sweeps, manifests, GPU-vs-CPU numerics |
//!
//! ```no_run
//! use gradcheck::{check::GradCheck, examples};
//! let p = examples::seed_problem(true).unwrap();
//! let report = GradCheck::new().run(&p.model, &p.params, &p.data, &p.grads).unwrap();
//! assert!(!report.passed);
//! ```
#![warn(missing_docs)]

pub mod error;
pub mod metric;
pub mod rng;

pub mod model;
pub mod net;

pub mod eval;

pub mod verdict;

pub mod diagnose;

pub mod check;

pub mod report;

pub mod examples;
pub mod io;
pub mod problem;

pub mod batch;
#[cfg(feature = "gpu")]
pub mod compare;
pub mod shard;
pub mod sweep;

pub mod plan;

pub use check::GradCheck;
pub use error::{Error, Result};
pub use eval::{Backend, Evaluation, Evaluator, Precision};
pub use model::{Activation, Data, Dropout, Grads, Loss, Model, ModelSpec, Params};
pub use verdict::{KinkPolicy, Report};
